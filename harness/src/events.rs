//! What changes in a cluster, as the harness can see it, as one stream of typed, time-stamped
//! [`Event`]s: Docker's events for the cluster's containers (kill, die, start, pause, unpause,
//! network connect/disconnect), etcd watches on the node keys and the leader key, and raft
//! term/leader changes seen by polling every member's Status.
//!
//! [`snapshot`] gives the current state as events (each container's state, each node key, the
//! leader key, the raft term) and a [`Cursor`]; [`follow`] streams every change after that
//! cursor until the returned [`EventStream`] is dropped. `harness events`, the live page
//! ([`crate::view`]) and anything else that wants a timeline use the same two calls; a
//! [`Model`] folds the events into the cluster's current picture.
//!
//! Everything read from etcd is hostile: keys are bounded ([`MAX_KEY_BYTES`]) and cleaned of
//! control characters before they are shown, values are judged by
//! [`schema::trusted_node`]/[`schema::trusted_leader`] (size, JSON shape, a configured peer at
//! its planned IP, on a lease); what fails is reported as [`Change::Refused`] with the reason.
//! A key deleted while it was on a lease is reported as expired: etcd's watch does not tell an
//! expiry from a revocation (a node stopped with SIGTERM revokes its lease).

use crate::cluster::Cluster;
use crate::docker::HarnessError;
use crate::names::ClusterNames;
use crate::oracle::{MemberStatus, Role};
use bollard::query_parameters::EventsOptions;
use clusterlab_core::schema::{self, Peer};
use etcd_client::{EventType, WatchOptions};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Longest key shown; a longer one is cut (and refused).
pub const MAX_KEY_BYTES: usize = 256;
/// Longest refusal reason shown.
pub const MAX_REASON_CHARS: usize = 300;
/// How often every member's Status is asked for the raft term and leader.
pub const RAFT_POLL: Duration = Duration::from_millis(250);
/// Events buffered between the sources and a slow reader before the sources wait.
const BUFFER: usize = 1024;

/// One change (or, in a snapshot, one fact) about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A container's state at the time of the snapshot.
    State {
        node: String,
        state: String,
    },
    Killed {
        node: String,
        signal: String,
    },
    Died {
        node: String,
        exit_code: Option<i64>,
    },
    Started {
        node: String,
    },
    Paused {
        node: String,
    },
    Unpaused {
        node: String,
    },
    Connected {
        node: String,
        network: String,
    },
    Disconnected {
        node: String,
        network: String,
    },
    /// `/clusterlab/nodes/<node>` was written (or is present, in a snapshot).
    NodeKey {
        node: String,
        role: Role,
    },
    /// `/clusterlab/nodes/<node>` is gone; `expired` when it was on a lease.
    NodeKeyGone {
        node: String,
        expired: bool,
    },
    /// `/clusterlab/leader` names `node`.
    LeaderKey {
        node: String,
        term: u64,
    },
    LeaderKeyGone {
        expired: bool,
    },
    /// The highest raft term the members report, and the leader they agree on.
    RaftTerm {
        term: u64,
        leader: Option<String>,
    },
    /// A key/value read from etcd that did not pass validation.
    Refused {
        key: String,
        reason: String,
    },
    /// A source stopped working for a while (it retries).
    SourceError {
        source: String,
        error: String,
    },
}

/// A change and when the harness saw it (Docker's own time for Docker events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub change: Change,
}

impl Event {
    pub fn now(change: Change) -> Event {
        Event {
            at_ms: now_ms(),
            change,
        }
    }

