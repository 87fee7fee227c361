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
//!
//! Beside the etcd side, a guard keeps the hosts file itself right: a block deleted or edited
//! by hand (or the file emptied) is put back from the last good table. It wakes on file
//! events (inotify, through the `notify` crate) and, in case events are lost or cannot be
//! had, checks every [`REPAIR_POLL`]; a check reads the file and writes only if it differs.
//! The shared copy is written by the node the leader key names, and only from a view that a
//! fresh linearizable read shows to be current: a node that was cut off and is replaying the
//! changes it missed sees itself as leader in the old states it passes through, and must not
//! put that old table over the new leader's. The leader also checks the shared copy every
//! [`SHARED_RECHECK`] and puts its table back (after the same confirmation) when it differs.

use crate::render::{render_table, table};
use crate::write::{shared_holds, update_hosts_file, write_shared};
use clusterlab_core::schema::{self, ClusterView, Peer, RawKv, RejectLog, Rejected};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time allowed for a single request (connect, get, creating the watch).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// First delay before a new session after a failed one.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between sessions; also bounds how late a node catches up after an outage.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// While etcd stays unavailable, the outage is logged again at this interval.
const OUTAGE_REMINDER: Duration = Duration::from_secs(30);
/// The hosts file is checked against the last good table at least this often, file events
/// or not. A check is one read of a small file; file events do the fast part.
pub const REPAIR_POLL: Duration = Duration::from_secs(30);
/// After a file event, how long to wait for more before checking: an edit is often several
/// writes, and the check should see the result, not the middle.
pub const REPAIR_SETTLE: Duration = Duration::from_millis(200);
/// How often the leader checks that the shared copy still holds its table (one read of a
/// small file; etcd is read only when the file differs).
pub const SHARED_RECHECK: Duration = Duration::from_secs(5);

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

    /// Whether `other` holds the same keys, each at the same revision: then a view built from
    /// `self` is the view `other` gives.
    pub fn same_keys(&self, other: &Snapshot) -> bool {
        self.kvs.len() == other.kvs.len()
            && self
                .kvs
                .iter()
                .zip(&other.kvs)
                .all(|((k, v), (ok, ov))| k == ok && v.mod_revision == ov.mod_revision)
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
    /// The last error of a repair, said once until it changes.
    last_repair_error: Option<String>,
    /// The block of the last table in which this node leads: what the shared copy should
    /// hold (`None` while another node leads).
    shared: Option<String>,
}

impl Output {
    /// Renders `snap` and writes the hosts file. Returns the block for the shared copy when
    /// this node is the leader in `snap` (written by [`share`] once `snap` is confirmed
    /// current).
    fn publish(&mut self, snap: &Snapshot) -> Option<String> {
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
            self.shared = None;
            return None;
        }
        self.warned_empty = false;
        let block = render_table(&t);
        if self.last_block.as_deref() != Some(block.as_str()) {
            tracing::info!(revision = snap.revision, table = %t.summary(), "hosts table");
        }
        // Small local file: writing it inline costs microseconds, so no blocking pool.
        let s = &self.settings;
        match update_hosts_file(&s.hosts_file, &block) {
            Ok(true) => tracing::info!(file = %s.hosts_file.display(), "updated"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot update the hosts file"),
        }
        let leading = t.leader.as_deref() == Some(s.node.as_str());
        self.shared = leading.then(|| block.clone());
        self.last_block = Some(block);
        self.shared.clone()
    }

    /// The block the shared copy should hold when this node leads and the copy holds
    /// something else (or cannot be read).
    fn shared_differs(&self) -> Option<String> {
        let block = self.shared.as_ref()?;
        match shared_holds(&self.settings.shared_hosts, block) {
            Ok(true) => None,
            _ => Some(block.clone()),
        }
    }

    /// Puts the last published block back into the hosts file if the file no longer holds
    /// it (block deleted or edited, file emptied or gone). Returns whether it wrote.
    fn repair(&mut self) -> bool {
        let Some(block) = &self.last_block else {
            return false;
        };
        let path = &self.settings.hosts_file;
        match update_hosts_file(path, block) {
            Ok(wrote) => {
                if wrote {
                    tracing::warn!(file = %path.display(), "the clusterlab block was missing or changed; restored it");
                }
                self.last_repair_error = None;
                wrote
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_repair_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "cannot restore the hosts file");
                }
                self.last_repair_error = Some(text);
                false
            }
        }
    }
}

