//! The scenarios that move or cut a node instead of only killing it: `leader_demoted`
//! (etcd's MoveLeader from the host), `partition_leader` (the leader's container taken off
//! the network and put back at its address), `restart_follower` (killed, then started
//! again), and `gateway` (the submission's forwarder under a stream of GETs while the
//! leader is killed).

use super::{
    before_fault, etcd_leader, first_follower, hosts_after_kill, record_shared, wait_hosts,
    wait_new_leader, wait_service, wait_shared, Failed, Recorder, Since,
};
use crate::grade::judge::{NodeRef, ServiceProbe};
use crate::grade::runner::{GradedCluster, UpError};
use crate::grade::timeline::{self, Obs};
use crate::probe::http::{GetFailure, GetStream, Http, Sample};
use crate::wait::wait_for;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// `leader_demoted`: etcd's leadership moves to the lowest-numbered follower through
/// MoveLeader while the old leader stays alive and connected.
pub(super) async fn demote(
    sub: &GradedCluster,
    rec: &mut Recorder,
    t0: Instant,
) -> Result<(), UpError> {
    let p = &sub.profile;
    let all = sub.nodes();
    let Some(before) = before_fault(sub, rec, t0).await else {
        return Ok(());
    };
    let old = before.leader;
    let Some(target) = first_follower(&all, &old) else {
        return Ok(());
    };
    sub.move_leader(&old, &target).await?;
    let moved = Instant::now();
    timeline::fault(
        moved,
        &format!(
            "etcd's leadership moved from {} to {} (MoveLeader)",
            old.name, target.name
        ),
        None,
    );
    rec.notes.push(format!(
        "moved etcd's leadership from {old} to {target} (MoveLeader); {old} stays alive and connected"
    ));
    let since = Since {
        at: moved,
        what: "etcd's leadership moved",
    };
    let change = secs(p.limits.leader_change_s);
    match wait_new_leader(sub, &all, &old, since, change).await {
        Ok(s) => rec.figure("new_etcd_leader_s", s),
        Err(e) => {
            rec.check("hosts", Err(e));
            return Ok(());
        }
    }
    let done = AtomicBool::new(false);
    let hosts_part = async {
        let h = wait_hosts(
            sub,
            &all,
            &[],
            since,
            change,
            "limits.leader_change_s",
            None,
        )
        .await;
        let shared = wait_shared(sub, &all, since, change, "limits.leader_change_s").await;
        done.store(true, Ordering::SeqCst);
        (h.result, shared)
    };
    let service_part = async {
        let svc = wait_service(sub, &all, since, change, "limits.leader_change_s").await;
        let single = match &svc {
            Ok(_) => Some(one_server(sub, &all, since, &done).await),
            Err(_) => None,
        };
        (svc, single)
    };
    let ((hosts, shared), (svc, single)) = tokio::join!(hosts_part, service_part);
    if let Ok(h) = &hosts {
        rec.figure("host0_moved_s", h.secs);
    }
    rec.check("hosts", hosts.map(|h| h.secs));
    if let Ok(s) = &svc {
        rec.figure("service_moved_s", *s);
    }
    rec.check("leader_service", svc);
    if let Some(single) = single {
        if let Ok(s) = &single {
            rec.figure("one_server_watched_s", *s);
        }
        rec.check("one_server", single);
    }
    record_shared(rec, "shared_hosts", shared);
    Ok(())
}

