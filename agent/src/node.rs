//! The node's life: etcd child, lease-backed keys, raft-leadership tracking, health API and
//! plugins, all stopped in order on shutdown.

use crate::keys::{role_of, Keys, LeaderKeyAction, RoleChange, SeenLeaderKey, Writer};
use crate::{detect, etcd, health, supervise};
use clusterlab_core::config::Config;
use clusterlab_core::schema::{self, LeaderRecord, NodeRecord, Peer, Role};
use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, StatusResponse, Txn,
    TxnOp,
};
use serde::Serialize;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Fatal errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("binding the health API on port {port}: {source}")]
    Health { port: u16, source: std::io::Error },
    #[error("etcd for {node} exited unexpectedly: {status}")]
    EtcdDied { node: String, status: String },
}

/// What the agent knows about its node right now; published to the health API and to the
/// leader service through a watch channel.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub ip: String,
    pub member_id: String,
    /// The role from the last successful Status of the node's own member.
    pub role: Option<Role>,
    /// The raft leader's member id as this member last reported it.
    pub raft_leader: Option<String>,
    pub raft_term: u64,
    pub lease_id: Option<String>,
    /// Whether the last Status call succeeded.
    pub etcd_ok: bool,
    pub last_error: Option<String>,
    /// When this member last reported itself as leader (not serialized).
    #[serde(skip)]
    pub leader_confirmed_at: Option<Instant>,
    /// When this node last saw itself cut off from etcd's quorum: its own member reporting no
    /// raft leader, or (a node without a member) no voter answering (not serialized).
    #[serde(skip)]
    pub cut_off_at: Option<Instant>,
}

impl NodeStatus {
    pub(crate) fn new(config: &Config, member_id: u64) -> Self {
        NodeStatus {
            name: config.name.clone(),
            ip: config.ip.clone(),
            member_id: schema::member_id_hex(member_id),
            role: None,
            raft_leader: None,
            raft_term: 0,
            lease_id: None,
            etcd_ok: false,
            last_error: None,
            leader_confirmed_at: None,
            cut_off_at: None,
        }
    }

    /// True when the last Status said leader and it is no older than `within`.
    pub fn is_leader_within(&self, within: Duration) -> bool {
        self.is_leader_at(Instant::now(), within)
    }

