//! The leader-only service: running while this node's etcd member is the raft leader and at
//! no other time.
//!
//! The homework's version started Jupyter once on the leader and never stopped it, so after a
//! failover two nodes could serve. Here a small control loop watches the agent's
//! [`NodeStatus`] and
//! - starts the service when the member reports itself leader (a fresh confirmation only:
//!   an old one is not proof of anything),
//! - stops it as soon as the member reports another role (demotion, or no leader at all
//!   after a lost quorum: etcd's check-quorum makes a cut-off leader step down), and
//! - stops it when leadership has not been re-confirmed for `lease_ttl_s`, which covers a
//!   member that stops answering Status altogether; by then this node's lease, and with it
//!   the leader key, has expired too, so nobody is directed here any more.
//!
//! What runs is either the built-in HTTP service ([`builtin`]) or any program from
//! `leader_service.command` ([`command`]); the control loop only sees a [`Launcher`], so the
//! tests drive it with a fake one and a fake status channel under a paused clock.

mod builtin;
mod command;

pub use builtin::{router, Builtin};
pub use command::CommandLauncher;

use crate::node::NodeStatus;
use crate::supervise;
use clusterlab_core::config::Config;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why the leader service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LeaderServiceError {
    #[error("binding the leader service on port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("starting the leader service command {command:?}: {source}")]
    Spawn {
        command: Vec<String>,
        source: std::io::Error,
    },
}

/// The time limits of the control loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A leadership confirmed no longer ago than this may start the service.
    pub start_within: Duration,
    /// A running service is kept while leadership was confirmed no longer ago than this.
    pub keep_within: Duration,
    /// How often, while the service runs, the confirmation's age is checked when no new
    /// status arrives (the agent's status loop can itself be stuck in a slow etcd call).
    pub check_every: Duration,
}

impl Timing {
    /// Timing for a node: keep for `lease_ttl_s`, start only on a confirmation younger than
    /// five status polls (at least one second), re-check every poll.
    pub fn from_config(config: &Config) -> Timing {
        let poll = Duration::from_millis(config.leader_poll_ms.max(1));
        Timing {
            start_within: (poll * 5).max(Duration::from_secs(1)),
            keep_within: Duration::from_secs(config.lease_ttl_s),
            check_every: poll,
        }
    }
}

/// Whether the service should be running now, given whether it is.
pub fn wanted(status: &NodeStatus, running: bool, now: Instant, timing: &Timing) -> bool {
    let within = if running {
        timing.keep_within
    } else {
        timing.start_within
    };
    status.is_leader_at(now, within)
}

/// Something that can be started and stopped as the leader service.
pub trait Launcher: Send {
    /// A running instance.
    type Running: Send;
    /// Starts an instance.
    fn start(&mut self) -> impl Future<Output = Result<Self::Running, LeaderServiceError>> + Send;
    /// Stops an instance and waits until it is gone (bounded by the launcher's grace).
    fn stop(&mut self, running: Self::Running) -> impl Future<Output = ()> + Send;
    /// Resolves when the instance ended by itself, saying how.
    fn ended(running: &mut Self::Running) -> impl Future<Output = String> + Send;
}

/// Runs the leader service while this node leads, until `stop` is cancelled.
pub async fn run(config: Config, status: watch::Receiver<NodeStatus>, stop: CancellationToken) {
    if !config.leader_service.enabled {
        tracing::info!("leader service disabled");
        stop.cancelled().await;
        return;
    }
    let timing = Timing::from_config(&config);
    let grace = Duration::from_secs(config.leader_service.grace_s);
    if config.leader_service.command.is_empty() {
        let launcher = Builtin::new(&config, status.clone(), grace);
        control(launcher, status, timing, stop).await;
    } else {
        let launcher = CommandLauncher::new(config.leader_service.command.clone(), grace);
        control(launcher, status, timing, stop).await;
    }
}

enum Wake {
    Stop,
    StatusGone,
    Tick,
    Ended(String),
}