/// Writes `block` as the shared copy if the copy holds something else and a linearizable read
/// of the prefix shows that `snap`, the view it came from, is still etcd's current state. A
/// node that is behind (replaying what it missed while cut off) reads newer keys and writes
/// nothing; the watch brings it the newer state. Errors of the read end the session like any
/// other etcd error.
async fn share(
    client: &mut Client,
    settings: &Settings,
    snap: &Snapshot,
    block: &str,
) -> Result<(), EtcdError> {
    if matches!(shared_holds(&settings.shared_hosts, block), Ok(true)) {
        return Ok(());
    }
    let fresh = read_snapshot(client).await?;
    if !fresh.same_keys(snap) {
        tracing::debug!(
            seen = snap.revision,
            current = fresh.revision,
            "the view is behind etcd; not writing the shared copy from it"
        );
        return Ok(());
    }
    let path = &settings.shared_hosts;
    match write_shared(path, block, &settings.node) {
        Ok(true) => tracing::info!(file = %path.display(), "updated"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "cannot update the shared hosts file"),
    }
    Ok(())
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
    out: &Mutex<Output>,
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
    let wanted = lock(out).publish(&snap);
    *synced = true;
    if let Some(block) = wanted {
        share(&mut client, settings, &snap, &block).await?;
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(snap.revision + 1);
    let mut stream = timed(
        "starting the watch",
        client.watch(schema::PREFIX, Some(opts)),
    )
    .await?;
    tracing::debug!(revision = snap.revision, "watching /clusterlab/");
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + SHARED_RECHECK, SHARED_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = recheck.tick() => {
                let differs = lock(out).shared_differs();
                if let Some(block) = differs {
                    tracing::info!(file = %settings.shared_hosts.display(), "the shared copy does not hold this leader's table");
                    share(&mut client, settings, &snap, &block).await?;
                }
                continue;
            }
        };
        let resp = message
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
        let wanted = lock(out).publish(&snap);
        if let Some(block) = wanted {
            share(&mut client, settings, &snap, &block).await?;
        }
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
    let out = Arc::new(Mutex::new(Output {
        settings: settings.clone(),
        last_block: None,
        rejects: RejectLog::default(),
        last_leader: None,
        warned_empty: false,
        last_repair_error: None,
        shared: None,
    }));
    let guard = guard_hosts_file(out.clone(), settings.hosts_file.clone(), REPAIR_POLL);
    tokio::pin!(guard);
    let mut backoff = Duration::ZERO;
    let mut outage: Option<Outage> = None;
    loop {
        let mut synced = false;
        let result = tokio::select! {
            r = session(&settings, &out, &mut synced, &mut outage) => r,
            _ = &mut guard => unreachable!("the hosts file guard never returns"),
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
            _ = &mut guard => unreachable!("the hosts file guard never returns"),
            _ = &mut shutdown => return,
        }
    }
}

/// The output, also when a holder panicked (its state is still a valid table).
fn lock(out: &Mutex<Output>) -> std::sync::MutexGuard<'_, Output> {
    out.lock().unwrap_or_else(|e| e.into_inner())
}

/// The file's identity, to tell when it was replaced and needs a new watch.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether a file event can mean the content changed. Opening and reading cannot (and
/// every name lookup on the node opens /etc/hosts); a write, truncation, deletion,
/// rename or creation can.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether a file event means the watch itself is gone: the file was deleted or renamed away
/// (a new file at the path, even one that reuses the inode number, needs a new watch).
fn watch_lost(kind: &notify::EventKind) -> bool {
    use notify::event::ModifyKind;
    use notify::EventKind;
    matches!(
        kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// Watches `path` for changes; events are coalesced into a channel of capacity one, and
/// `lost` is set when the watched file goes. `None` when no watch can be set up (then only
/// the poll checks).
fn watch_file(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
    lost: Arc<std::sync::atomic::AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if watch_lost(&ev.kind) {
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if may_change(&ev.kind) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; checking the hosts file by polling only");
            return None;
        }
    };
    match watcher.watch(path, RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch the hosts file; checking it by polling only");
            None
        }
    }
}

