//! Keeping the hosts files current from etcd: read the `/clusterlab/` prefix, render, write,
//! then follow a watch from the next revision.
//!
//! Each session is "snapshot, then watch from snapshot revision + 1", so no change between
//! the two is missed. A session ends when the watch stream fails, closes, or is cancelled
//! (compaction, or etcd's "no leader" cancel); the next session starts with a fresh snapshot.
//! Reads are linearizable (etcd's default) and requests carry etcd's require-leader flag, so
//! a member cut off from the majority refuses to answer instead of serving stale data, and
//! its open watch is cancelled after a few election timeouts. While etcd cannot answer, the
//! files keep the last good table: nothing is written until a snapshot succeeds again.

use crate::render::{render_table, table, Table};
use crate::write::{update_hosts_file, write_shared};
use clusterlab_core::schema::{self, ClusterView, Peer, RawKv, RejectLog, Rejected};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Time allowed for a single request (connect, get, creating the watch).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// First delay before a new session after a failed one.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between sessions; also bounds how late a node catches up after an outage.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// While etcd stays unavailable, the outage is logged again at this interval.
const OUTAGE_REMINDER: Duration = Duration::from_secs(30);

/// Why reading or watching etcd failed; every variant ends a session, none is fatal.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("connecting to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("{what}: {source}")]
    Request {
        what: &'static str,
        source: etcd_client::Error,
    },
    #[error("{what}: no answer within {} s", OP_TIMEOUT.as_secs())]
    Timeout { what: &'static str },
    #[error("etcd answered the read of {} without a header", schema::PREFIX)]
    NoHeader,
    #[error("watch cancelled: revision {0} is compacted")]
    Compacted(i64),
    #[error("watch cancelled by etcd: {0}")]
    Cancelled(String),
    #[error("watch stream closed by etcd")]
    Closed,
}

/// What `hostsgen watch` keeps current.
#[derive(Debug, Clone)]
pub struct Settings {
    /// etcd client URLs; on a node, the local member only.
    pub endpoints: Vec<String>,
    /// This node's name: it writes the shared copy while the leader key names it.
    pub node: String,
    /// The hosts file written in place (/etc/hosts).
    pub hosts_file: PathBuf,
    /// The shared copy (<shared_dir>/hosts).
    pub shared_hosts: PathBuf,
    /// The configured peers: the only nodes (and leaders) taken from etcd.
    pub peers: Vec<Peer>,
}

/// A client with clusterlab's timeouts (`clusterlab_core::etcd`) that requires its member to
/// have a raft leader. Loss of the local member is caught by the keep-alive ping; loss of
/// quorum by the require-leader flag, which does not depend on it.
pub async fn connect(endpoints: &[String]) -> Result<Client, EtcdError> {
    let opts = clusterlab_core::etcd::options().with_require_leader(true);
    timed("connecting", Client::connect(endpoints, Some(opts)))
        .await
        .map_err(|e| match e {
            EtcdError::Request { source, .. } => EtcdError::Connect {
                endpoints: endpoints.join(","),
                source,
            },
            other => other,
        })
}

async fn timed<T>(
    what: &'static str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Request { what, source }),
        Err(_) => Err(EtcdError::Timeout { what }),
    }
}

/// One key's value with the lease it is on and the revision it was written at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    pub lease: i64,
    pub mod_revision: i64,
}

