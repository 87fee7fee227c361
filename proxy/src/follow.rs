//! Following the leader: by etcd watch on `/clusterlab/leader`, or by reading the hosts
//! block in a file (`host0` is the leader), the homework's way.
//!
//! The etcd follower watches through every endpoint at once. A watch through the node that
//! has just been killed goes silent until TCP keep-alive gives up on it (seconds), which
//! would be the whole failover budget; the other endpoints' watches deliver the new leader
//! key at once. Each endpoint reports what it saw with the etcd revision it saw it at, and
//! [`Merge`] keeps the newest, so a lagging or reconnecting endpoint never sets an older
//! leader back. A lost, cancelled or compacted watch is resynced with a fresh read.
//!
//! A leader record is used only when every reader would trust it
//! (`clusterlab_core::schema::trusted_leader`): on a lease, naming one of the configured
//! peers at its planned address. A refused record (put by hand, a stranger, the gateway's
//! own or any other address) is logged once per revision and changes nothing: the proxy
//! keeps the leader it had until a trusted record or a delete arrives.
//!
//! etcd is read through its HTTP/JSON gateway ([`crate::gateway`]) rather than gRPC, with
//! the timeouts of `clusterlab_core::etcd` (TCP keep-alive on the schedule of the other
//! programs' gRPC keep-alive).

use crate::gateway::{EventType, Gateway, GatewayError, RangeResponse, WatchResponse};
use crate::upstream::{Tracker, Upstream};
use clusterlab_core::fsread::{read_small_file, SmallFileError, MAX_HOSTS_FILE_BYTES};
use clusterlab_core::hosts::{self, HostsLine};
use clusterlab_core::schema::{self, LeaderRecord, Peer, Rejected};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the leader key held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A record every reader trusts.
    Leader(LeaderRecord),
    /// No key: there is no leader.
    NoLeader,
    /// A record no reader may use, and why.
    Refused(Rejected),
}

/// What one endpoint saw: the leader key's state as of etcd revision `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub revision: i64,
    pub seen: Seen,
    pub endpoint: String,
}

/// Keeps the newest observation across endpoints.
#[derive(Debug, Default)]
pub struct Merge {
    revision: i64,
}

impl Merge {
    /// The leader to adopt, if `obs` is newer than anything applied so far. A refused
    /// record counts as news (older observations stay ignored) but adopts nothing.
    pub fn apply(&mut self, obs: &Observation) -> Option<Option<LeaderRecord>> {
        if obs.revision <= self.revision {
            return None;
        }
        self.revision = obs.revision;
        match &obs.seen {
            Seen::Leader(l) => Some(Some(l.clone())),
            Seen::NoLeader => Some(None),
            Seen::Refused(_) => None,
        }
    }
}

/// The upstream for a leader record: its IP at the leader service's port.
pub fn upstream_of(rec: &LeaderRecord, port: u16) -> Option<Upstream> {
    let ip: IpAddr = rec.ip.parse().ok()?;
    Some(Upstream {
        name: rec.name.clone(),
        addr: SocketAddr::new(ip, port),
    })
}

/// How a present key's value is judged: as every reader judges it.
fn judge(kv: &crate::gateway::KeyValue, peers: &[Peer]) -> Seen {
    match schema::trusted_leader(&kv.value, kv.lease, peers) {
        Ok(rec) => Seen::Leader(rec),
        Err(error) => Seen::Refused(Rejected {
            mod_revision: kv.mod_revision,
            error,
        }),
    }
}

/// What a read of the leader key says.
fn observation_of_range(resp: &RangeResponse, endpoint: &str, peers: &[Peer]) -> Observation {
    Observation {
        revision: resp.header.revision,
        seen: resp
            .kvs
            .first()
            .map_or(Seen::NoLeader, |kv| judge(kv, peers)),
        endpoint: endpoint.to_string(),
    }
}

/// What each event of a watch response says, in order.
fn observations_of_watch(resp: &WatchResponse, endpoint: &str, peers: &[Peer]) -> Vec<Observation> {
    resp.events
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv.as_ref()?;
            let seen = match ev.kind {
                EventType::Put => judge(kv, peers),
                EventType::Delete => Seen::NoLeader,
            };
            Some(Observation {
                revision: kv.mod_revision,
                seen,
                endpoint: endpoint.to_string(),
            })
        })
        .collect()
}