    /// `HH:MM:SS.mmm` (UTC) of the event.
    pub fn clock(&self) -> String {
        clock(self.at_ms)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn clock(at_ms: u64) -> String {
    let day_ms = at_ms % 86_400_000;
    let (h, m, s, ms) = (
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
    );
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::State { node, state } => write!(f, "{node} {state}"),
            Change::Killed { node, signal } => write!(f, "{node} killed ({signal})"),
            Change::Died { node, exit_code } => match exit_code {
                Some(c) => write!(f, "{node} died (exit code {c})"),
                None => write!(f, "{node} died"),
            },
            Change::Started { node } => write!(f, "{node} started"),
            Change::Paused { node } => write!(f, "{node} paused"),
            Change::Unpaused { node } => write!(f, "{node} unpaused"),
            Change::Connected { node, network } => write!(f, "{node} connected to {network}"),
            Change::Disconnected { node, network } => {
                write!(f, "{node} disconnected from {network}")
            }
            Change::NodeKey { node, role } => write!(f, "{node}'s key: {role}"),
            Change::NodeKeyGone { node, expired } => {
                write!(
                    f,
                    "{node}'s key {}",
                    if *expired { "expired" } else { "deleted" }
                )
            }
            Change::LeaderKey { node, term } => {
                write!(f, "{} → {node} (term {term})", schema::LEADER_KEY)
            }
            Change::LeaderKeyGone { expired } => write!(
                f,
                "{} {}",
                schema::LEADER_KEY,
                if *expired { "expired" } else { "deleted" }
            ),
            Change::RaftTerm { term, leader } => match leader {
                Some(l) => write!(f, "raft term {term}: {l} leader"),
                None => write!(f, "raft term {term}: no leader"),
            },
            Change::Refused { key, reason } => write!(f, "refused {key}: {reason}"),
            Change::SourceError { source, error } => write!(f, "{source}: {error}"),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.clock(), self.change)
    }
}

/// A key from etcd made safe to print: cut to [`MAX_KEY_BYTES`], control characters replaced.
pub fn shown_key(key: &[u8]) -> String {
    let cut = &key[..key.len().min(MAX_KEY_BYTES)];
    let mut s = crate::grade::text::clean(&String::from_utf8_lossy(cut)).replace(['\n', '\t'], " ");
    if key.len() > MAX_KEY_BYTES {
        s.push('…');
    }
    s
}

fn shown_reason(reason: &str) -> String {
    let clean = crate::grade::text::clean(reason).replace(['\n', '\t'], " ");
    if clean.chars().count() > MAX_REASON_CHARS {
        let mut s: String = clean.chars().take(MAX_REASON_CHARS).collect();
        s.push('…');
        s
    } else {
        clean
    }
}