    /// [`NodeStatus::is_leader_within`] as seen at `now`; callers with their own clock (the
    /// leader service under a paused test clock) pass it in.
    pub fn is_leader_at(&self, now: Instant, within: Duration) -> bool {
        self.role == Some(Role::Leader)
            && self
                .leader_confirmed_at
                .is_some_and(|t| now.saturating_duration_since(t) <= within)
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the node until `shutdown` resolves or etcd dies.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let raft_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let (mut etcd_child, client, member_id) = match etcd::startup(&config) {
        etcd::Startup::Voter { .. } => {
            tracing::info!(node = %config.name, ip = %config.ip, peers = %config.peers, "starting etcd");
            let mut child = etcd::spawn_watched(&config, raft_changed.clone())?;
            let (client, member_id) = etcd::wait_ready(&config, &mut child).await?;
            tracing::info!(member_id = %schema::member_id_hex(member_id), "etcd is answering");
            (Some(child), client, Some(member_id))
        }
        etcd::Startup::Member { endpoints } => {
            tracing::info!(node = %config.name, ip = %config.ip, voters = %endpoints.join(","), "member: no etcd here, reaching the voters");
            let client = etcd::wait_voters(&endpoints).await;
            tracing::info!("a voter is answering");
            (None, client, None)
        }
    };

    let mut first = NodeStatus::new(&config, member_id.unwrap_or(0));
    if member_id.is_none() {
        first.member_id = String::new();
    }
    let (status_tx, status_rx) = watch::channel(first);
    let stop = CancellationToken::new();
    let plugin_health = supervise::PluginHealth::new(&config.plugins);
    let metrics = crate::metrics::AgentMetrics::new();

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.health_port))
        .await
        .map_err(|source| AgentError::Health {
            port: config.health_port,
            source,
        })?;
    // A leadership older than a few polls does not let this agent remove anyone.
    let detect_settings = detect::Settings {
        me: config.name.clone(),
        peers: config.peer_list(),
        port: config.health_port,
        probe_port: detect::PROBE_PORT,
        leader_fresh: Duration::from_millis(config.leader_poll_ms * 3).max(Duration::from_secs(1)),
    };
    let (detector, reports) = detect::Handle::new(&detect_settings, status_rx.clone());
    let health_task = tokio::spawn(health::serve(
        listener,
        status_rx.clone(),
        plugin_health.clone(),
        Duration::from_secs(config.lease_ttl_s),
        detect::routes(detector.clone()),
        metrics.clone(),
        stop.clone(),
    ));
    let detect_task = tokio::spawn(detect::run(
        detect_settings,
        client.clone(),
        status_rx.clone(),
        reports,
        detector.counters.clone(),
        stop.clone(),
    ));
    let (lost_tx, lost_rx) = mpsc::channel::<i64>(4);
    let node_key_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let own_key_task = tokio::spawn(detect::watch_own_key(
        config.name.clone(),
        client.clone(),
        status_rx.clone(),
        detect::OwnKeySignals {
            lost: lost_tx.clone(),
            changed: node_key_changed.clone(),
        },
        detector.counters.clone(),
        stop.clone(),
    ));
    let plugins_task = tokio::spawn(supervise::run_all(
        config.plugins.clone(),
        PLUGIN_GRACE,
        stop.clone(),
        plugin_health,
    ));
    let leader_task = tokio::spawn(crate::leader_service::run(
        config.clone(),
        status_rx.clone(),
        stop.clone(),
    ));
    let keys_task = tokio::spawn(maintain_keys(
        config.clone(),
        client,
        member_id,
        status_tx,
        KeySignals {
            lost: (lost_tx, lost_rx),
            raft_changed,
            node_key_changed,
        },
        metrics,
        stop.clone(),
    ));

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested");
            Ok(())
        }
        status = wait_child(etcd_child.as_mut()) => Err(AgentError::EtcdDied {
            node: config.name.clone(),
            status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
        }),
    };
    stop.cancel();
    let _ = plugins_task.await;
    let _ = leader_task.await;
    let _ = detect_task.await;
    let _ = own_key_task.await;
    let _ = keys_task.await; // revokes the lease while etcd still runs
    let _ = health_task.await;
    if let Some(child) = etcd_child.as_mut() {
        supervise::terminate("etcd", child, ETCD_GRACE).await;
    }
    result
}