/// Follows the leader key through all `endpoints` until `stop` is cancelled, trusting only
/// records of `peers` (see the module's documentation).
pub async fn follow_etcd(
    endpoints: Vec<String>,
    peers: Vec<Peer>,
    port: u16,
    tracker: Arc<Tracker>,
    stop: CancellationToken,
) {
    let peers = Arc::new(peers);
    let (tx, mut rx) = mpsc::channel::<Observation>(64);
    let mut tasks = Vec::new();
    for ep in endpoints {
        match Gateway::new(&ep) {
            Ok(gw) => tasks.push(tokio::spawn(watch_endpoint(
                gw,
                peers.clone(),
                tx.clone(),
                stop.clone(),
            ))),
            Err(e) => tracing::error!(error = %e, "not following the leader through this endpoint"),
        }
    }
    drop(tx);
    let mut merge = Merge::default();
    // The mod revision of the last refused record logged: each forged write is logged once,
    // not once per endpoint or resync.
    let mut last_refused: Option<i64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            obs = rx.recv() => match obs {
                None => break,
                Some(obs) => {
                    let endpoint = obs.endpoint.clone();
                    let revision = obs.revision;
                    let adopt = merge.apply(&obs);
                    if let Seen::Refused(r) = &obs.seen {
                        if last_refused != Some(r.mod_revision) {
                            last_refused = Some(r.mod_revision);
                            tracing::warn!(%endpoint, problem = %r, "ignoring the leader key; keeping the current upstream");
                        }
                    }
                    if let Some(leader) = adopt {
                        let up = leader.as_ref().and_then(|l| upstream_of(l, port));
                        if tracker.set(up) {
                            tracing::info!(%endpoint, revision, leader = ?leader.map(|l| l.name), "leader key changed");
                        }
                    }
                }
            },
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// First delay before resyncing an endpoint; doubled after each failed cycle.
const RESYNC_MIN: Duration = Duration::from_millis(200);
/// Longest delay between resyncs of an endpoint.
const RESYNC_MAX: Duration = Duration::from_secs(2);

/// Reads and watches the leader key through one endpoint, resyncing after every loss.
async fn watch_endpoint(
    gateway: Gateway,
    peers: Arc<Vec<Peer>>,
    tx: mpsc::Sender<Observation>,
    stop: CancellationToken,
) {
    let endpoint = gateway.base().to_string();
    let mut backoff = RESYNC_MIN;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = sync_and_watch(&gateway, &peers, &tx, &mut backoff) => r,
        };
        if let Err(e) = outcome {
            tracing::debug!(%endpoint, error = %e, "leader watch lost; resyncing");
        }
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RESYNC_MAX);
    }
}