/// What one etcd key/value (or its deletion) means, judged as every node judges it.
/// `value` is None for a deletion, with `prev_lease` the lease the key was on. Keys outside
/// the node keys and the leader key give None.
pub fn judge_kv(
    key: &[u8],
    value: Option<&[u8]>,
    lease: i64,
    prev_lease: i64,
    peers: &[Peer],
) -> Option<Change> {
    let refused = |reason: String| Change::Refused {
        key: shown_key(key),
        reason: shown_reason(&reason),
    };
    if key.len() > MAX_KEY_BYTES {
        return Some(refused(format!(
            "key of {} bytes is longer than {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    let key_text = std::str::from_utf8(key).ok()?;
    if key_text == schema::LEADER_KEY {
        return Some(match value {
            None => Change::LeaderKeyGone {
                expired: prev_lease != 0,
            },
            Some(v) => match schema::trusted_leader(v, lease, peers) {
                Ok(rec) => Change::LeaderKey {
                    node: rec.name,
                    term: rec.term,
                },
                Err(e) => refused(e.to_string()),
            },
        });
    }
    let name = key_text.strip_prefix(schema::NODES_PREFIX)?;
    if !schema::is_valid_label(name) {
        return Some(refused(
            "the node name is not a valid hostname label".into(),
        ));
    }
    Some(match value {
        None => Change::NodeKeyGone {
            node: name.to_string(),
            expired: prev_lease != 0,
        },
        Some(v) => match schema::trusted_node(name, v, lease, peers) {
            Ok(m) => Change::NodeKey {
                node: m.name,
                role: m.role,
            },
            Err(e) => refused(e.to_string()),
        },
    })
}

/// The short name (`node1`, `gateway`) of one of `cluster`'s containers; None for others.
pub fn short_name(cluster: &str, container: &str) -> Option<String> {
    let rest = container
        .trim_start_matches('/')
        .strip_prefix(cluster)?
        .strip_prefix('-')?;
    (rest == "gateway" || ClusterNames::node_index(rest).is_some()).then(|| rest.to_string())
}

/// A signal number as its name (`SIGKILL`), or the number.
pub fn signal_name(number: &str) -> String {
    number
        .parse::<i32>()
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| format!("signal {}", shown_reason(number)))
}

/// What one Docker event means for the cluster's containers; None for the actions not shown.
pub fn judge_docker(
    cluster: &str,
    action: &str,
    container: &str,
    attrs: &HashMap<String, String>,
) -> Option<Change> {
    let node = short_name(cluster, container)?;
    Some(match action {
        "kill" => Change::Killed {
            node,
            signal: signal_name(attrs.get("signal").map(String::as_str).unwrap_or("")),
        },
        "die" => Change::Died {
            node,
            exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "start" => Change::Started { node },
        "pause" => Change::Paused { node },
        "unpause" => Change::Unpaused { node },
        _ => return None,
    })
}

/// Where a [`follow`] picks up after a [`snapshot`].
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The etcd revision the snapshot read (None: no member answered).
    pub revision: Option<i64>,
    /// Unix time of the snapshot, in seconds.
    pub since_s: u64,
    /// The raft term and leader of the snapshot.
    pub raft: Option<(u64, Option<String>)>,
}

/// The cluster's state now, as events, and where to follow from.
pub async fn snapshot(c: &Cluster) -> Result<(Vec<Event>, Cursor), HarnessError> {
    let since_s = now_ms() / 1000;
    let st = c.status().await?;
    let mut out = Vec::new();
    for n in &st.nodes {
        out.push(Event::now(Change::State {
            node: n.name.clone(),
            state: n.state.to_string(),
        }));
    }
    if let Some(g) = &st.gateway {
        out.push(Event::now(Change::State {
            node: "gateway".into(),
            state: g.state.to_string(),
        }));
    }
    let raft = raft_of(&st);
    let peers = peers_of(c);
    let mut revision = None;
    for n in st.nodes.iter().filter(|n| n.state.is_running()) {
        let endpoint = format!("http://{}:2379", n.ip);
        let Ok(Ok(mut client)) = tokio::time::timeout(
            Duration::from_secs(2),
            clusterlab_core::etcd::connect(&endpoint),
        )
        .await
        else {
            continue;
        };
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_serializable();
        let Ok(Ok(resp)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(schema::PREFIX, Some(opts)),
        )
        .await
        else {
            continue;
        };
        revision = resp.header().map(|h| h.revision());
        for kv in resp.kvs() {
            if let Some(ch) = judge_kv(kv.key(), Some(kv.value()), kv.lease(), 0, &peers) {
                out.push(Event::now(ch));
            }
        }
        break;
    }
    if let Some((term, leader)) = &raft {
        out.push(Event::now(Change::RaftTerm {
            term: *term,
            leader: leader.clone(),
        }));
    }
    Ok((
        out,
        Cursor {
            revision,
            since_s,
            raft,
        },
    ))
}

fn peers_of(c: &Cluster) -> Vec<Peer> {
    schema::parse_peers(&c.spec.peers()).unwrap_or_default()
}

/// The highest term the reachable members report, and the leader they agree on.
fn raft_of(st: &crate::ClusterStatus) -> Option<(u64, Option<String>)> {
    let term = st.nodes.iter().filter_map(|n| n.raft_term).max()?;
    Some((term, st.etcd_leader.clone()))
}

/// A stream of the cluster's changes; its sources stop when it is dropped.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EventStream {
    /// The next event; None if every source ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Streams every change after `from`: Docker events, etcd watch events and raft changes,
/// merged in the order they arrive.
pub fn follow(c: &Cluster, from: Cursor) -> EventStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let tasks = vec![
        tokio::spawn(docker_source(c.clone(), false, from.since_s, tx.clone())),
        tokio::spawn(docker_source(c.clone(), true, from.since_s, tx.clone())),
        tokio::spawn(etcd_source(c.clone(), from.revision, tx.clone())),
        tokio::spawn(raft_source(c.clone(), from.raft, tx)),
    ];
    EventStream { rx, tasks }
}

/// Docker's events for the cluster's containers (selected by the cluster's label) or, with
/// `network_events`, for its network (network events carry no labels: selected by name).
async fn docker_source(c: Cluster, network_events: bool, since_s: u64, tx: mpsc::Sender<Event>) {
    let cluster = c.spec.name.clone();
    let network = c.names.network();
    let mut since = since_s;
    loop {
        let mut filters = HashMap::new();
        if network_events {
            filters.insert("type".to_string(), vec!["network".to_string()]);
            filters.insert("network".to_string(), vec![network.clone()]);
        } else {
            filters.insert("type".to_string(), vec!["container".to_string()]);
            filters.insert("label".to_string(), vec![c.names.label_filter()]);
        }
        let mut events = c.docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }));
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    let change = Change::SourceError {
                        source: "docker events".into(),
                        error: shown_reason(&e.to_string()),
                    };
                    if tx.send(Event::now(change)).await.is_err() {
                        return;
                    }
                    break;
                }
            };
            let at_ms = ev
                .time_nano
                .map(|n| (n / 1_000_000) as u64)
                .unwrap_or_else(now_ms);
            since = at_ms / 1000 + 1;
            let action = ev.action.unwrap_or_default();
            let attrs = ev.actor.and_then(|a| a.attributes).unwrap_or_default();
            let change = if matches!(action.as_str(), "connect" | "disconnect") {
                // A network event: its actor is the network, `container` the container's id.
                if attrs.get("name") != Some(&network) {
                    continue;
                }
                let Some(id) = attrs.get("container") else {
                    continue;
                };
                let Ok(info) = c.docker.inspect_container(id, None).await else {
                    continue;
                };
                let Some(node) = info.name.as_deref().and_then(|n| short_name(&cluster, n)) else {
                    continue;
                };
                if action == "connect" {
                    Change::Connected {
                        node,
                        network: network.clone(),
                    }
                } else {
                    Change::Disconnected {
                        node,
                        network: network.clone(),
                    }
                }
            } else {
                let container = attrs.get("name").cloned().unwrap_or_default();
                match judge_docker(&cluster, &action, &container, &attrs) {
                    Some(ch) => ch,
                    None => continue,
                }
            };
            if tx.send(Event { at_ms, change }).await.is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn etcd_source(c: Cluster, revision: Option<i64>, tx: mpsc::Sender<Event>) {
    let peers = peers_of(&c);
    let endpoints = c.etcd_endpoints();
    // The next revision to see; 0 until a snapshot or watch told us one.
    let mut next = revision.map(|r| r + 1).unwrap_or(0);
    let mut turn = 0usize;
    let mut failed_in_a_row = 0usize;
    loop {
        if tx.is_closed() {
            return;
        }
        let endpoint = &endpoints[turn % endpoints.len()];
        turn += 1;
        let watched = watch_once(endpoint, &peers, &mut next, &tx).await;
        match watched {
            Ok(()) => failed_in_a_row = 0,
            Err(e) => {
                failed_in_a_row += 1;
                // Report once all members failed in a row, not each dead member.
                if failed_in_a_row == endpoints.len() {
                    let change = Change::SourceError {
                        source: "etcd watch".into(),
                        error: shown_reason(&e),
                    };
                    if tx.send(Event::now(change)).await.is_err() {
                        return;
                    }
                }
                if failed_in_a_row >= endpoints.len() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Watches the node keys and the leader key on one member until its stream ends.
async fn watch_once(
    endpoint: &str,
    peers: &[Peer],
    next: &mut i64,
    tx: &mpsc::Sender<Event>,
) -> Result<(), String> {
    let mut client = tokio::time::timeout(
        Duration::from_secs(2),
        clusterlab_core::etcd::connect(endpoint),
    )
    .await
    .map_err(|_| format!("{endpoint}: connect timed out"))?
    .map_err(|e| format!("{endpoint}: {e}"))?;
    let opts = || {
        let o = WatchOptions::new().with_prev_key();
        if *next > 0 {
            o.with_start_revision(*next)
        } else {
            o
        }
    };
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        client.watch(schema::NODES_PREFIX, Some(opts().with_prefix())),
    )
    .await
    .map_err(|_| format!("{endpoint}: watch timed out"))?
    .map_err(|e| format!("{endpoint}: {e}"))?;
    stream
        .watch(schema::LEADER_KEY, Some(opts()))
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    loop {
        let msg = stream
            .message()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let Some(resp) = msg else {
            return Err(format!("{endpoint}: the watch ended"));
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                *next = resp.compact_revision();
            }
            return Err(format!(
                "{endpoint}: watch cancelled: {}",
                shown_reason(resp.cancel_reason())
            ));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            *next = (*next).max(kv.mod_revision() + 1);
            let change = match ev.event_type() {
                EventType::Put => judge_kv(kv.key(), Some(kv.value()), kv.lease(), 0, peers),
                EventType::Delete => {
                    let prev_lease = ev.prev_kv().map(|p| p.lease()).unwrap_or(0);
                    judge_kv(kv.key(), None, 0, prev_lease, peers)
                }
            };
            if let Some(change) = change {
                if tx.send(Event::now(change)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(h) = resp.header() {
            *next = (*next).max(h.revision() + 1);
        }
    }
}

/// A member's Status older than this no longer counts (its next read is overdue: the member
/// is dead, cut off or starved), so a killed leader's last answer does not outlive it.
const RAFT_STALE: Duration = Duration::from_millis(800);
/// One Status read that has not answered after this long failed.
const RAFT_READ_TIMEOUT: Duration = Duration::from_millis(700);

/// Raft changes: every voter is read on its own schedule (one connection each, kept), so a
/// member that hangs (a killed leader whose address no longer answers) delays nobody else's
/// answer; the term and leader are recomputed from the fresh answers at each one.
async fn raft_source(c: Cluster, mut last: Option<(u64, Option<String>)>, tx: mpsc::Sender<Event>) {
    let (ptx, mut prx) = mpsc::channel::<(usize, Option<MemberStatus>)>(64);
    let mut pollers = tokio::task::JoinSet::new();
    for i in (0..c.spec.nodes).filter(|&i| c.spec.is_voter(i)) {
        let endpoint = format!("http://{}:2379", c.spec.node_ip(i));
        pollers.spawn(poll_member(endpoint, i, ptx.clone()));
    }
    drop(ptx);
    let mut fresh: BTreeMap<usize, (tokio::time::Instant, MemberStatus)> = BTreeMap::new();
    let mut tick = tokio::time::interval(RAFT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = prx.recv() => match got {
                None => return,
                Some((i, Some(st))) => {
                    fresh.insert(i, (tokio::time::Instant::now(), st));
                }
                Some((i, None)) => {
                    fresh.remove(&i);
                }
            },
            _ = tick.tick() => {
                if tx.is_closed() {
                    return;
                }
            }
        }
        fresh.retain(|_, (at, _)| at.elapsed() < RAFT_STALE);
        let Some(now) = raft_of_members(&fresh) else {
            continue;
        };
        if last.as_ref() != Some(&now) {
            let change = Change::RaftTerm {
                term: now.0,
                leader: now.1.clone(),
            };
            last = Some(now);
            if tx.send(Event::now(change)).await.is_err() {
                return;
            }
        }
    }
}

/// The highest term among the members' answers and the leader they give (by
/// [`crate::oracle::raft_leader`]); None when no member answered.
fn raft_of_members(
    fresh: &BTreeMap<usize, (tokio::time::Instant, MemberStatus)>,
) -> Option<(u64, Option<String>)> {
    let term = fresh.values().map(|(_, s)| s.term).max()?;
    let probes: Vec<(String, Result<MemberStatus, String>)> = fresh
        .iter()
        .map(|(i, (_, s))| (ClusterNames::node_name(*i), Ok(*s)))
        .collect();
    let leader = crate::oracle::raft_leader(&probes).ok().cloned();
    Some((term, leader))
}

/// Reads one member's Status every [`RAFT_POLL`] over one kept connection (made again after a
/// failure) and sends each answer, or None for a failed read, until the receiver is gone.
async fn poll_member(endpoint: String, i: usize, tx: mpsc::Sender<(usize, Option<MemberStatus>)>) {
    let mut tick = tokio::time::interval(RAFT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<etcd_client::Client> = None;
    loop {
        tick.tick().await;
        let read = tokio::time::timeout(RAFT_READ_TIMEOUT, async {
            let cl = match client.as_mut() {
                Some(cl) => cl,
                None => client.insert(clusterlab_core::etcd::connect(&endpoint).await.ok()?),
            };
            let st = cl.status().await.ok()?;
            Some(MemberStatus {
                member_id: st.header()?.member_id(),
                leader_id: st.leader(),
                term: st.raft_term(),
            })
        })
        .await
        .ok()
        .flatten();
        if read.is_none() {
            client = None;
        }
        if tx.send((i, read)).await.is_err() {
            return;
        }
    }
}

/// One node in a [`Model`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeModel {
    /// The container's state (`running`, `exited`, `paused`, …).
    pub state: String,
    /// The role in its node key; None while it has none.
    pub key_role: Option<Role>,
}

/// The cluster's picture folded from events: what the live page draws.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub nodes: BTreeMap<String, NodeModel>,
    /// Who `/clusterlab/leader` names.
    pub leader_key: Option<String>,
    pub raft_term: Option<u64>,
    /// The raft leader the members agree on.
    pub raft_leader: Option<String>,
}

impl Model {
    /// Takes one event into the picture.
    pub fn apply(&mut self, change: &Change) {
        fn entry<'m>(nodes: &'m mut BTreeMap<String, NodeModel>, n: &str) -> &'m mut NodeModel {
            nodes.entry(n.to_string()).or_default()
        }
        let nodes = &mut self.nodes;
        match change {
            Change::State { node: n, state } => entry(nodes, n).state = state.clone(),
            Change::Died { node: n, .. } => entry(nodes, n).state = "exited".into(),
            Change::Started { node: n } | Change::Unpaused { node: n } => {
                entry(nodes, n).state = "running".into()
            }
            Change::Paused { node: n } => entry(nodes, n).state = "paused".into(),
            Change::NodeKey { node: n, role } => entry(nodes, n).key_role = Some(*role),
            Change::NodeKeyGone { node: n, .. } => entry(nodes, n).key_role = None,
            Change::LeaderKey { node: n, .. } => self.leader_key = Some(n.clone()),
            Change::LeaderKeyGone { .. } => self.leader_key = None,
            Change::RaftTerm { term, leader } => {
                self.raft_term = Some(*term);
                self.raft_leader = leader.clone();
            }
            Change::Killed { .. }
            | Change::Connected { .. }
            | Change::Disconnected { .. }
            | Change::Refused { .. }
            | Change::SourceError { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_changes_come_from_the_fresh_answers() {
        use MemberStatus;
        let at = tokio::time::Instant::now();
        let st = |member_id, leader_id, term| {
            (
                at,
                MemberStatus {
                    member_id,
                    leader_id,
                    term,
                },
            )
        };
        let mut fresh = BTreeMap::new();
        assert_eq!(raft_of_members(&fresh), None);
        // Before the kill: node0 leads term 2.
        fresh.insert(0, st(10, 10, 2));
        fresh.insert(1, st(11, 10, 2));
        fresh.insert(2, st(12, 10, 2));
        assert_eq!(raft_of_members(&fresh), Some((2, Some("node0".into()))));
        // node0's answers stop (it is dropped as stale); the others know no leader yet.
        fresh.remove(&0);
        fresh.insert(1, st(11, 0, 2));
        assert_eq!(raft_of_members(&fresh), Some((2, None)));
        // node1 is elected in term 3; an old answer of node0 still held would be outvoted.
        fresh.insert(0, st(10, 10, 2));
        fresh.insert(1, st(11, 11, 3));
        fresh.insert(2, st(12, 11, 3));
        assert_eq!(raft_of_members(&fresh), Some((3, Some("node1".into()))));
    }

    fn peers() -> Vec<Peer> {
        schema::parse_peers("node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12").unwrap()
    }

    fn node_value(name: &str, ip: &str, role: &str) -> Vec<u8> {
        format!(r#"{{"name":"{name}","ip":"{ip}","role":"{role}","member_id":"a","since":1}}"#)
            .into_bytes()
    }

    #[test]
    fn lines_read_as_the_issue_shows_them() {
        // 12:01:03.120 UTC on some day.
        let at_ms = 1_764_000_000_000 - 1_764_000_000_000 % 86_400_000 + 43_263_120;
        let e = |change| Event { at_ms, change };
        assert_eq!(
            e(Change::Killed {
                node: "node0".into(),
                signal: signal_name("9")
            })
            .to_string(),
            "12:01:03.120 node0 killed (SIGKILL)"
        );
        assert_eq!(
            e(Change::RaftTerm {
                term: 3,
                leader: Some("node2".into())
            })
            .to_string(),
            "12:01:03.120 raft term 3: node2 leader"
        );
        assert_eq!(
            e(Change::NodeKeyGone {
                node: "node0".into(),
                expired: true
            })
            .change
            .to_string(),
            "node0's key expired"
        );
        assert_eq!(
            Change::LeaderKey {
                node: "node2".into(),
                term: 3
            }
            .to_string(),
            "/clusterlab/leader → node2 (term 3)"
        );
    }

    #[test]
    fn etcd_values_are_judged_as_nodes_judge_them() {
        let p = peers();
        let good = node_value("node1", "10.77.0.11", "leader");
        assert_eq!(
            judge_kv(b"/clusterlab/nodes/node1", Some(&good), 7, 0, &p),
            Some(Change::NodeKey {
                node: "node1".into(),
                role: Role::Leader
            })
        );
        // Not on a lease, a stranger, a wrong IP: refused with the reason.
        for (key, value, lease) in [
            (&b"/clusterlab/nodes/node1"[..], good.clone(), 0),
            (
                b"/clusterlab/nodes/node9",
                node_value("node9", "10.77.0.19", "leader"),
                7,
            ),
            (
                b"/clusterlab/nodes/node1",
                node_value("node1", "10.77.0.99", "leader"),
                7,
            ),
            (b"/clusterlab/nodes/node1", vec![b'x'; 10_000], 7),
        ] {
            match judge_kv(key, Some(&value), lease, 0, &p) {
                Some(Change::Refused { key, reason }) => {
                    assert!(key.starts_with("/clusterlab/nodes/"), "{key}");
                    assert!(!reason.is_empty() && reason.chars().count() <= MAX_REASON_CHARS + 1);
                }
                other => panic!("{other:?}"),
            }
        }
        // A hostile key: bounded and cleaned before it is shown.
        let mut long = b"/clusterlab/nodes/\x1b[2Jx".to_vec();
        long.extend(vec![b'a'; 1000]);
        match judge_kv(&long, Some(&good), 7, 0, &p) {
            Some(Change::Refused { key, .. }) => {
                assert!(key.len() <= MAX_KEY_BYTES + 4, "{}", key.len());
                assert!(!key.contains('\x1b'), "{key:?}");
            }
            other => panic!("{other:?}"),
        }
        match judge_kv(b"/clusterlab/nodes/\x1b[2J", Some(&good), 7, 0, &p) {
            Some(Change::Refused { key, .. }) => assert!(!key.contains('\x1b'), "{key:?}"),
            other => panic!("{other:?}"),
        }
        // Deletions: expired when on a lease.
        assert_eq!(
            judge_kv(b"/clusterlab/nodes/node2", None, 0, 9, &p),
            Some(Change::NodeKeyGone {
                node: "node2".into(),
                expired: true
            })
        );
        assert_eq!(
            judge_kv(b"/clusterlab/leader", None, 0, 0, &p),
            Some(Change::LeaderKeyGone { expired: false })
        );
        let leader = br#"{"name":"node2","ip":"10.77.0.12","member_id":"b","term":4}"#;
        assert_eq!(
            judge_kv(b"/clusterlab/leader", Some(leader), 7, 0, &p),
            Some(Change::LeaderKey {
                node: "node2".into(),
                term: 4
            })
        );
        assert_eq!(judge_kv(b"/clusterlab/other", Some(b"x"), 0, 0, &p), None);
    }

    #[test]
    fn docker_events_name_the_node() {
        let attrs: HashMap<String, String> = [("signal".to_string(), "9".to_string())].into();
        assert_eq!(
            judge_docker("lab", "kill", "lab-node0", &attrs),
            Some(Change::Killed {
                node: "node0".into(),
                signal: "SIGKILL".into()
            })
        );
        let attrs: HashMap<String, String> = [("exitCode".to_string(), "137".to_string())].into();
        assert_eq!(
            judge_docker("lab", "die", "lab-gateway", &attrs),
            Some(Change::Died {
                node: "gateway".into(),
                exit_code: Some(137)
            })
        );
        assert_eq!(judge_docker("lab", "kill", "labx-node0", &attrs), None);
        assert_eq!(judge_docker("lab", "exec_start", "lab-node0", &attrs), None);
        assert_eq!(short_name("lab", "/lab-node12").as_deref(), Some("node12"));
        assert_eq!(short_name("lab", "lab-net"), None);
        assert_eq!(signal_name("15"), "SIGTERM");
        assert_eq!(signal_name("x\x1b[2J\x07"), "signal x\u{fffd}");
    }

    #[test]
    fn the_model_follows_a_failover() {
        let mut m = Model::default();
        for ch in [
            Change::State {
                node: "node0".into(),
                state: "running".into(),
            },
            Change::LeaderKey {
                node: "node0".into(),
                term: 2,
            },
            Change::Killed {
                node: "node0".into(),
                signal: "SIGKILL".into(),
            },
            Change::Died {
                node: "node0".into(),
                exit_code: Some(137),
            },
            Change::RaftTerm {
                term: 3,
                leader: Some("node1".into()),
            },
            Change::LeaderKey {
                node: "node1".into(),
                term: 3,
            },
        ] {
            m.apply(&ch);
        }
        assert_eq!(m.nodes["node0"].state, "exited");
        assert_eq!(m.leader_key.as_deref(), Some("node1"));
        assert_eq!(m.raft_leader.as_deref(), Some("node1"));
        assert_eq!(m.raft_term, Some(3));
    }
}