impl Stored {
    fn of(kv: &etcd_client::KeyValue) -> Stored {
        Stored {
            value: kv.value().to_vec(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// The `/clusterlab/` keys at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub kvs: BTreeMap<String, Stored>,
    pub revision: i64,
}

impl Snapshot {
    /// The view these keys give when only `peers` are trusted, and the entries refused.
    pub fn view(&self, peers: &[Peer]) -> (ClusterView, Vec<Rejected>) {
        ClusterView::from_etcd(
            self.kvs.iter().map(|(k, v)| RawKv {
                key: k.as_str(),
                value: &v.value,
                lease: v.lease,
                mod_revision: v.mod_revision,
            }),
            peers,
        )
    }
}

/// Reads the whole prefix (linearizable).
pub async fn read_snapshot(client: &mut Client) -> Result<Snapshot, EtcdError> {
    let resp = timed(
        "reading /clusterlab/",
        client.get(schema::PREFIX, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = resp.header().ok_or(EtcdError::NoHeader)?.revision();
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                Stored::of(kv),
            )
        })
        .collect();
    Ok(Snapshot { kvs, revision })
}

/// The output side: renders views and writes the files, remembering what it last wrote so
/// logs only speak of changes.
struct Output {
    settings: Settings,
    last_block: Option<String>,
    rejects: RejectLog,
    /// The last leader record that was trusted: a refused write over the leader key is
    /// ignored, as if it had not happened, until a trusted record or a delete replaces it.
    last_leader: Option<schema::LeaderRecord>,
    warned_empty: bool,
}

impl Output {
    fn publish(&mut self, snap: &Snapshot) {
        let (mut view, rejected) = snap.view(&self.settings.peers);
        let leader_refused = rejected.iter().any(|r| r.error.key() == schema::LEADER_KEY);
        if leader_refused {
            view.leader = self.last_leader.clone();
        } else {
            self.last_leader = view.leader.clone();
        }
        let t = table(&view);
        // Once per refused key and revision, however often the prefix is re-read.
        for r in self.rejects.fresh(&rejected) {
            tracing::warn!(problem = %r, "ignoring an entry from etcd");
        }
        for n in &t.rejected {
            tracing::warn!(name = %n, "refused node name");
        }
        if t.entries.is_empty() {
            // Only seen while no lease is alive (bootstrap, or every node's lease lapsed at
            // once); the previous table, if any, is the better answer until a node registers.
            if !self.warned_empty {
                tracing::warn!(
                    revision = snap.revision,
                    "etcd lists no live node; not writing an empty table"
                );
                self.warned_empty = true;
            }
            return;
        }
        self.warned_empty = false;
        let block = render_table(&t);
        if self.last_block.as_deref() != Some(block.as_str()) {
            tracing::info!(revision = snap.revision, table = %t.summary(), "hosts table");
        }
        self.write(&t, &block);
        self.last_block = Some(block);
    }

    // Small local files: writing them inline costs microseconds, so no blocking pool.
    fn write(&self, t: &Table, block: &str) {
        let s = &self.settings;
        match update_hosts_file(&s.hosts_file, block) {
            Ok(true) => tracing::info!(file = %s.hosts_file.display(), "updated"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot update the hosts file"),
        }
        if t.leader.as_deref() == Some(s.node.as_str()) {
            match write_shared(&s.shared_hosts, block, &s.node) {
                Ok(true) => tracing::info!(file = %s.shared_hosts.display(), "updated"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot update the shared hosts file"),
            }
        }
    }
}

/// When etcd stopped answering, and when that was last logged.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    logged: Instant,
}

/// One session: snapshot, publish, then follow the watch until it ends. `synced` is set once
/// the snapshot is published, so the caller can tell a lost watch from an unreachable etcd;
/// a successful snapshot also ends an outage.
async fn session(
    settings: &Settings,
    out: &mut Output,
    synced: &mut bool,
    outage: &mut Option<Outage>,
) -> Result<(), EtcdError> {
    let mut client = connect(&settings.endpoints).await?;
    let mut snap = read_snapshot(&mut client).await?;
    if let Some(o) = outage.take() {
        tracing::info!(
            after_s = o.since.elapsed().as_secs_f32(),
            revision = snap.revision,
            "etcd is answering again; catching up"
        );
    }
    out.publish(&snap);
    *synced = true;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(snap.revision + 1);
    let mut stream = timed(
        "starting the watch",
        client.watch(schema::PREFIX, Some(opts)),
    )
    .await?;
    tracing::debug!(revision = snap.revision, "watching /clusterlab/");
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|source| EtcdError::Request {
                what: "watching /clusterlab/",
                source,
            })?
            .ok_or(EtcdError::Closed)?;
        if resp.canceled() {
            return Err(if resp.compact_revision() > 0 {
                EtcdError::Compacted(resp.compact_revision())
            } else {
                EtcdError::Cancelled(resp.cancel_reason().to_string())
            });
        }
        if resp.events().is_empty() {
            continue; // the "created" answer and progress notifications
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    snap.kvs.insert(key, Stored::of(kv));
                }
                EventType::Delete => {
                    snap.kvs.remove(&key);
                }
            }
        }
        if let Some(h) = resp.header() {
            snap.revision = h.revision();
        }
        out.publish(&snap);
    }
}

/// Keeps the hosts files current until `shutdown` resolves. Never gives up on etcd: failures
/// are logged and retried with backoff while the files keep the last good table.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    tracing::info!(
        node = %settings.node,
        endpoints = %settings.endpoints.join(","),
        hosts = %settings.hosts_file.display(),
        shared = %settings.shared_hosts.display(),
        "keeping hosts files current from etcd"
    );
    let mut out = Output {
        settings: settings.clone(),
        last_block: None,
        rejects: RejectLog::default(),
        last_leader: None,
        warned_empty: false,
    };
    let mut backoff = Duration::ZERO;
    let mut outage: Option<Outage> = None;
    loop {
        let mut synced = false;
        let result = tokio::select! {
            r = session(&settings, &mut out, &mut synced, &mut outage) => r,
            _ = &mut shutdown => return,
        };
        let Err(e) = result else { continue };
        if synced {
            // A watch that ran and then ended is normal churn: resync almost at once.
            tracing::info!(error = %e, "watch ended; re-reading and watching again");
            backoff = MIN_BACKOFF;
        } else {
            let now = Instant::now();
            match &mut outage {
                None => {
                    tracing::warn!(error = %e, "etcd unavailable; keeping the last hosts table");
                    outage = Some(Outage {
                        since: now,
                        logged: now,
                    });
                }
                Some(o) if now - o.logged >= OUTAGE_REMINDER => {
                    tracing::warn!(error = %e, for_s = (now - o.since).as_secs(), "etcd still unavailable; keeping the last hosts table");
                    o.logged = now;
                }
                Some(_) => tracing::debug!(error = %e, "etcd still unavailable"),
            }
            backoff = (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return,
        }
    }
}