/// Why one endpoint's read-then-watch cycle ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchLost {
    #[error("reading the leader key: {0}")]
    Read(#[source] GatewayError),
    #[error("opening the watch: {0}")]
    Open(#[source] GatewayError),
    #[error("watch: {0}")]
    Watch(#[source] GatewayError),
    #[error("watch stream ended")]
    Ended,
    #[error("watch cancelled: revision {compact_revision} and older are compacted away")]
    Compacted { compact_revision: i64 },
    #[error("watch cancelled: {reason}")]
    Cancelled { reason: String },
    #[error("merger gone")]
    MergerGone,
}

/// One read-then-watch cycle; returns why the watch ended.
async fn sync_and_watch(
    gateway: &Gateway,
    peers: &[Peer],
    tx: &mpsc::Sender<Observation>,
    backoff: &mut Duration,
) -> Result<(), WatchLost> {
    let endpoint = gateway.base();
    let key = schema::LEADER_KEY.as_bytes();
    let resp = gateway.range(key).await.map_err(WatchLost::Read)?;
    let obs = observation_of_range(&resp, endpoint, peers);
    let from = obs.revision + 1;
    tx.send(obs).await.map_err(|_| WatchLost::MergerGone)?;
    let mut watch = gateway.watch(key, from).await.map_err(WatchLost::Open)?;
    // A read and a watch worked: the endpoint is healthy again.
    *backoff = RESYNC_MIN;
    loop {
        let Some(resp) = watch.message().await.map_err(WatchLost::Watch)? else {
            return Err(WatchLost::Ended);
        };
        if resp.canceled {
            return Err(if resp.compact_revision > 0 {
                WatchLost::Compacted {
                    compact_revision: resp.compact_revision,
                }
            } else {
                WatchLost::Cancelled {
                    reason: resp.cancel_reason,
                }
            });
        }
        for obs in observations_of_watch(&resp, endpoint, peers) {
            tx.send(obs).await.map_err(|_| WatchLost::MergerGone)?;
        }
    }
}

/// What a hosts file says about the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileLeader {
    /// The block names this leader as `host0`.
    Leader { name: String, ip: IpAddr },
    /// The block is complete and has no `host0`: there is no leader.
    None,
    /// No complete block (yet, or being rewritten): keep what we have.
    Unknown,
}

/// Reads the `host0` line of the clusterlab block: `IP host0 NAME`, each line read by
/// clusterlab-core's [`HostsLine::parse`]. Lenient on purpose, as a resolver is: the first
/// line whose names include `host0` wins, whatever else it carries; lines that do not parse
/// are passed over.
pub fn leader_in_hosts(text: &str) -> FileLeader {
    let Some(block) = hosts::block_lines(text) else {
        return FileLeader::Unknown;
    };
    for line in block {
        let Ok(Some(HostsLine { ip, names, .. })) = HostsLine::parse(line) else {
            continue;
        };
        if !names.contains(&"host0") {
            continue;
        }
        let name = names
            .iter()
            .find(|n| **n != "host0")
            .copied()
            .unwrap_or("host0");
        return FileLeader::Leader {
            name: name.to_string(),
            ip,
        };
    }
    FileLeader::None
}

/// Judges a `host0` line against `peers` (no peers: no judgement): it must name a configured
/// peer at that peer's planned address. Returns the reason it is refused.
pub fn check_file_leader(leader: &FileLeader, peers: &[Peer]) -> Result<(), String> {
    let FileLeader::Leader { name, ip } = leader else {
        return Ok(());
    };
    if peers.is_empty() {
        return Ok(());
    }
    let key = "host0 of the hosts file";
    let ip = match ip {
        IpAddr::V4(v4) => *v4,
        IpAddr::V6(v6) => return Err(format!("{key}: {v6} is not an IPv4 address")),
    };
    schema::check_planned(key, name, ip, peers).map_err(|e| e.to_string())
}

/// Follows `host0` in the hosts block of `path`, read every `interval`, until `stop`. With
/// `peers`, a `host0` that is not a configured peer at its planned address is logged and
/// ignored (the current upstream stays), as a refused leader key is.
pub async fn follow_file(
    path: PathBuf,
    peers: Vec<Peer>,
    port: u16,
    interval: Duration,
    tracker: Arc<Tracker>,
    stop: CancellationToken,
) {
    let mut missing_logged = false;
    let mut refused_logged: Option<String> = None;
    loop {
        let read = read_leader(&path).await;
        if let Ok(leader) = &read {
            match check_file_leader(leader, &peers) {
                Ok(()) => refused_logged = None,
                Err(reason) => {
                    if refused_logged.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(path = %path.display(), problem = %reason, "ignoring host0; keeping the current upstream");
                        refused_logged = Some(reason);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    continue;
                }
            }
        }
        match read {
            Ok(FileLeader::Leader { name, ip }) => {
                missing_logged = false;
                tracker.set(Some(Upstream {
                    name,
                    addr: SocketAddr::new(ip, port),
                }));
            }
            Ok(FileLeader::None) => {
                tracker.set(None);
            }
            Ok(FileLeader::Unknown) => {}
            Err(e) => {
                // A missing file is the normal state before the first leader is elected.
                if !missing_logged {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the hosts file yet");
                    missing_logged = true;
                }
                tracker.set(None);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Why the hosts file followed by [`follow_file`] could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FollowFileError {
    /// Missing, refused (symlink, FIFO, device, oversized, not UTF-8) or unreadable.
    #[error(transparent)]
    Read(#[from] SmallFileError),
    #[error("reading {path}: the reading task failed: {source}")]
    Task {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The leader named by the hosts file at `path`, read with a size limit and never through a
/// symlink, FIFO or device: the file may be on a volume that every node can write.
async fn read_leader(path: &Path) -> Result<FileLeader, FollowFileError> {
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || read_small_file(&owned, MAX_HOSTS_FILE_BYTES))
        .await
        .map_err(|source| FollowFileError::Task {
            path: path.to_path_buf(),
            source,
        })??;
    Ok(leader_in_hosts(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, ip: &str) -> LeaderRecord {
        LeaderRecord {
            name: name.into(),
            ip: ip.into(),
            member_id: "1".into(),
            term: 1,
        }
    }

    fn obs(rev: i64, leader: Option<LeaderRecord>, ep: &str) -> Observation {
        Observation {
            revision: rev,
            seen: leader.map_or(Seen::NoLeader, Seen::Leader),
            endpoint: ep.into(),
        }
    }

    fn peers() -> Vec<Peer> {
        schema::parse_peers("node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12").unwrap()
    }

    fn kv(value: &str, lease: i64, rev: i64) -> crate::gateway::KeyValue {
        crate::gateway::KeyValue {
            key: schema::LEADER_KEY.into(),
            mod_revision: rev,
            value: value.into(),
            lease,
        }
    }

    #[test]
    fn forged_leader_records_are_refused_and_keep_the_current_leader() {
        let good = r#"{"name":"node1","ip":"10.77.0.11","member_id":"1"}"#;
        let want = LeaderRecord {
            term: 0,
            ..rec("node1", "10.77.0.11")
        };
        assert_eq!(judge(&kv(good, 7, 3), &peers()), Seen::Leader(want));
        for (value, lease) in [
            (good, 0),
            (r#"{"name":"gateway","ip":"10.77.0.5","member_id":"1"}"#, 7),
            (r#"{"name":"node1","ip":"10.77.0.5","member_id":"1"}"#, 7),
            (r#"{"name":"node1","ip":"127.0.0.1","member_id":"1"}"#, 7),
        ] {
            assert!(
                matches!(
                    judge(&kv(value, lease, 4), &peers()),
                    Seen::Refused(Rejected {
                        mod_revision: 4,
                        ..
                    })
                ),
                "{value} on lease {lease}"
            );
        }
        let mut m = Merge::default();
        let a = rec("node0", "10.77.0.10");
        assert_eq!(
            m.apply(&obs(5, Some(a.clone()), "e0")),
            Some(Some(a.clone()))
        );
        let forged = Observation {
            revision: 6,
            seen: judge(&kv(good, 0, 6), &peers()),
            endpoint: "e1".into(),
        };
        assert_eq!(m.apply(&forged), None, "nothing adopted");
        // Older news stays older than the refused write.
        assert_eq!(m.apply(&obs(5, None, "e2")), None);
        assert_eq!(m.apply(&obs(7, None, "e2")), Some(None));
    }

    #[test]
    fn merge_keeps_the_newest_revision_across_endpoints() {
        let mut m = Merge::default();
        let a = rec("node0", "10.77.0.10");
        let b = rec("node1", "10.77.0.11");
        assert_eq!(
            m.apply(&obs(5, Some(a.clone()), "e0")),
            Some(Some(a.clone()))
        );
        // The same state through another endpoint changes nothing.
        assert_eq!(m.apply(&obs(5, Some(a.clone()), "e1")), None);
        assert_eq!(
            m.apply(&obs(9, Some(b.clone()), "e1")),
            Some(Some(b.clone()))
        );
        // A lagging endpoint's older news is ignored.
        assert_eq!(m.apply(&obs(7, Some(a.clone()), "e0")), None);
        assert_eq!(m.apply(&obs(8, None, "e2")), None);
        assert_eq!(m.apply(&obs(10, None, "e2")), Some(None));
    }

    #[test]
    fn upstream_uses_the_service_port() {
        let u = upstream_of(&rec("node2", "10.77.0.12"), 8888).unwrap();
        assert_eq!(u.name, "node2");
        assert_eq!(u.addr, "10.77.0.12:8888".parse().unwrap());
    }

    #[test]
    fn host0_of_a_file_must_be_a_planned_peer_when_peers_are_given() {
        let at = |name: &str, ip: &str| FileLeader::Leader {
            name: name.into(),
            ip: ip.parse().unwrap(),
        };
        assert!(check_file_leader(&at("node1", "10.77.0.11"), &peers()).is_ok());
        assert!(
            check_file_leader(&at("evil", "10.9.9.9"), &[]).is_ok(),
            "no peers, no judgement"
        );
        assert!(check_file_leader(&FileLeader::None, &peers()).is_ok());
        for (name, ip) in [
            ("evil", "10.77.0.11"),
            ("node1", "10.77.0.5"),
            ("node1", "::1"),
        ] {
            let e = check_file_leader(&at(name, ip), &peers()).unwrap_err();
            assert!(e.contains("host0 of the hosts file"), "{e}");
        }
    }

    #[test]
    fn host0_is_read_from_the_block() {
        let text = "127.0.0.1 localhost\n10.0.0.9 host0 stranger\n# BEGIN clusterlab\n\
                    10.77.0.10 host1 node0\n10.77.0.12 host0 node2\n# END clusterlab\n";
        assert_eq!(
            leader_in_hosts(text),
            FileLeader::Leader {
                name: "node2".into(),
                ip: "10.77.0.12".parse().unwrap()
            }
        );
        assert_eq!(
            leader_in_hosts("# BEGIN clusterlab\n10.77.0.10 host1 node0\n# END clusterlab\n"),
            FileLeader::None
        );
        assert_eq!(
            leader_in_hosts("# BEGIN clusterlab\n10.77.0.12 host0 node2\n"),
            FileLeader::Unknown
        );
        assert_eq!(leader_in_hosts(""), FileLeader::Unknown);
        assert_eq!(
            leader_in_hosts("# BEGIN clusterlab\nbad host0 x\n# END clusterlab\n"),
            FileLeader::None
        );
    }

    /// A file follower on `path`, polling every 20 ms, reporting to `tracker`.
    fn spawn_file_follower(
        path: &std::path::Path,
        tracker: &Arc<Tracker>,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(follow_file(
            path.to_path_buf(),
            Vec::new(),
            8888,
            Duration::from_millis(20),
            tracker.clone(),
            stop.clone(),
        ))
    }

    #[tokio::test]
    async fn file_follower_tracks_host0_and_survives_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let tracker = Arc::new(Tracker::new("file"));
        let stop = CancellationToken::new();
        let task = spawn_file_follower(&path, &tracker, &stop);
        let mut rx = tracker.subscribe();
        std::fs::write(
            &path,
            "# BEGIN clusterlab\n10.77.0.11 host0 node1\n# END clusterlab\n",
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|u| u.is_some()))
            .await
            .expect("leader from file")
            .unwrap();
        assert_eq!(tracker.current().unwrap().name, "node1");
        std::fs::remove_file(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|u| u.is_none()))
            .await
            .expect("no leader without the file")
            .unwrap();
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn file_follower_refuses_a_fifo_an_oversized_file_and_a_symlink_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let good = "# BEGIN clusterlab\n10.77.0.11 host0 node1\n# END clusterlab\n";
        let tracker = Arc::new(Tracker::new("file"));
        let stop = CancellationToken::new();
        let rx = tracker.subscribe();
        std::fs::write(&path, good).unwrap();
        let task = spawn_file_follower(&path, &tracker, &stop);
        let wait = |want: bool| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|u| u.is_some() == want))
                    .await
                    .expect("the follower kept going")
                    .map(|_| ())
                    .unwrap();
            }
        };
        wait(true).await;
        // A FIFO: refused at once, no leader, and the follower does not block on it.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        wait(false).await;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, good).unwrap();
        wait(true).await;
        // An oversized file (sparse: nothing to write) is refused.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_HOSTS_FILE_BYTES + 1)
            .unwrap();
        wait(false).await;
        std::fs::write(&path, good).unwrap();
        wait(true).await;
        // A symlink to a file that names the same leader is refused too.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, good).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        wait(false).await;
        stop.cancel();
        task.await.unwrap();
    }
}
