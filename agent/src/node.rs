//! The node's life: etcd child, lease-backed keys, raft-leadership tracking, health API and
//! plugins, all stopped in order on shutdown.

use crate::config::Config;
use crate::schema::{self, LeaderRecord, NodeRecord, Role};
use crate::{etcd, health, supervise};
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
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
}

impl NodeStatus {
    fn new(config: &Config, member_id: u64) -> Self {
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
    tracing::info!(node = %config.name, ip = %config.ip, peers = %config.peers, "starting etcd");
    let mut etcd_child = etcd::spawn(&config)?;
    let (client, member_id) = etcd::wait_ready(&config, &mut etcd_child).await?;
    tracing::info!(member_id = %schema::member_id_hex(member_id), "etcd is answering");

    let (status_tx, status_rx) = watch::channel(NodeStatus::new(&config, member_id));
    let stop = CancellationToken::new();

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.health_port))
        .await
        .map_err(|source| AgentError::Health {
            port: config.health_port,
            source,
        })?;
    let health_task = tokio::spawn(health::serve(
        listener,
        status_rx.clone(),
        Duration::from_secs(config.lease_ttl_s),
        stop.clone(),
    ));
    let plugins_task = tokio::spawn(supervise::run_all(
        config.plugins.clone(),
        Duration::from_secs(3),
        stop.clone(),
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
        stop.clone(),
    ));

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested");
            Ok(())
        }
        status = etcd_child.wait() => Err(AgentError::EtcdDied {
            node: config.name.clone(),
            status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
        }),
    };
    stop.cancel();
    let _ = plugins_task.await;
    let _ = leader_task.await;
    let _ = keys_task.await; // revokes the lease while etcd still runs
    let _ = health_task.await;
    supervise::terminate("etcd", &mut etcd_child, Duration::from_secs(5)).await;
    result
}

/// The node's current lease; its keep-alive runs in a task of its own so that a slow or
/// dead etcd never delays the leadership poll.
struct Lease {
    id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

const OP_TIMEOUT: Duration = Duration::from_secs(2);

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: timed out after {} s",
            OP_TIMEOUT.as_secs()
        )),
    }
}

async fn grant(client: &mut Client, ttl: u64, lost: mpsc::Sender<i64>) -> Result<Lease, String> {
    let resp = timed("granting lease", client.lease_grant(ttl as i64, None)).await?;
    let id = resp.id();
    let keeper = tokio::spawn(keep_lease(client.clone(), id, ttl, lost));
    Ok(Lease { id, keeper })
}