/// Waits for the etcd child to exit; never resolves on a member, which has none.
async fn wait_child(
    child: Option<&mut tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// While nothing changes, the key loop reads Status this many times less often than
/// `leader_poll_ms` (at least every [`IDLE_POLL_MIN`]): an idle node's agent then costs
/// next to nothing. A raft change in etcd's log, a failed call, a role change or any key
/// write due brings the `leader_poll_ms` pace back for [`FAST_WINDOW_ELECTIONS`] election
/// timeouts (at least [`FAST_WINDOW_MIN`]).
pub const IDLE_POLL_FACTOR: u32 = 5;
/// Shortest idle poll period.
pub const IDLE_POLL_MIN: Duration = Duration::from_secs(1);
/// A member's (a node without an etcd member) idle poll period: it has no raft role to
/// notice, so at 25 nodes its 20 members' agents do not ask the 5 voters 20 times a second.
pub const MEMBER_IDLE_POLL: Duration = Duration::from_secs(5);
/// Election timeouts the fast pace lasts after something changed.
pub const FAST_WINDOW_ELECTIONS: u32 = 3;
/// Shortest fast window.
pub const FAST_WINDOW_MIN: Duration = Duration::from_secs(3);

/// How long the key loop sleeps before its next Status read.
fn next_poll(
    now: bool,
    fast_until: tokio::time::Instant,
    fast: Duration,
    idle: Duration,
) -> Duration {
    if now {
        Duration::ZERO
    } else if tokio::time::Instant::now() < fast_until {
        fast
    } else {
        idle
    }
}

/// The key loop's fast pace, idle pace and fast window, from the configuration.
pub fn poll_paces(config: &Config) -> (Duration, Duration, Duration) {
    let fast = Duration::from_millis(config.leader_poll_ms.max(1));
    let idle = (fast * IDLE_POLL_FACTOR).max(IDLE_POLL_MIN);
    let window = (Duration::from_millis(config.etcd.election_ms) * FAST_WINDOW_ELECTIONS)
        .max(FAST_WINDOW_MIN);
    (fast, idle, window)
}

/// Plugins get this long between SIGTERM and SIGKILL when the node shuts down. They keep no
/// state that needs more than finishing a write in progress (hostsgen's hosts file, sshkeys'
/// atomic renames), and the agent still has its lease to revoke and etcd to stop after them.
pub const PLUGIN_GRACE: Duration = Duration::from_secs(3);

/// etcd gets this long between SIGTERM and SIGKILL at shutdown, to close its WAL cleanly.
pub const ETCD_GRACE: Duration = Duration::from_secs(5);

/// Every etcd call of the key loop (Status, lease grant, keep-alive, key reads and writes,
/// revoke) fails after this long.
///
/// The loop polls every `leader_poll_ms` (200 ms by default); a member that stops answering
/// must not hold it much longer than that, so a call that hangs counts as failed after 2 s and
/// the next poll asks again. 2 s is twice etcd's default election timeout: a healthy member
/// answers far sooner, even during an election. With the default 10 s lease TTL, renewed
/// every 3.3 s ([`renew_every`]), a renewal that times out still leaves two more tries before
/// the lease would expire.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The lease is renewed this many times per TTL, so two renewals in a row may fail before it
/// expires.
pub const RENEWALS_PER_TTL: u32 = 3;

/// Shortest interval between two renewals, whatever the TTL.
pub const MIN_RENEW_EVERY: Duration = Duration::from_millis(500);

/// How often lease `ttl_s` is renewed.
pub fn renew_every(ttl_s: u64) -> Duration {
    Duration::from_millis(ttl_s * 1000 / u64::from(RENEWALS_PER_TTL)).max(MIN_RENEW_EVERY)
}

/// The etcd call the key loop was making.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    ReadStatus,
    GrantLease,
    OpenKeepAlive,
    SendKeepAlive,
    ReadKeepAlive,
    ReadLeaderKey,
    ReadNodeKey,
    Write(String),
    RevokeLease,
}

impl std::fmt::Display for KeyOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOp::ReadStatus => f.write_str("reading member status"),
            KeyOp::GrantLease => f.write_str("granting lease"),
            KeyOp::OpenKeepAlive => f.write_str("opening keep-alive"),
            KeyOp::SendKeepAlive => f.write_str("sending keep-alive"),
            KeyOp::ReadKeepAlive => f.write_str("reading keep-alive"),
            KeyOp::ReadLeaderKey => f.write_str("reading leader key"),
            KeyOp::ReadNodeKey => f.write_str("reading node key"),
            KeyOp::Write(key) => write!(f, "writing {key}"),
            KeyOp::RevokeLease => f.write_str("revoking lease"),
        }
    }
}

/// Why one step of the key loop failed; the loop logs it and tries again at the next poll.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoopError {
    #[error("{op}: {source}")]
    Etcd {
        op: KeyOp,
        source: etcd_client::Error,
    },
    #[error("{op}: timed out after {} s", OP_TIMEOUT.as_secs())]
    Timeout { op: KeyOp },
    #[error("keep-alive stream closed")]
    KeepAliveClosed,
    #[error("encoding the value of {key}: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
}