/// Reads etcd once and returns the view `peers` give, with the entries that were refused.
pub async fn read_view(
    endpoints: &[String],
    peers: &[Peer],
) -> Result<(ClusterView, Vec<Rejected>), EtcdError> {
    let mut client = connect(endpoints).await?;
    Ok(read_snapshot(&mut client).await?.view(peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> Stored {
        leased(
            format!(
                r#"{{"name":"{name}","ip":"{ip}","role":"follower","member_id":"1","since":0}}"#
            )
            .into_bytes(),
            7,
        )
    }

    fn leased(value: Vec<u8>, lease: i64) -> Stored {
        Stored {
            value,
            lease,
            mod_revision: 1,
        }
    }

    fn output(dir: &std::path::Path, node: &str) -> Output {
        Output {
            settings: Settings {
                endpoints: vec![],
                node: node.into(),
                hosts_file: dir.join("etc-hosts"),
                shared_hosts: dir.join("shared-hosts"),
                peers: clusterlab_core::config::parse_peers(
                    "node0=10.0.0.10,node1=10.0.0.11,node2=10.0.0.12",
                )
                .unwrap(),
            },
            last_block: None,
            rejects: RejectLog::default(),
            last_leader: None,
            warned_empty: false,
        }
    }

    #[test]
    fn publish_writes_hosts_and_shared_copy_only_on_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();
        let mut snap = Snapshot::default();
        snap.kvs
            .insert(schema::node_key("node0"), node("node0", "10.0.0.10"));
        snap.kvs
            .insert(schema::node_key("node1"), node("node1", "10.0.0.11"));
        snap.kvs.insert(
            schema::LEADER_KEY.into(),
            leased(
                br#"{"name":"node1","ip":"10.0.0.11","member_id":"1"}"#.to_vec(),
                7,
            ),
        );
        let block =
            "# BEGIN clusterlab\n10.0.0.11 host0 node1\n10.0.0.10 host1 node0\n# END clusterlab\n";

        let mut follower = output(dir.path(), "node0");
        follower.publish(&snap);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc-hosts")).unwrap(),
            format!("127.0.0.1 localhost\n{block}")
        );
        assert!(!dir.path().join("shared-hosts").exists());

        let mut leader = output(dir.path(), "node1");
        leader.publish(&snap);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("shared-hosts")).unwrap(),
            block
        );
    }

    #[test]
    fn an_empty_view_never_blanks_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("etc-hosts");
        let mut out = output(dir.path(), "node0");
        let mut snap = Snapshot::default();
        snap.kvs
            .insert(schema::node_key("node0"), node("node0", "10.0.0.10"));
        out.publish(&snap);
        let before = std::fs::read_to_string(&hosts).unwrap();
        assert!(before.contains("10.0.0.10 host1 node0"), "{before}");
        out.publish(&Snapshot::default());
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), before);
    }

    #[test]
    fn forged_keys_never_reach_the_hosts_file() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("etc-hosts");
        let mut out = output(dir.path(), "node0");
        let mut snap = Snapshot::default();
        snap.kvs
            .insert(schema::node_key("node0"), node("node0", "10.0.0.10"));
        snap.kvs
            .insert(schema::node_key("node1"), node("node1", "10.0.0.11"));
        snap.kvs.insert(
            schema::LEADER_KEY.into(),
            leased(
                br#"{"name":"node1","ip":"10.0.0.11","member_id":"1"}"#.to_vec(),
                7,
            ),
        );
        out.publish(&snap);
        let good = std::fs::read_to_string(&hosts).unwrap();
        // A stranger with a lease-less key, a peer's name with a wrong address, and a
        // lease-less leader key pointing at the stranger: none of it is used.
        let mut evil = node("evil", "10.9.9.9");
        evil.lease = 0;
        snap.kvs.insert(schema::node_key("evil"), evil);
        snap.kvs.insert(
            schema::node_key("node2"),
            leased(node("node2", "10.9.9.8").value, 0),
        );
        snap.kvs.insert(
            schema::LEADER_KEY.into(),
            leased(
                br#"{"name":"evil","ip":"10.9.9.9","member_id":"1"}"#.to_vec(),
                0,
            ),
        );
        out.publish(&snap);
        let after = std::fs::read_to_string(&hosts).unwrap();
        // The forged leader key replaced the real one in etcd; readers keep the last
        // trusted leader as if the write had not happened.
        assert_eq!(after, good);
        // A delete of the leader key is news: no host0 then.
        snap.kvs.remove(schema::LEADER_KEY);
        out.publish(&snap);
        let after = std::fs::read_to_string(&hosts).unwrap();
        assert!(!after.contains("10.9.9."), "{after}");
        assert!(!after.contains("host0"), "{after}");
        assert!(after.contains("10.0.0.10 host1 node0"), "{after}");
    }
}