/// Keeps the hosts file holding the last published block: checks it on file events (after
/// [`REPAIR_SETTLE`]) and every `poll`, and restores the block when it is missing or
/// changed. Never returns.
async fn guard_hosts_file(out: Arc<Mutex<Output>>, path: PathBuf, poll: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut watched = file_id(&path);
    let mut watcher = watch_file(&path, tx.clone(), lost.clone());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                tokio::time::sleep(REPAIR_SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        lock(&out).repair();
        // Deleted and written anew, or replaced by rename: the old watch sees nothing of the
        // new file.
        let now = file_id(&path);
        let gone = lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        if gone || watcher.is_none() || now != watched {
            drop(watcher.take());
            watcher = watch_file(&path, tx.clone(), lost.clone());
            watched = now;
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
            last_repair_error: None,
            shared: None,
        }
    }

    #[test]
    fn publish_writes_the_hosts_file_and_asks_for_the_shared_copy_only_on_the_leader() {
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

        assert_eq!(follower.shared_differs(), None);

        // The leader is handed the block for the shared copy; publish itself never writes
        // it (that waits for the view to be confirmed current).
        let mut leader = output(dir.path(), "node1");
        assert_eq!(leader.publish(&snap).as_deref(), Some(block));
        assert!(!dir.path().join("shared-hosts").exists());
        assert_eq!(leader.shared_differs().as_deref(), Some(block));
        std::fs::write(dir.path().join("shared-hosts"), block).unwrap();
        assert_eq!(leader.shared_differs(), None);
        std::fs::write(dir.path().join("shared-hosts"), "10.6.6.6 host0 evil\n").unwrap();
        assert_eq!(leader.shared_differs().as_deref(), Some(block));

        // Once another node leads, this one no longer wants the shared copy.
        snap.kvs.insert(
            schema::LEADER_KEY.into(),
            leased(
                br#"{"name":"node0","ip":"10.0.0.10","member_id":"1"}"#.to_vec(),
                7,
            ),
        );
        assert_eq!(leader.publish(&snap), None);
        assert_eq!(leader.shared_differs(), None);
    }

    #[test]
    fn a_view_is_current_only_with_the_same_keys_at_the_same_revisions() {
        let mut a = leader_snapshot();
        a.revision = 5;
        let mut b = a.clone();
        b.revision = 9; // writes elsewhere move the revision, not the view
        assert!(a.same_keys(&b));
        b.kvs
            .get_mut(&schema::node_key("node0"))
            .unwrap()
            .mod_revision = 8;
        assert!(!a.same_keys(&b), "a key rewritten since");
        let mut c = a.clone();
        c.kvs
            .insert(schema::LEADER_KEY.into(), node("node0", "10.0.0.10"));
        assert!(
            !a.same_keys(&c) && !c.same_keys(&a),
            "a key added or deleted since"
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

    fn leader_snapshot() -> Snapshot {
        let mut snap = Snapshot::default();
        snap.kvs
            .insert(schema::node_key("node0"), node("node0", "10.0.0.10"));
        snap
    }

    /// Waits up to 5 s for `path` to hold `want`; says what it last saw.
    async fn holds(path: &std::path::Path, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = std::fs::read_to_string(path).unwrap_or_default();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never came back to {want:?}; last {now:?}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_edited_emptied_or_deleted_hosts_file_is_restored_on_file_events() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let out = Arc::new(Mutex::new(output(dir.path(), "node0")));
        lock(&out).publish(&leader_snapshot());
        let good = std::fs::read_to_string(&hosts).unwrap();
        assert!(good.contains("10.0.0.10 host1 node0"), "{good}");
        // A poll far beyond the test: only file events can bring the repairs in time.
        let guard = tokio::spawn(guard_hosts_file(
            out.clone(),
            hosts.clone(),
            Duration::from_secs(3600),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;

        // The block deleted by hand, Docker's lines kept.
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        holds(&hosts, &good).await;
        // A line of the block edited.
        std::fs::write(&hosts, good.replace("10.0.0.10", "10.6.6.6")).unwrap();
        holds(&hosts, &good).await;
        // Emptied.
        std::fs::File::create(&hosts).unwrap();
        holds(&hosts, &good.replace("127.0.0.1 localhost\n", "")).await;
        // Deleted: written anew, and the new file is watched too.
        std::fs::remove_file(&hosts).unwrap();
        let block_only = good.replace("127.0.0.1 localhost\n", "");
        holds(&hosts, &block_only).await;
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        holds(&hosts, &good).await;
        // Lines outside the block are the node's own business and stay.
        let extra = format!("{good}10.1.1.1 mine\n");
        std::fs::write(&hosts, &extra).unwrap();
        tokio::time::sleep(REPAIR_SETTLE * 3).await;
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), extra);
        guard.abort();
    }

    #[tokio::test]
    async fn the_poll_restores_the_block_without_file_events() {
        let dir = tempfile::tempdir().unwrap();
        // The file's folder does not exist yet: no watch can be set up, only the poll sees
        // the file once it appears.
        let etc = dir.path().join("etc");
        let hosts = etc.join("hosts");
        let mut o = output(dir.path(), "node0");
        o.settings.hosts_file = hosts.clone();
        let out = Arc::new(Mutex::new(o));
        lock(&out).publish(&leader_snapshot());
        assert!(!hosts.exists());
        let guard = tokio::spawn(guard_hosts_file(
            out.clone(),
            hosts.clone(),
            Duration::from_millis(300),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let good =
            "127.0.0.1 localhost\n# BEGIN clusterlab\n10.0.0.10 host1 node0\n# END clusterlab\n";
        holds(&hosts, good).await;
        // From then on the file is watched as well.
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        holds(&hosts, good).await;
        guard.abort();
    }

    #[test]
    fn nothing_is_repaired_before_a_table_was_published() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let mut out = output(dir.path(), "node0");
        assert!(!out.repair());
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "127.0.0.1 localhost\n"
        );
        out.publish(&leader_snapshot());
        assert!(!out.repair(), "already right");
        std::fs::write(&hosts, "x\n").unwrap();
        assert!(out.repair());
        // The shared copy is never written by a repair, even on the leader.
        assert!(!dir.path().join("shared-hosts").exists());
    }

    #[test]
    fn reads_do_not_count_as_changes() {
        use notify::event::{AccessKind, AccessMode, ModifyKind, RemoveKind};
        use notify::EventKind;
        assert!(!may_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(may_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(may_change(&EventKind::Remove(RemoveKind::File)));
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