/// The node's current lease; its keep-alive runs in a task of its own so that a slow or
/// dead etcd never delays the leadership poll.
struct Lease {
    id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

async fn timed<T>(
    op: KeyOp,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, KeyLoopError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(KeyLoopError::Etcd { op, source }),
        Err(_) => Err(KeyLoopError::Timeout { op }),
    }
}

async fn grant(
    client: &mut Client,
    ttl: u64,
    lost: mpsc::Sender<i64>,
    metrics: crate::metrics::AgentMetrics,
) -> Result<Lease, KeyLoopError> {
    let resp = timed(KeyOp::GrantLease, client.lease_grant(ttl as i64, None)).await?;
    let id = resp.id();
    let keeper = tokio::spawn(keep_lease(client.clone(), id, ttl, lost, metrics));
    Ok(Lease { id, keeper })
}

/// Renews lease `id` every [`renew_every`] until it expires or cannot be renewed for a whole
/// TTL; then reports it on `lost` and ends.
async fn keep_lease(
    mut client: Client,
    id: i64,
    ttl: u64,
    lost: mpsc::Sender<i64>,
    metrics: crate::metrics::AgentMetrics,
) {
    let period = renew_every(ttl);
    let mut last_ok = Instant::now();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        if stream.is_none() {
            match timed(KeyOp::OpenKeepAlive, client.lease_keep_alive(id)).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    tracing::warn!(lease = format!("{id:x}"), error = %e, "keep-alive failed")
                }
            }
        }
        if let Some((keeper, replies)) = stream.as_mut() {
            let sent = Instant::now();
            let renewed = keep_alive(keeper, replies).await;
            metrics.observe_keepalive(sent.elapsed());
            match renewed {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!(
                        lease = format!("{id:x}"),
                        "lease expired; granting a new one"
                    );
                    let _ = lost.send(id).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = format!("{id:x}"), error = %e, "keep-alive failed");
                    stream = None;
                }
            }
        }
        if last_ok.elapsed() > Duration::from_secs(ttl) {
            tracing::warn!(
                lease = format!("{id:x}"),
                "lease not renewed for a whole TTL; granting a new one"
            );
            let _ = lost.send(id).await;
            return;
        }
        tokio::time::sleep(period).await;
    }
}

/// Publishes a successful Status into the node's status.
fn record_status(status_tx: &watch::Sender<NodeStatus>, st: &StatusResponse, role: Role) {
    status_tx.send_modify(|s| {
        s.role = Some(role);
        s.raft_leader = Some(schema::member_id_hex(st.leader()));
        s.raft_term = st.raft_term();
        s.etcd_ok = true;
        s.last_error = None;
        if role == Role::Leader {
            s.leader_confirmed_at = Some(Instant::now());
        }
        if st.leader() == 0 {
            s.cut_off_at = Some(Instant::now());
        }
    });
}

/// What wakes the key loop besides its own pace: a lease found lost (by keep-alive or by the
/// own-key watch; the lease id), a raft change seen in etcd's log, and a write to the node
/// key seen by the own-key watch (read it back now: somebody may have overwritten it).
struct KeySignals {
    lost: (mpsc::Sender<i64>, mpsc::Receiver<i64>),
    raft_changed: std::sync::Arc<tokio::sync::Notify>,
    node_key_changed: std::sync::Arc<tokio::sync::Notify>,
}