/// Renews lease `id` every TTL/3 until it expires or cannot be renewed for a whole TTL;
/// then reports it on `lost` and ends.
async fn keep_lease(mut client: Client, id: i64, ttl: u64, lost: mpsc::Sender<i64>) {
    let period = Duration::from_millis((ttl * 1000 / 3).max(500));
    let mut last_ok = Instant::now();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        if stream.is_none() {
            match timed("opening keep-alive", client.lease_keep_alive(id)).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    tracing::warn!(lease = format!("{id:x}"), error = %e, "keep-alive failed")
                }
            }
        }
        if let Some((keeper, replies)) = stream.as_mut() {
            match keep_alive(keeper, replies).await {
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

/// Keeps the node key and, while leading, the leader key; publishes [`NodeStatus`].
async fn maintain_keys(
    config: Config,
    mut client: Client,
    member_id: u64,
    status_tx: watch::Sender<NodeStatus>,
    stop: CancellationToken,
) {
    let ttl = config.lease_ttl_s;
    let mut tick = tokio::time::interval(Duration::from_millis(config.leader_poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (lost_tx, mut lost_rx) = mpsc::channel::<i64>(4);
    let mut lease: Option<Lease> = None;
    let mut written_role: Option<Role> = None;
    let mut role_since = now_s();
    let mut last_role: Option<Role> = None;
    let mut leader_checked_at: Option<Instant> = None;
    let my_id = schema::member_id_hex(member_id);

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(id) = lost_rx.recv() => {
                if lease.as_ref().is_some_and(|l| l.id == id) {
                    lease = None;
                    written_role = None;
                    leader_checked_at = None;
                    status_tx.send_modify(|s| s.lease_id = None);
                }
            }
            _ = tick.tick() => {
                let status = timed("reading member status", client.status()).await;
                let role = match &status {
                    Ok(st) => {
                        let role = if st.leader() == member_id { Role::Leader } else { Role::Follower };
                        status_tx.send_modify(|s| {
                            s.role = Some(role);
                            s.raft_leader = Some(schema::member_id_hex(st.leader()));
                            s.raft_term = st.raft_term();
                            s.etcd_ok = true;
                            s.last_error = None;
                            if role == Role::Leader {
                                s.leader_confirmed_at = Some(Instant::now());
                            }
                        });
                        Some(role)
                    }
                    Err(e) => {
                        let e = e.clone();
                        status_tx.send_modify(|s| {
                            s.etcd_ok = false;
                            s.last_error = Some(e);
                        });
                        None
                    }
                };
                let Some(role) = role else { continue };
                if last_role != Some(role) {
                    if last_role.is_some() {
                        tracing::info!(from = ?last_role, to = %role, term = status.as_ref().map(|s| s.raft_term()).unwrap_or(0), "role changed");
                    }
                    last_role = Some(role);
                    role_since = now_s();
                }
                if lease.is_none() {
                    match grant(&mut client, ttl, lost_tx.clone()).await {
                        Ok(l) => {
                            tracing::info!(lease = format!("{:x}", l.id), ttl, "lease granted");
                            status_tx.send_modify(|s| s.lease_id = Some(format!("{:x}", l.id)));
                            lease = Some(l);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot grant lease yet");
                            continue;
                        }
                    }
                }
                let Some(lease_id) = lease.as_ref().map(|l| l.id) else { continue };
                if written_role != Some(role) {
                    let rec = NodeRecord {
                        name: config.name.clone(),
                        ip: config.ip.clone(),
                        role,
                        member_id: my_id.clone(),
                        since: role_since,
                    };
                    match put(&mut client, &schema::node_key(&config.name), &rec, lease_id).await {
                        Ok(()) => written_role = Some(role),
                        Err(e) => tracing::warn!(error = %e, "cannot write node key"),
                    }
                }
                if role == Role::Leader {
                    let due = leader_checked_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                    if due {
                        match ensure_leader_key(&mut client, &config, &my_id, lease_id).await {
                            Ok(()) => leader_checked_at = Some(Instant::now()),
                            Err(e) => tracing::warn!(error = %e, "cannot write leader key"),
                        }
                    }
                } else {
                    leader_checked_at = None;
                }
            }
        }
    }
    if let Some(l) = lease {
        l.keeper.abort();
        match timed("revoking lease", client.lease_revoke(l.id)).await {
            Ok(_) => tracing::info!(lease = format!("{:x}", l.id), "lease revoked"),
            Err(e) => tracing::warn!(error = %e, "could not revoke lease; keys expire with it"),
        }
    }
}

async fn keep_alive(
    keeper: &mut LeaseKeeper,
    replies: &mut LeaseKeepAliveStream,
) -> Result<bool, String> {
    timed("sending keep-alive", keeper.keep_alive()).await?;
    match timed("reading keep-alive", replies.message()).await? {
        Some(resp) => Ok(resp.ttl() > 0),
        None => Err("keep-alive stream closed".into()),
    }
}

async fn put<T: Serialize>(
    client: &mut Client,
    key: &str,
    value: &T,
    lease: i64,
) -> Result<(), String> {
    let body = serde_json::to_string(value).map_err(|e| e.to_string())?;
    timed(
        &format!("writing {key}"),
        client.put(key, body, Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .map(|_| ())
}

async fn ensure_leader_key(
    client: &mut Client,
    config: &Config,
    my_id: &str,
    lease: i64,
) -> Result<(), String> {
    let resp = timed("reading leader key", client.get(schema::LEADER_KEY, None)).await?;
    let current = resp
        .kvs()
        .first()
        .map(|kv| (schema::parse_leader(kv.value()).ok(), kv.lease()));
    let ours = matches!(&current, Some((Some(rec), l)) if rec.member_id == my_id && rec.name == config.name && *l == lease);
    if ours {
        return Ok(());
    }
    let rec = LeaderRecord {
        name: config.name.clone(),
        ip: config.ip.clone(),
        member_id: my_id.to_string(),
    };
    put(client, schema::LEADER_KEY, &rec, lease).await?;
    tracing::info!(node = %config.name, "wrote leader key");
    Ok(())
}