/// The control loop: starts and stops `launcher`'s service as [`wanted`] says, restarts a
/// service that ended by itself while still wanted (with the plugins' backoff), and stops it
/// when `stop` is cancelled or the status channel closes.
pub async fn control<L: Launcher>(
    mut launcher: L,
    mut status: watch::Receiver<NodeStatus>,
    timing: Timing,
    stop: CancellationToken,
) {
    let mut running: Option<L::Running> = None;
    let mut started_at = tokio::time::Instant::now();
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        // tokio's clock, so that a paused test clock ages confirmations too; in production
        // it is the same instant as std's.
        let now = tokio::time::Instant::now();
        let want = wanted(
            &status.borrow_and_update(),
            running.is_some(),
            now.into_std(),
            &timing,
        );
        if want && running.is_none() && retry_at.is_none_or(|t| now >= t) {
            match launcher.start().await {
                Ok(r) => {
                    tracing::info!("leader service started");
                    running = Some(r);
                    started_at = tokio::time::Instant::now();
                    retry_at = None;
                }
                Err(e) => {
                    backoff = supervise::next_backoff(backoff, Duration::ZERO);
                    tracing::error!(error = %e, retry_ms = backoff.as_millis() as u64, "leader service did not start");
                    retry_at = Some(now + backoff);
                }
            }
        } else if !want {
            retry_at = None;
            if let Some(r) = running.take() {
                let s = status.borrow().clone();
                tracing::info!(role = ?s.role, etcd_ok = s.etcd_ok, "no longer leader: stopping leader service");
                launcher.stop(r).await;
                tracing::info!("leader service stopped");
                continue;
            }
        }

        // Time alone changes the decision only while the service runs (its confirmation can
        // age past `keep_within`) or a restart is pending; otherwise only a new status can,
        // and an idle follower's loop sleeps until one comes.
        let tick = if running.is_some() {
            Some(timing.check_every)
        } else {
            retry_at.map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
        };
        let wake = {
            let ended = async {
                match running.as_mut() {
                    Some(r) => L::ended(r).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => Wake::Stop,
                changed = status.changed() => match changed {
                    Ok(()) => Wake::Tick,
                    Err(_) => Wake::StatusGone,
                },
                _ = tokio::time::sleep(tick.unwrap_or_default()), if tick.is_some() => Wake::Tick,
                why = ended => Wake::Ended(why),
            }
        };
        match wake {
            Wake::Tick => {}
            Wake::Stop | Wake::StatusGone => break,
            Wake::Ended(why) => {
                running = None;
                backoff = supervise::next_backoff(backoff, started_at.elapsed());
                tracing::warn!(%why, restart_ms = backoff.as_millis() as u64, "leader service ended by itself");
                retry_at = Some(tokio::time::Instant::now() + backoff);
            }
        }
    }
    if let Some(r) = running.take() {
        tracing::info!("agent stopping: stopping leader service");
        launcher.stop(r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlab_core::schema::Role;
    use tokio::sync::{mpsc, oneshot};

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Started,
        Stopped,
    }

    /// Reports starts and stops; each running instance can be made to "crash".
    struct Fake {
        events: mpsc::UnboundedSender<Ev>,
        crash: mpsc::UnboundedSender<oneshot::Sender<()>>,
        fail_starts: u32,
    }

    impl Launcher for Fake {
        type Running = oneshot::Receiver<()>;
        async fn start(&mut self) -> Result<Self::Running, LeaderServiceError> {
            if self.fail_starts > 0 {
                self.fail_starts -= 1;
                return Err(LeaderServiceError::Bind {
                    port: 1,
                    source: std::io::Error::other("busy"),
                });
            }
            let (tx, rx) = oneshot::channel();
            let _ = self.crash.send(tx);
            let _ = self.events.send(Ev::Started);
            Ok(rx)
        }
        async fn stop(&mut self, _running: Self::Running) {
            let _ = self.events.send(Ev::Stopped);
        }
        async fn ended(running: &mut Self::Running) -> String {
            match running.await {
                Ok(()) => "crashed".into(),
                Err(_) => std::future::pending().await,
            }
        }
    }

    const TIMING: Timing = Timing {
        start_within: Duration::from_secs(1),
        keep_within: Duration::from_secs(10),
        check_every: Duration::from_millis(200),
    };

    fn status(role: Option<Role>, confirmed_ago: Option<Duration>) -> NodeStatus {
        let now = tokio::time::Instant::now().into_std();
        NodeStatus {
            name: "node0".into(),
            ip: "10.77.0.10".into(),
            member_id: "1".into(),
            role,
            raft_leader: None,
            raft_term: 1,
            lease_id: None,
            etcd_ok: true,
            last_error: None,
            leader_confirmed_at: confirmed_ago.map(|d| now - d),
            cut_off_at: None,
        }
    }

    fn leader_now() -> NodeStatus {
        status(Some(Role::Leader), Some(Duration::ZERO))
    }

    fn follower() -> NodeStatus {
        status(Some(Role::Follower), None)
    }

    struct Rig {
        tx: watch::Sender<NodeStatus>,
        events: mpsc::UnboundedReceiver<Ev>,
        crash: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn rig(initial: NodeStatus, fail_starts: u32) -> Rig {
        let (tx, rx) = watch::channel(initial);
        let (etx, events) = mpsc::unbounded_channel();
        let (ctx, crash) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let fake = Fake {
            events: etx,
            crash: ctx,
            fail_starts,
        };
        let task = tokio::spawn(control(fake, rx, TIMING, stop.clone()));
        Rig {
            tx,
            events,
            crash,
            stop,
            task,
        }
    }

    /// The next event within `within` (virtual time), or None.
    async fn next(r: &mut Rig, within: Duration) -> Option<Ev> {
        tokio::time::timeout(within, r.events.recv())
            .await
            .ok()
            .flatten()
    }

    #[test]
    fn wanted_uses_start_and_keep_limits() {
        let now = Instant::now();
        let mut s = status(Some(Role::Leader), None);
        s.leader_confirmed_at = Some(now - Duration::from_secs(3));
        assert!(
            !wanted(&s, false, now, &TIMING),
            "stale confirmation starts"
        );
        assert!(wanted(&s, true, now, &TIMING), "3 s old confirmation stops");
        s.leader_confirmed_at = Some(now - Duration::from_secs(11));
        assert!(!wanted(&s, true, now, &TIMING));
        s.role = Some(Role::Follower);
        s.leader_confirmed_at = Some(now);
        assert!(!wanted(&s, true, now, &TIMING), "a follower keeps serving");
        s.role = None;
        assert!(!wanted(&s, false, now, &TIMING));
    }

    #[test]
    fn timing_follows_config() {
        let c = Config {
            lease_ttl_s: 7,
            leader_poll_ms: 100,
            ..Config::default()
        };
        let t = Timing::from_config(&c);
        assert_eq!(t.keep_within, Duration::from_secs(7));
        assert_eq!(t.start_within, Duration::from_secs(1));
        assert_eq!(t.check_every, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn starts_on_promotion_and_stops_on_demotion() {
        let mut r = rig(follower(), 0);
        assert_eq!(next(&mut r, Duration::from_secs(5)).await, None);
        r.tx.send_replace(leader_now());
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Started)
        );
        // Confirmations keep coming: no restart, no stop.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            r.tx.send_replace(leader_now());
        }
        assert_eq!(next(&mut r, Duration::from_millis(100)).await, None);
        r.tx.send_replace(follower());
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Stopped)
        );
        assert_eq!(next(&mut r, Duration::from_secs(5)).await, None);
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_leadership_is_not_reconfirmed_for_the_ttl() {
        let mut r = rig(leader_now(), 0);
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Started)
        );
        // The agent's status loop goes silent with the role still saying leader.
        assert_eq!(next(&mut r, Duration::from_secs(9)).await, None);
        assert_eq!(
            next(&mut r, Duration::from_secs(2)).await,
            Some(Ev::Stopped)
        );
        let took = t0.elapsed();
        assert!(
            took >= TIMING.keep_within && took <= TIMING.keep_within + TIMING.check_every * 2,
            "stopped after {took:?}"
        );
        // And it does not come back on the same stale confirmation.
        assert_eq!(next(&mut r, Duration::from_secs(5)).await, None);
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_confirmation_does_not_start_it() {
        let mut r = rig(status(Some(Role::Leader), Some(Duration::from_secs(2))), 0);
        assert_eq!(next(&mut r, Duration::from_secs(5)).await, None);
        r.tx.send_replace(leader_now());
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Started)
        );
        r.stop.cancel();
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Stopped)
        );
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_service_is_restarted_while_leading() {
        let mut r = rig(leader_now(), 0);
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Started)
        );
        let crash = r.crash.recv().await.unwrap();
        crash.send(()).unwrap();
        // Keep confirming so that the restart is wanted.
        let mut got = None;
        for _ in 0..20 {
            r.tx.send_replace(leader_now());
            if let Some(ev) = next(&mut r, Duration::from_millis(200)).await {
                got = Some(ev);
                break;
            }
        }
        assert_eq!(got, Some(Ev::Started), "not restarted within 4 s");
        r.stop.cancel();
        assert_eq!(
            next(&mut r, Duration::from_secs(1)).await,
            Some(Ev::Stopped)
        );
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_is_retried_with_backoff() {
        let mut r = rig(leader_now(), 2);
        let t0 = tokio::time::Instant::now();
        let mut got = None;
        for _ in 0..30 {
            r.tx.send_replace(leader_now());
            if let Some(ev) = next(&mut r, Duration::from_millis(200)).await {
                got = Some(ev);
                break;
            }
        }
        assert_eq!(got, Some(Ev::Started));
        // Two failures: 0.5 s, then 1 s of backoff.
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_status_channel_stops_it() {
        let Rig {
            tx,
            mut events,
            crash: _crash,
            stop: _stop,
            task,
        } = rig(leader_now(), 0);
        assert_eq!(events.recv().await, Some(Ev::Started));
        drop(tx);
        let ev = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
        assert_eq!(ev.ok().flatten(), Some(Ev::Stopped));
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("control loop ended")
            .unwrap();
    }
}