/// Keeps the node key and, while leading, the leader key; publishes [`NodeStatus`]. The
/// decisions are [`Keys`]'s; this loop only makes the etcd calls and reports what worked.
async fn maintain_keys(
    config: Config,
    mut client: Client,
    member_id: Option<u64>,
    status_tx: watch::Sender<NodeStatus>,
    signals: KeySignals,
    metrics: crate::metrics::AgentMetrics,
    stop: CancellationToken,
) {
    let KeySignals {
        lost: (lost_tx, mut lost_rx),
        raft_changed,
        node_key_changed,
    } = signals;
    let ttl = config.lease_ttl_s;
    let (fast, idle, window) = poll_paces(&config);
    // A member never leads: its Status read only shows that a voter still answers, which the
    // lease keep-alive shows as well.
    let idle = if member_id.is_none() {
        idle.max(MEMBER_IDLE_POLL)
    } else {
        idle
    };
    let mut fast_until = tokio::time::Instant::now() + window;
    let mut poll_now = true;
    let mut lease: Option<Lease> = None;
    let mut keys =
        Keys::new(now_s()).with_election_timeout(Duration::from_millis(config.etcd.election_ms));
    // A member has no etcd member id: its record carries "" and it never leads.
    let my_id = member_id.map(schema::member_id_hex).unwrap_or_default();
    let peers = config.peer_list();

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(id) = lost_rx.recv() => {
                if keys.lease_lost(id) {
                    // Lost by the own-key watch: its keeper would only report it again.
                    if let Some(l) = lease.take() {
                        l.keeper.abort();
                    }
                    status_tx.send_modify(|s| s.lease_id = None);
                }
            }
            _ = raft_changed.notified() => {
                fast_until = tokio::time::Instant::now() + window;
                poll_now = true;
            }
            _ = node_key_changed.notified() => {
                keys.node_key_changed();
                poll_now = true;
            }
            _ = tokio::time::sleep(next_poll(poll_now, fast_until, fast, idle)) => {
                poll_now = false;
                let asked = Instant::now();
                let st = timed(KeyOp::ReadStatus, client.status()).await;
                metrics.observe_status(asked.elapsed());
                let st = match st {
                    Ok(st) => st,
                    Err(e) => {
                        fast_until = tokio::time::Instant::now() + window;
                        status_tx.send_modify(|s| {
                            s.etcd_ok = false;
                            s.last_error = Some(e.to_string());
                            // A voter's own member answers even when cut off (and then
                            // reports no leader); a node without one asks the voters.
                            if member_id.is_none() {
                                s.cut_off_at = Some(Instant::now());
                            }
                        });
                        continue;
                    }
                };
                let role = match member_id {
                    Some(id) => role_of(st.leader(), id),
                    None => Role::Follower,
                };
                record_status(&status_tx, &st, role);
                let (change, plan) = keys.poll(role, tokio::time::Instant::now(), now_s());
                if change.is_some() || plan.grant_lease || plan.put_node_key.is_some() {
                    fast_until = tokio::time::Instant::now() + window;
                }
                metrics.role(role, matches!(change, Some(RoleChange { from: Some(_), .. })));
                if let Some(RoleChange { from: Some(from), to }) = change {
                    tracing::info!(from = ?Some(from), to = %to, term = st.raft_term(), "role changed");
                }
                if plan.grant_lease {
                    match grant(&mut client, ttl, lost_tx.clone(), metrics.clone()).await {
                        Ok(l) => {
                            tracing::info!(lease = format!("{:x}", l.id), ttl, "lease granted");
                            status_tx.send_modify(|s| s.lease_id = Some(format!("{:x}", l.id)));
                            keys.lease_granted(l.id);
                            lease = Some(l);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot grant lease yet");
                            continue;
                        }
                    }
                }
                let Some(lease_id) = keys.lease() else { continue };
                if let Some(w) = plan.put_node_key {
                    let rec = NodeRecord {
                        name: config.name.clone(),
                        ip: config.ip.clone(),
                        role: w.role,
                        member_id: my_id.clone(),
                        since: w.since,
                    };
                    match put(&mut client, &schema::node_key(&config.name), &rec, lease_id).await {
                        Ok(()) => keys.node_key_written(w.role, tokio::time::Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "cannot write node key"),
                    }
                }
                if let Some(w) = plan.check_node_key {
                    let rec = NodeRecord {
                        name: config.name.clone(),
                        ip: config.ip.clone(),
                        role: w.role,
                        member_id: my_id.clone(),
                        since: w.since,
                    };
                    match ensure_node_key(&mut client, &rec, lease_id).await {
                        Ok(()) => keys.node_key_written(w.role, tokio::time::Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "cannot check node key"),
                    }
                }
                if plan.ensure_leader_key {
                    let me = Writer {
                        name: &config.name,
                        member_id: &my_id,
                        lease: lease_id,
                        term: st.raft_term(),
                    };
                    match ensure_leader_key(&mut client, &config, &peers, &mut keys, me).await {
                        Ok(true) => keys.leader_key_confirmed(tokio::time::Instant::now()),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot write leader key"),
                    }
                }
            }
        }
    }
    if let Some(l) = lease {
        l.keeper.abort();
        match timed(KeyOp::RevokeLease, client.lease_revoke(l.id)).await {
            Ok(_) => tracing::info!(lease = format!("{:x}", l.id), "lease revoked"),
            Err(e) => tracing::warn!(error = %e, "could not revoke lease; keys expire with it"),
        }
    }
}