/// After the service moved: every `poll_ms`, no two live nodes serve, until `done` is set
/// and at least `limits.steady_s` went by. Returns how long it watched.
async fn one_server(
    sub: &GradedCluster,
    live: &[NodeRef],
    since: Since,
    done: &AtomicBool,
) -> Result<f64, Failed> {
    let p = &sub.profile;
    let start = Instant::now();
    let steady = secs(p.limits.steady_s);
    let port = p.judge.service_port;
    loop {
        let probes: Vec<(NodeRef, ServiceProbe)> = futures::future::join_all(
            live.iter()
                .map(|n| async move { (n.clone(), sub.probe_service(n).await) }),
        )
        .await;
        for (n, p) in &probes {
            timeline::observe(&n.name, Obs::Service(p.serving()));
        }
        let serving: Vec<String> = probes
            .iter()
            .filter(|(_, p)| p.serving())
            .map(|(n, p)| format!("{n} ({p})"))
            .collect();
        if serving.len() > 1 {
            return Err(Failed(format!(
                "{} answered on port {port} at the same time, {:.1} s after {}; the web service must run on the leader only and stop when a node stops being the leader",
                serving.join(" and "),
                since.at.elapsed().as_secs_f64(),
                since.what
            )));
        }
        if done.load(Ordering::SeqCst) && start.elapsed() >= steady {
            return Ok(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(p.poll()).await;
    }
}

/// `partition_leader`: the leader's container is taken off the cluster's network (no help
/// from inside it), then put back at the same address.
pub(super) async fn partition(
    sub: &GradedCluster,
    rec: &mut Recorder,
    t0: Instant,
) -> Result<(), UpError> {
    let p = &sub.profile;
    let all = sub.nodes();
    let Some(before) = before_fault(sub, rec, t0).await else {
        return Ok(());
    };
    let old = before.leader;
    let rest: Vec<NodeRef> = all.iter().filter(|n| **n != old).cloned().collect();
    sub.disconnect(&old).await?;
    let cut = Instant::now();
    timeline::fault(
        cut,
        &format!("{}, the leader, cut off the network", old.name),
        Some(&old.name),
    );
    rec.notes.push(format!(
        "cut {old}, the leader, off the network (docker network disconnect)"
    ));
    let since = Since {
        at: cut,
        what: "the leader was cut off",
    };
    let cut_phase = async {
        tokio::join!(
            hosts_after_kill(sub, &rest, &old, since, true, "cut_leader_gone_s"),
            wait_service(
                sub,
                &rest,
                since,
                secs(p.limits.leader_change_s),
                "limits.leader_change_s"
            )
        )
    };
    let ((figures, hosts), svc) = cut_phase.await;
    for (k, v) in figures {
        rec.figure(k, v);
    }
    rec.check("hosts_while_cut", hosts);
    if let Ok(s) = &svc {
        rec.figure("service_moved_s", *s);
    }
    rec.check("service_while_cut", svc);
    let shared = wait_shared(
        sub,
        &rest,
        since,
        secs(p.limits.dead_node_s),
        "limits.dead_node_s",
    )
    .await;
    record_shared(rec, "shared_hosts_while_cut", shared);
    // Put back whatever the checks found.
    sub.reconnect(&old).await?;
    let healed = Instant::now();
    timeline::event(healed, &format!("{} reconnected", old.name));
    rec.notes
        .push(format!("reconnected {old} at {} (same address)", old.ip));
    let since = Since {
        at: healed,
        what: "the old leader was reconnected",
    };
    let rejoin = secs(p.limits.rejoin_s);
    let (hosts, svc) = tokio::join!(
        wait_hosts(sub, &all, &[], since, rejoin, "limits.rejoin_s", None),
        wait_service(sub, &all, since, rejoin, "limits.rejoin_s")
    );
    if let Ok(h) = &hosts.result {
        rec.figure("rejoined_s", h.secs);
        rec.notes.push(format!(
            "after the reconnection etcd's leader is {}",
            h.leader
        ));
    }
    rec.check("hosts_after_heal", hosts.result.map(|h| h.secs));
    rec.check("service_after_heal", svc);
    let shared = wait_shared(sub, &all, since, rejoin, "limits.rejoin_s").await;
    record_shared(rec, "shared_hosts_after_heal", shared);
    Ok(())
}

/// `restart_follower`: the lowest-numbered follower is killed, leaves every table, and is
/// started again (same container, same data).
pub(super) async fn restart(
    sub: &GradedCluster,
    rec: &mut Recorder,
    t0: Instant,
) -> Result<(), UpError> {
    let p = &sub.profile;
    let all = sub.nodes();
    let Some(before) = before_fault(sub, rec, t0).await else {
        return Ok(());
    };
    let Some(victim) = first_follower(&all, &before.leader) else {
        return Ok(());
    };
    sub.kill(&victim).await?;
    let killed = Instant::now();
    rec.notes.push(format!("killed {victim}, the follower"));
    timeline::fault(
        killed,
        &format!("killed {}, the follower", victim.name),
        Some(&victim.name),
    );
    let rest: Vec<NodeRef> = all.iter().filter(|n| **n != victim).cloned().collect();
    let since = Since {
        at: killed,
        what: "the follower was killed",
    };
    let (figures, hosts) =
        hosts_after_kill(sub, &rest, &victim, since, false, "dead_follower_gone_s").await;
    for (k, v) in figures {
        rec.figure(k, v);
    }
    rec.check("hosts", hosts);
    sub.start(&victim).await?;
    let started = Instant::now();
    timeline::event(started, &format!("{} started again", victim.name));
    rec.notes
        .push(format!("started {victim} again (docker start)"));
    let since = Since {
        at: started,
        what: "the follower was started again",
    };
    let rejoin = secs(p.limits.rejoin_s);
    let (hosts, member, svc) = tokio::join!(
        wait_hosts(sub, &all, &[], since, rejoin, "limits.rejoin_s", None),
        wait_member(sub, &all, &victim, since, rejoin),
        wait_service(sub, &all, since, rejoin, "limits.rejoin_s")
    );
    if let Ok(h) = &hosts.result {
        rec.figure("rejoined_s", h.secs);
    }
    rec.check("rejoin", hosts.result.map(|h| h.secs));
    if let Ok(s) = &member {
        rec.figure("member_healthy_s", *s);
    }
    rec.check("etcd_member", member);
    rec.check("leader_service", svc);
    let shared = wait_shared(sub, &all, since, rejoin, "limits.rejoin_s").await;
    record_shared(rec, "shared_hosts", shared);
    super::check_ssh_pairs(sub, rec, &all, Some(&victim)).await;
    Ok(())
}

/// Waits until `node`'s etcd member answers from the host and follows the same leader as
/// the rest of the cluster.
async fn wait_member(
    sub: &GradedCluster,
    all: &[NodeRef],
    node: &NodeRef,
    since: Since,
    limit: Duration,
) -> Result<f64, Failed> {
    let port = sub.profile.judge.etcd_client_port;
    timeline::limit(since.at, limit, "limits.rejoin_s");
    let r = wait_for(
        "the restarted member",
        limit.saturating_sub(since.at.elapsed()),
        sub.profile.poll(),
        || async {
            let st = sub
                .member_status(node)
                .await
                .map_err(|e| format!("{node}'s etcd member on port {port}: {e}"))?;
            if st.leader_id == 0 {
                return Err(format!("{node}'s etcd member knows no leader"));
            }
            let leader = etcd_leader(sub, all).await.map_err(|e| e.0)?;
            let leader_id = sub
                .member_status(&leader)
                .await
                .map_err(|e| format!("{leader}: {e}"))?
                .member_id;
            if st.leader_id != leader_id {
                return Err(format!(
                    "{node}'s etcd member follows {:x}, not the leader {leader} ({leader_id:x})",
                    st.leader_id
                ));
            }
            Ok(since.at.elapsed().as_secs_f64())
        },
    )
    .await;
    r.map(|(s, _)| s).map_err(|e| {
        Failed(format!(
            "{}; still so {:.1} s after {}; allowed {} s (limits.rejoin_s); the node must rejoin its etcd cluster with its own data after a restart",
            e.last,
            since.at.elapsed().as_secs_f64(),
            since.what,
            limit.as_secs()
        ))
    })
}

/// Whether a GET through the gateway counts as answered: any HTTP answer below 500, as for
/// the leader service itself.
fn get_ok(s: &Sample) -> bool {
    match &s.result {
        Ok(_) => true,
        Err(GetFailure::Status { status, .. }) => *status < 500,
        Err(GetFailure::Transport(_)) => false,
    }
}

fn describe_get(s: &Sample) -> String {
    match &s.result {
        Ok(_) => "HTTP 200".into(),
        Err(e) => {
            let t = e.to_string().replace('\n', " ");
            if t.chars().count() > 120 {
                t.chars().take(120).collect::<String>() + "…"
            } else {
                t
            }
        }
    }
}

/// GETs in a row that must succeed after the kill before the gateway counts as recovered.
const RECOVERED_RUN: usize = 5;

/// When the stream recovered after `kill` (seconds from the stream's start): the answer
/// time of the first of [`RECOVERED_RUN`] successes in a row, all sent after the kill and
/// after the last failure.
fn recovered_at(samples: &[Sample], kill: Duration) -> Option<Duration> {
    let mut after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= kill).collect();
    after.sort_by_key(|s| s.sent);
    let last_fail = after.iter().rposition(|s| !get_ok(s));
    let run = &after[last_fail.map_or(0, |i| i + 1)..];
    (run.len() >= RECOVERED_RUN).then(|| run[0].done)
}

/// `gateway`: the profile's forwarder, started with the nodes (before any shared file
/// exists), under a steady stream of GETs while etcd's leader is killed.
pub(super) async fn gateway(
    sub: &GradedCluster,
    rec: &mut Recorder,
    t0: Instant,
) -> Result<(), UpError> {
    let p = &sub.profile;
    let Some(g) = p.gateway.clone() else {
        return Ok(());
    };
    let all = sub.nodes();
    let path = g
        .path
        .clone()
        .unwrap_or_else(|| p.judge.service_path.clone());
    let addr = format!("{}:{}", sub.plan.gateway_ip(), g.port);
    let url = format!("http://{addr}{path}");
    let Some(before) = before_fault(sub, rec, t0).await else {
        return Ok(());
    };
    let gateway_stopped = || async {
        match sub.gateway_not_running().await {
            Ok(None) => None,
            Ok(Some(why)) => Some(format!(
                "the gateway stopped: {why} (its command must keep running, also while {} does not exist yet or the leader changes; see its log lines in the report)",
                if p.judge.shared_hosts_file.is_empty() { "the shared table" } else { &p.judge.shared_hosts_file }
            )),
            Err(e) => Some(format!("the gateway: {e}")),
        }
    };
    // The gateway must forward to the leader before the fault.
    let start = secs(p.limits.start_s);
    let http = Http::new();
    let ready = wait_for(
        "the gateway to answer",
        start.saturating_sub(t0.elapsed()),
        p.poll(),
        || async {
            if let Some(why) = gateway_stopped().await {
                return Ok(Err(why));
            }
            match crate::grade::runner::http_status(&addr, &path, Duration::from_secs(2)).await {
                ServiceProbe::Http(code) if code < 500 => Ok(Ok(t0.elapsed().as_secs_f64())),
                other => Err(format!("GET {url} through the gateway: {other}")),
            }
        },
    )
    .await;
    let ready = match ready {
        Ok((r, _)) => r,
        Err(e) => Err(format!(
            "{}; still so {:.1} s after the containers started; allowed {} s (limits.start_s)",
            e.last,
            t0.elapsed().as_secs_f64(),
            start.as_secs()
        )),
    };
    match ready {
        Ok(s) => {
            rec.figure("gateway_ready_s", s);
            rec.check("gateway_serves", Ok(s));
        }
        Err(e) => {
            rec.check("gateway_serves", Err(Failed(e)));
            return Ok(());
        }
    }
    let interval = Duration::from_millis(g.interval_ms);
    let stream = GetStream::start(http, url.clone(), interval, Duration::from_secs(2));
    // A steady stream before the fault: some GETs answered through the gateway.
    let _ = wait_for(
        "GETs before the kill",
        secs(p.limits.steady_s),
        p.poll(),
        || async {
            let n = stream.answered().iter().filter(|s| get_ok(s)).count();
            if n >= RECOVERED_RUN {
                Ok(())
            } else {
                Err(format!("{n} GETs answered"))
            }
        },
    )
    .await;
    let victim = before.leader;
    sub.kill(&victim).await?;
    let kill = stream.start.elapsed();
    let killed = Instant::now();
    timeline::fault(
        killed,
        &format!("killed {}, the leader", victim.name),
        Some(&victim.name),
    );
    timeline::limit(
        killed,
        secs(p.limits.leader_change_s),
        "limits.leader_change_s",
    );
    rec.notes.push(format!(
        "killed {victim}, the leader, under a stream of GETs to {url} every {} ms",
        g.interval_ms
    ));
    let survivors: Vec<NodeRef> = all.iter().filter(|n| **n != victim).cloned().collect();
    let change = secs(p.limits.leader_change_s);
    let recovered = wait_for(
        "GETs through the gateway to succeed again",
        change,
        p.poll(),
        || async {
            if let Some(why) = gateway_stopped().await {
                return Ok(Err(why));
            }
            let samples = stream.answered();
            match recovered_at(&samples, kill) {
                Some(at) => Ok(Ok(at.saturating_sub(kill).as_secs_f64())),
                None => {
                    let mut after: Vec<&Sample> =
                        samples.iter().filter(|s| s.sent >= kill).collect();
                    after.sort_by_key(|s| s.sent);
                    Err(match after.last() {
                        Some(s) => format!("the last GET answered: {}", describe_get(s)),
                        None => "no GET answered since the kill".into(),
                    })
                }
            }
        },
    )
    .await;
    // Still running at the end, after the leader changed?
    let alive = gateway_stopped().await;
    let samples = stream.finish().await;
    let failed: Vec<&Sample> = samples.iter().filter(|s| !get_ok(s)).collect();
    rec.figure("gateway_gets", samples.len() as f64);
    rec.figure("gateway_gets_failed", failed.len() as f64);
    let recovered = match recovered {
        Ok((r, _)) => r,
        Err(e) => Err(format!(
            "{}; still so {:.1} s after the leader was killed; allowed {} s (limits.leader_change_s); {} of {} GETs failed, first: {}; the gateway must follow the new leader",
            e.last,
            killed.elapsed().as_secs_f64(),
            change.as_secs(),
            failed.len(),
            samples.len(),
            failed.first().map(|s| describe_get(s)).unwrap_or_else(|| "none".into())
        )),
    };
    if let Ok(s) = &recovered {
        rec.figure("gateway_recovered_s", *s);
    }
    rec.check("gateway_recovers", recovered.map_err(Failed));
    rec.figure("gateway_alive", if alive.is_none() { 1.0 } else { 0.0 });
    rec.check(
        "gateway_alive",
        match alive {
            None => Ok(killed.elapsed().as_secs_f64()),
            Some(why) => Err(Failed(why)),
        },
    );
    // The service itself moved (so a failure above is the gateway's, not the nodes').
    let svc = wait_service(
        sub,
        &survivors,
        Since {
            at: killed,
            what: "the leader was killed",
        },
        change,
        "limits.leader_change_s",
    )
    .await;
    if let Ok(s) = &svc {
        rec.figure("service_moved_s", *s);
    }
    rec.check("leader_service", svc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::http::HttpError;

    fn sample(sent_ms: u64, ok: bool) -> Sample {
        Sample {
            sent: Duration::from_millis(sent_ms),
            done: Duration::from_millis(sent_ms + 10),
            result: if ok {
                Ok("node1".into())
            } else {
                Err(GetFailure::Transport(HttpError::Timeout {
                    url: "u".into(),
                    after: Duration::from_secs(2),
                }))
            },
        }
    }

    #[test]
    fn recovery_is_the_first_of_a_run_of_successes_after_the_last_failure() {
        let kill = Duration::from_millis(1000);
        // Before the kill everything works; then two failures, then successes.
        let mut v: Vec<Sample> = (0..10).map(|i| sample(i * 100, true)).collect();
        v.push(sample(1000, false));
        v.push(sample(1100, false));
        v.extend((12..16).map(|i| sample(i * 100, true)));
        assert_eq!(recovered_at(&v, kill), None, "only 4 successes so far");
        v.push(sample(1600, true));
        assert_eq!(recovered_at(&v, kill), Some(Duration::from_millis(1210)));
        // A 503 is a failure; a 404 is an answer.
        let mut s = sample(1700, true);
        s.result = Err(GetFailure::Status {
            status: 503,
            body: String::new(),
        });
        assert!(!get_ok(&s));
        s.result = Err(GetFailure::Status {
            status: 404,
            body: String::new(),
        });
        assert!(get_ok(&s));
        // No failure at all: recovered at the first GET after the kill.
        let v: Vec<Sample> = (0..20).map(|i| sample(i * 100, true)).collect();
        assert_eq!(recovered_at(&v, kill), Some(Duration::from_millis(1010)));
    }
}