async fn keep_alive(
    keeper: &mut LeaseKeeper,
    replies: &mut LeaseKeepAliveStream,
) -> Result<bool, KeyLoopError> {
    timed(KeyOp::SendKeepAlive, keeper.keep_alive()).await?;
    match timed(KeyOp::ReadKeepAlive, replies.message()).await? {
        Some(resp) => Ok(resp.ttl() > 0),
        None => Err(KeyLoopError::KeepAliveClosed),
    }
}

async fn put<T: Serialize>(
    client: &mut Client,
    key: &str,
    value: &T,
    lease: i64,
) -> Result<(), KeyLoopError> {
    let body = serde_json::to_string(value).map_err(|source| KeyLoopError::Encode {
        key: key.to_string(),
        source,
    })?;
    timed(
        KeyOp::Write(key.to_string()),
        client.put(key, body, Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .map(|_| ())
}

/// Reads the node key back and rewrites it unless it holds `rec` on `lease`: someone else's
/// write over it (a hand-made `etcdctl put`) would otherwise hide this node from every
/// reader until its next role change.
async fn ensure_node_key(
    client: &mut Client,
    rec: &NodeRecord,
    lease: i64,
) -> Result<(), KeyLoopError> {
    let key = schema::node_key(&rec.name);
    let resp = timed(KeyOp::ReadNodeKey, client.get(key.as_str(), None)).await?;
    let intact = resp.kvs().first().is_some_and(|kv| {
        kv.lease() == lease
            && serde_json::from_slice::<NodeRecord>(kv.value()).is_ok_and(|r| r == *rec)
    });
    if !intact {
        put(client, &key, rec, lease).await?;
        tracing::warn!(key = %key, "the node key was missing or not this node's; rewrote it");
    }
    Ok(())
}

/// Reads the leader key and does what [`Keys::leader_key_action`] decides: nothing when it
/// is this node's record on its lease and term; nothing either when it is a newer leader's
/// (higher term); else this node's record, written in one transaction that succeeds only
/// while the key is still at the revision read, so a newer leader's concurrent write is never
/// overwritten. Returns whether the check is done until the next recheck; false when the
/// transaction lost to a concurrent write (checked again at the next poll).
async fn ensure_leader_key(
    client: &mut Client,
    config: &Config,
    peers: &[Peer],
    keys: &mut Keys,
    me: Writer<'_>,
) -> Result<bool, KeyLoopError> {
    let resp = timed(KeyOp::ReadLeaderKey, client.get(schema::LEADER_KEY, None)).await?;
    let seen = resp.kvs().first().map(|kv| SeenLeaderKey {
        value: kv.value().to_vec(),
        lease: kv.lease(),
        mod_revision: kv.mod_revision(),
    });
    let (expect, reason) =
        match keys.leader_key_action(me, seen.as_ref(), peers, tokio::time::Instant::now()) {
            LeaderKeyAction::Keep => return Ok(true),
            LeaderKeyAction::Yield { name, term } => {
                tracing::info!(
                    leader = %name,
                    their_term = term,
                    our_term = me.term,
                    "the leader key names a leader of a newer term; leaving it"
                );
                return Ok(true);
            }
            LeaderKeyAction::Write {
                expect_mod_revision,
                reason,
            } => (expect_mod_revision, reason),
        };
    let rec = LeaderRecord {
        name: config.name.clone(),
        ip: config.ip.clone(),
        member_id: me.member_id.to_string(),
        term: me.term,
    };
    let body = serde_json::to_string(&rec).map_err(|source| KeyLoopError::Encode {
        key: schema::LEADER_KEY.to_string(),
        source,
    })?;
    // A missing key has mod revision 0 in a comparison, so one compare covers both cases.
    let txn = Txn::new()
        .when([Compare::mod_revision(
            schema::LEADER_KEY,
            CompareOp::Equal,
            expect,
        )])
        .and_then([TxnOp::put(
            schema::LEADER_KEY,
            body,
            Some(PutOptions::new().with_lease(me.lease)),
        )]);
    let resp = timed(
        KeyOp::Write(schema::LEADER_KEY.to_string()),
        client.txn(txn),
    )
    .await?;
    if resp.succeeded() {
        tracing::info!(node = %config.name, term = me.term, because = %reason, "wrote leader key");
        Ok(true)
    } else {
        tracing::info!(
            expected_revision = expect,
            "the leader key changed while it was checked; not overwriting, checking again"
        );
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_renewed_three_times_per_ttl() {
        assert_eq!(renew_every(10), Duration::from_millis(3333));
        assert_eq!(renew_every(2), Duration::from_millis(666));
        assert_eq!(renew_every(1), MIN_RENEW_EVERY);
        assert_eq!(renew_every(0), MIN_RENEW_EVERY);
    }

    #[test]
    fn idle_polls_are_five_times_slower_and_changes_bring_the_fast_pace_back() {
        let config = Config::default();
        let (fast, idle, window) = poll_paces(&config);
        assert_eq!(fast, Duration::from_millis(200));
        assert_eq!(idle, Duration::from_secs(1));
        assert_eq!(window, Duration::from_secs(3));
        let later = tokio::time::Instant::now() + Duration::from_secs(60);
        let past = tokio::time::Instant::now() - Duration::from_millis(1);
        assert_eq!(next_poll(true, later, fast, idle), Duration::ZERO);
        assert_eq!(next_poll(false, later, fast, idle), fast);
        assert_eq!(next_poll(false, past, fast, idle), idle);
    }

    #[test]
    fn loop_errors_say_what_was_being_done() {
        let e = KeyLoopError::Timeout {
            op: KeyOp::Write(schema::node_key("node1")),
        };
        assert_eq!(
            e.to_string(),
            "writing /clusterlab/nodes/node1: timed out after 2 s"
        );
        let e = KeyLoopError::Timeout {
            op: KeyOp::ReadStatus,
        };
        assert_eq!(e.to_string(), "reading member status: timed out after 2 s");
    }

    #[test]
    fn leadership_counts_only_while_confirmed_recently() {
        let config = Config {
            name: "node0".into(),
            ip: "10.77.0.10".into(),
            ..Config::default()
        };
        let mut s = NodeStatus::new(&config, 0x1f);
        assert_eq!(s.member_id, "1f");
        let now = Instant::now();
        assert!(!s.is_leader_at(now, Duration::from_secs(10)));
        s.role = Some(Role::Leader);
        s.leader_confirmed_at = Some(now);
        assert!(s.is_leader_at(now + Duration::from_secs(10), Duration::from_secs(10)));
        assert!(!s.is_leader_at(now + Duration::from_secs(11), Duration::from_secs(10)));
        s.role = Some(Role::Follower);
        assert!(!s.is_leader_at(now, Duration::from_secs(10)));
    }
}
