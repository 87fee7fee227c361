//! Failure detection faster than the lease.
//!
//! Every agent probes one peer per [`PROBE_EVERY`] in rotation (a TCP connection attempt to
//! [`PROBE_PORT`], where nothing listens: the peer's kernel answers it with a reset, even while
//! the peer's processes are starved of CPU, and wakes none of them), so each node is probed by
//! somebody about every period whatever the cluster's size, and each agent makes O(1) probes
//! per period. A probe that gets no answer makes the peer a suspect:
//!
//! - a follower reports it to the leader's agent (`POST /suspect/<peer>` on the health API);
//! - the leader's agent (the one whose etcd member leads, i.e. sits in a quorum) checks it: it
//!   reads the suspect's node key (to learn its lease), probes it again itself and asks up to
//!   [`HELPERS`] other agents to probe it (`GET /probe/<peer>`, the SWIM indirect probe);
//!   [`decide`] removes it only when the leader's own probe failed, nobody reached it and at
//!   least two distinct probers saw it fail. Then the leader revokes the lease it read before
//!   probing: the node key goes, every watcher drops the node.
//!
//! No leader (quorum loss), no decision: the lease TTL stays the fallback. A node removed while
//! alive notices the deletion of its own key by watch ([`watch_own_key`]) and re-registers at
//! once on a new lease. It logs a "false removal" unless it saw itself cut off from the
//! quorum shortly before ([`Removal`]): a node behind a partition is rightly removed, and
//! learns of it only when the partition heals.
//!
//! Everything read from the network is bounded: peer names in requests must be configured
//! peers (never an address: no SSRF), answers are read up to [`MAX_ANSWER`] bytes, the node key
//! up to [`schema::MAX_VALUE_BYTES`].

use crate::node::NodeStatus;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clusterlab_core::schema::{self, NodeRecord, Peer};
use etcd_client::{Client, EventType, WatchOptions};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The port probes are sent to. Any answer of the peer's kernel, a reset (nothing listens,
/// the usual case) or an accepted connection, shows the node alive: a node's container lives
/// exactly as long as its agent (the agent is its main process), and its network namespace
/// with it. Only silence (the container is gone, or a partition drops the packets) counts
/// against it. A closed port costs the probed node no process wake-up, where a probe of the
/// health port made its agent accept and close a connection four times a second.
pub const PROBE_PORT: u16 = 9;
/// One peer is probed per period, in rotation.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A TCP connect that has not completed after this long is a failed probe. A live peer's
/// kernel completes the handshake in well under a millisecond on the bridge, even while its
/// processes are starved; half a second leaves the prober itself room to be slow.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// An indirect probe (`GET /probe/<peer>` on a helper) that has not answered after this long
/// counts as no answer: the helper's own probe takes up to [`PROBE_TIMEOUT`], the rest is for
/// a helper under load.
pub const INDIRECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How many other agents the leader asks to probe a suspect.
pub const HELPERS: usize = 2;
/// The leader checks one suspect at most this often.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// A follower reports a suspect at first this often, then backs off to [`REPORT_MAX`].
pub const REPORT_FIRST: Duration = Duration::from_secs(1);
pub const REPORT_MAX: Duration = Duration::from_secs(16);
/// At most this many bytes of an HTTP answer are read.
pub const MAX_ANSWER: usize = 256;
/// At most this many indirect probes are served at once; more get 429.
pub const MAX_CONCURRENT_PROBES: usize = 4;

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// The peer answered.
    Alive,
    /// The peer did not answer in time or refused.
    Dead,
    /// The prober itself did not answer (an indirect probe only): no evidence either way.
    NoAnswer,
}

/// The leader's decision about one suspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Confirmed unreachable by these distinct probers (the leader first).
    Remove { dead_by: Vec<String> },
    /// Somebody reached it.
    Refuted { by: String },
    /// Not enough evidence; the lease decides if nobody ever can.
    Undecided { why: String },
    /// The suspect holds no node key: nothing to remove.
    Gone,
}

/// Decides about a suspect from the leader's own probe, the follower that reported it (if
/// any) and the helpers' indirect probes. Removal needs: this agent leads, its own probe
/// failed, nobody reached the suspect, and at least two distinct probers saw it fail.
pub fn decide(
    me: &str,
    leader: bool,
    direct: Probe,
    reporter: Option<&str>,
    indirect: &[(String, Probe)],
) -> Verdict {
    if direct == Probe::Alive {
        return Verdict::Refuted { by: me.to_string() };
    }
    if let Some((h, _)) = indirect.iter().find(|(_, p)| *p == Probe::Alive) {
        return Verdict::Refuted { by: h.clone() };
    }
    if !leader {
        return Verdict::Undecided {
            why: "this agent's member is not the etcd leader".into(),
        };
    }
    if direct != Probe::Dead {
        return Verdict::Undecided {
            why: "the leader's own probe did not fail".into(),
        };
    }
    let mut dead_by = vec![me.to_string()];
    let others = reporter.into_iter().chain(
        indirect
            .iter()
            .filter(|(_, p)| *p == Probe::Dead)
            .map(|(h, _)| h.as_str()),
    );
    for o in others {
        if !dead_by.iter().any(|d| d == o) {
            dead_by.push(o.to_string());
        }
    }
    if dead_by.len() >= 2 {
        Verdict::Remove { dead_by }
    } else {
        Verdict::Undecided {
            why: format!(
                "only {me} saw it fail ({} helper(s) asked, none answered)",
                indirect.len()
            ),
        }
    }
}

/// What the detector loop does after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// (Leader) check this suspect now.
    Check,
    /// (Follower) report this suspect to the leader now.
    Report,
}

#[derive(Debug, Clone, Default)]
struct PeerState {
    checking: bool,
    last_check: Option<Instant>,
    next_report: Option<Instant>,
    report_backoff: Duration,
    misses: u32,
}

/// The detector's bookkeeping, without effects (the clock is passed in).
#[derive(Debug, Clone)]
pub struct Detector {
    me: String,
    /// Every configured peer but this node.
    peers: Vec<Peer>,
    state: Vec<PeerState>,
    next: usize,
    next_helper: usize,
}

impl Detector {
    /// The rotation starts after this node's place in the peer list, so that the agents do
    /// not all probe the same peer at once.
    pub fn new(me: &str, all: &[Peer]) -> Self {
        let pos = all.iter().position(|p| p.name == me).unwrap_or(0);
        let peers: Vec<Peer> = all.iter().filter(|p| p.name != me).cloned().collect();
        let n = peers.len().max(1);
        Detector {
            me: me.to_string(),
            state: vec![PeerState::default(); peers.len()],
            peers,
            next: pos % n,
            next_helper: pos % n,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn peer(&self, i: usize) -> &Peer {
        &self.peers[i]
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Index of a configured peer (not this node) by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name == name)
    }

    /// The next peer to probe.
    pub fn next_target(&mut self) -> Option<usize> {
        if self.peers.is_empty() {
            return None;
        }
        let i = self.next % self.peers.len();
        self.next = (i + 1) % self.peers.len();
        Some(i)
    }

    /// Consecutive failed probes of peer `i`.
    pub fn misses(&self, i: usize) -> u32 {
        self.state[i].misses
    }

    /// A direct probe of peer `i` finished.
    pub fn probed(&mut self, i: usize, probe: Probe, leader: bool, now: Instant) -> Step {
        let s = &mut self.state[i];
        if probe == Probe::Alive {
            s.misses = 0;
            s.next_report = None;
            s.report_backoff = Duration::ZERO;
            return Step::Nothing;
        }
        s.misses = s.misses.saturating_add(1);
        if leader {
            self.start_check(i, now)
        } else if s.next_report.is_none_or(|t| now >= t) {
            s.report_backoff = if s.report_backoff.is_zero() {
                REPORT_FIRST
            } else {
                (s.report_backoff * 2).min(REPORT_MAX)
            };
            s.next_report = Some(now + s.report_backoff);
            Step::Report
        } else {
            Step::Nothing
        }
    }

    /// Another agent reported peer `i` as suspect.
    pub fn reported(&mut self, i: usize, leader: bool, now: Instant) -> Step {
        if leader {
            self.start_check(i, now)
        } else {
            Step::Nothing
        }
    }

    fn start_check(&mut self, i: usize, now: Instant) -> Step {
        let s = &mut self.state[i];
        if s.checking || s.last_check.is_some_and(|t| now < t + RECHECK_AFTER) {
            return Step::Nothing;
        }
        s.checking = true;
        s.last_check = Some(now);
        Step::Check
    }

    /// The check of peer `i` ended.
    pub fn checked(&mut self, i: usize, verdict: &Verdict) {
        let s = &mut self.state[i];
        s.checking = false;
        if matches!(verdict, Verdict::Refuted { .. }) {
            s.misses = 0;
        }
    }

    /// Up to `k` helpers for a check of `suspect`: other peers, taken in rotation.
    pub fn helpers(&mut self, suspect: usize, k: usize) -> Vec<usize> {
        let n = self.peers.len();
        let mut out = Vec::new();
        for step in 0..n {
            if out.len() == k {
                break;
            }
            let i = (self.next_helper + step) % n;
            if i != suspect {
                out.push(i);
            }
        }
        self.next_helper = (self.next_helper + 1) % n.max(1);
        out
    }
}

/// Counters of the detector (served at `GET /detect`).
#[derive(Debug, Default)]
pub struct Counters {
    pub suspicions: AtomicU64,
    pub checks: AtomicU64,
    pub refuted: AtomicU64,
    pub removals: AtomicU64,
    /// Times this node's own key was deleted while it ran and could reach the quorum.
    pub false_removals: AtomicU64,
    /// Times it was deleted while (or shortly after) this node was cut off from the quorum.
    pub cut_off_removals: AtomicU64,
}

#[derive(Debug, Serialize)]
struct CountersView {
    suspicions: u64,
    checks: u64,
    refuted: u64,
    removals: u64,
    false_removals: u64,
    cut_off_removals: u64,
}

impl Counters {
    fn view(&self) -> CountersView {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersView {
            suspicions: g(&self.suspicions),
            checks: g(&self.checks),
            refuted: g(&self.refuted),
            removals: g(&self.removals),
            false_removals: g(&self.false_removals),
            cut_off_removals: g(&self.cut_off_removals),
        }
    }
}

/// A suspicion reported by another agent (already validated: a configured peer).
#[derive(Debug, Clone)]
pub struct Report {
    pub suspect: String,
}

/// What the health API needs to serve the detector's endpoints.
#[derive(Clone)]
pub struct Handle {
    me: String,
    peers: Arc<Vec<Peer>>,
    probe_port: u16,
    reports: mpsc::Sender<Report>,
    probes: Arc<Semaphore>,
    status: watch::Receiver<NodeStatus>,
    leader_fresh: Duration,
    pub counters: Arc<Counters>,
}

impl Handle {
    /// A handle and the receiving end of the reports, for [`run`]. Reports are accepted only
    /// while `status` says this node leads (confirmed within `leader_fresh`).
    pub fn new(
        settings: &Settings,
        status: watch::Receiver<NodeStatus>,
    ) -> (Handle, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(16);
        (
            Handle {
                me: settings.me.clone(),
                peers: Arc::new(settings.peers.clone()),
                probe_port: settings.probe_port,
                status,
                leader_fresh: settings.leader_fresh,
                reports: tx,
                probes: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
                counters: Arc::new(Counters::default()),
            },
            rx,
        )
    }

    /// A configured peer other than this node, by name.
    fn other_peer(&self, name: &str) -> Option<&Peer> {
        self.peers
            .iter()
            .find(|p| p.name == name && p.name != self.me)
    }
}

/// The detector's routes on the health API: `GET /probe/<peer>` (200 `alive` / 503
/// `unreachable` / 404 for anything but a configured peer), `POST /suspect/<peer>` (202 when
/// queued; the leader's agent checks it) and `GET /detect` (the counters).
pub fn routes(h: Handle) -> Router {
    Router::new()
        .route("/probe/{peer}", get(probe_route))
        .route("/suspect/{peer}", post(suspect_route))
        .route("/detect", get(counters_route))
        .with_state(h)
}

async fn probe_route(State(h): State<Handle>, Path(peer): Path<String>) -> (StatusCode, String) {
    let Some(p) = h.other_peer(&peer) else {
        return (StatusCode::NOT_FOUND, "not a configured peer\n".into());
    };
    let Ok(_permit) = h.probes.clone().try_acquire_owned() else {
        return (StatusCode::TOO_MANY_REQUESTS, "busy\n".into());
    };
    match tcp_probe(p.ip, h.probe_port, PROBE_TIMEOUT).await {
        Probe::Alive => (StatusCode::OK, "alive\n".into()),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unreachable\n".into()),
    }
}

async fn suspect_route(State(h): State<Handle>, Path(peer): Path<String>) -> (StatusCode, String) {
    if h.other_peer(&peer).is_none() {
        return (StatusCode::NOT_FOUND, "not a configured peer\n".into());
    }
    if !leads(&h.status, h.leader_fresh) {
        return (StatusCode::CONFLICT, "not the leader\n".into());
    }
    match h.reports.try_send(Report { suspect: peer }) {
        Ok(()) => (StatusCode::ACCEPTED, "queued\n".into()),
        Err(_) => (StatusCode::TOO_MANY_REQUESTS, "busy\n".into()),
    }
}

async fn counters_route(State(h): State<Handle>) -> Json<CountersView> {
    Json(h.counters.view())
}

/// A TCP connection attempt to `ip:port`: alive if the peer's kernel answered within
/// `timeout`, accepting or refusing (a reset); dead if nothing answered (a timeout, or the
/// address unreachable).
pub async fn tcp_probe(ip: Ipv4Addr, port: u16, timeout: Duration) -> Probe {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Alive,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Alive,
        _ => Probe::Dead,
    }
}

/// One tiny HTTP/1.0 request to an agent's health API; returns the status code, or `None`
/// when it did not answer a well-formed status line within `timeout`.
pub async fn http_status(
    ip: Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Option<u16> {
    let ask = async {
        let mut s = TcpStream::connect(SocketAddrV4::new(ip, port)).await.ok()?;
        let req = format!("{method} {path} HTTP/1.0\r\nHost: {ip}\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; MAX_ANSWER];
        let mut len = 0;
        while len < buf.len() {
            let n = s.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].contains(&b'\n') {
                break;
            }
        }
        parse_status_line(&buf[..len])
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// The status code of an HTTP/1.x status line at the start of `answer`.
pub fn parse_status_line(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Asks `helper` to probe `suspect`.
async fn indirect_probe(helper: Ipv4Addr, port: u16, suspect: &str) -> Probe {
    match http_status(
        helper,
        port,
        "GET",
        &format!("/probe/{suspect}"),
        INDIRECT_TIMEOUT,
    )
    .await
    {
        Some(200) => Probe::Alive,
        Some(503) => Probe::Dead,
        _ => Probe::NoAnswer,
    }
}

/// The lease of `name`'s node key, if the key holds that node's record.
async fn node_lease(client: &mut Client, name: &str) -> Result<Option<i64>, String> {
    let key = schema::node_key(name);
    let resp = tokio::time::timeout(crate::node::OP_TIMEOUT, client.get(key.as_str(), None))
        .await
        .map_err(|_| format!("reading {key}: timed out"))?
        .map_err(|e| format!("reading {key}: {e}"))?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    if kv.value().len() > schema::MAX_VALUE_BYTES {
        return Err(format!("{key}: value of {} bytes", kv.value().len()));
    }
    let rec: NodeRecord =
        serde_json::from_slice(kv.value()).map_err(|e| format!("{key}: not a node record: {e}"))?;
    if rec.name != name {
        return Err(format!("{key} names {:?}", rec.name));
    }
    Ok((kv.lease() != 0).then_some(kv.lease()))
}

/// Everything a check needs, moved into its task.
struct CheckJob {
    me: String,
    suspect: Peer,
    reporter: Option<String>,
    helpers: Vec<Peer>,
    port: u16,
    probe_port: u16,
    fresh: Duration,
}

fn leads(status: &watch::Receiver<NodeStatus>, fresh: Duration) -> bool {
    status.borrow().is_leader_within(fresh)
}

/// The leader's check of one suspect: read its lease, probe it directly and through helpers,
/// decide, and revoke the lease read before the probes (a node that came back since holds a
/// new lease, which this never touches).
async fn check(
    job: CheckJob,
    mut client: Client,
    status: watch::Receiver<NodeStatus>,
    counters: Arc<Counters>,
) -> Verdict {
    counters.checks.fetch_add(1, Ordering::Relaxed);
    let lease = match node_lease(&mut client, &job.suspect.name).await {
        Ok(Some(l)) => l,
        Ok(None) => return Verdict::Gone,
        Err(e) => {
            return Verdict::Undecided {
                why: format!("cannot read its lease: {e}"),
            }
        }
    };
    let started = Instant::now();
    let direct = tcp_probe(job.suspect.ip, job.probe_port, PROBE_TIMEOUT);
    let indirect = futures::future::join_all(job.helpers.iter().map(|h| async {
        (
            h.name.clone(),
            indirect_probe(h.ip, job.port, &job.suspect.name).await,
        )
    }));
    let (direct, indirect) = tokio::join!(direct, indirect);
    let verdict = decide(
        &job.me,
        leads(&status, job.fresh),
        direct,
        job.reporter.as_deref(),
        &indirect,
    );
    match &verdict {
        Verdict::Remove { dead_by } => {
            let revoked =
                tokio::time::timeout(crate::node::OP_TIMEOUT, client.lease_revoke(lease)).await;
            match revoked {
                Ok(Ok(_)) => {
                    counters.removals.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        node = %job.suspect.name,
                        lease = format!("{lease:x}"),
                        dead_by = %dead_by.join(","),
                        reporter = ?job.reporter,
                        direct = ?direct,
                        indirect = ?indirect,
                        probe_ms = started.elapsed().as_millis() as u64,
                        "removed an unreachable node: revoked its lease"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %job.suspect.name, error = %e, "cannot revoke the lease of an unreachable node")
                }
                Err(_) => {
                    tracing::warn!(node = %job.suspect.name, "revoking the lease of an unreachable node timed out")
                }
            }
        }
        Verdict::Refuted { by } => {
            counters.refuted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %job.suspect.name, reached_by = %by, "suspicion refuted");
        }
        Verdict::Undecided { why } => {
            tracing::info!(node = %job.suspect.name, why = %why, indirect = ?indirect, "suspect not removed: undecided");
        }
        Verdict::Gone => {}
    }
    verdict
}

/// Tells the leader's agent that `suspect` failed a probe: to the agent that accepted the
/// last report, else to every other peer (only the leader's agent acts on it). Returns the
/// peer that accepted.
async fn report(targets: Vec<Peer>, port: u16, suspect: String) -> Option<String> {
    let path = format!("/suspect/{suspect}");
    for t in targets {
        if http_status(t.ip, port, "POST", &path, INDIRECT_TIMEOUT).await == Some(202) {
            return Some(t.name);
        }
    }
    None
}

enum Done {
    Probed(usize, Probe),
    Checked(usize, Verdict),
    Reported(Option<String>),
}

/// Who the detector runs as and whom it probes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub me: String,
    /// Every configured peer (this node included; it is skipped).
    pub peers: Vec<Peer>,
    /// The health port, the same on every node.
    pub port: u16,
    /// The port probes go to: [`PROBE_PORT`] on the nodes.
    pub probe_port: u16,
    /// A leadership confirmed longer ago than this lets this agent remove nobody.
    pub leader_fresh: Duration,
}

/// Runs the detector until `stop`.
pub async fn run(
    settings: Settings,
    client: Client,
    status: watch::Receiver<NodeStatus>,
    mut reports: mpsc::Receiver<Report>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let Settings {
        me,
        peers,
        port,
        probe_port,
        leader_fresh,
    } = settings;
    let mut det = Detector::new(&me, &peers);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut leader_hint: Option<String> = None;
    let start_check = |det: &mut Detector, tasks: &mut JoinSet<Done>, i: usize, reporter| {
        let helpers = det
            .helpers(i, HELPERS)
            .into_iter()
            .map(|h| det.peer(h).clone())
            .collect();
        let job = CheckJob {
            me: det.me().to_string(),
            suspect: det.peer(i).clone(),
            reporter,
            helpers,
            port,
            probe_port,
            fresh: leader_fresh,
        };
        let (client, status, counters) = (client.clone(), status.clone(), counters.clone());
        tasks.spawn(async move { Done::Checked(i, check(job, client, status, counters).await) });
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                // Bounded: at most a few probes, checks and reports are ever in flight.
                if tasks.len() >= 4 * det.peers().len().max(1) {
                    continue;
                }
                if let Some(i) = det.next_target() {
                    let ip = det.peer(i).ip;
                    tasks.spawn(async move { Done::Probed(i, tcp_probe(ip, probe_port, PROBE_TIMEOUT).await) });
                }
            }
            Some(r) = reports.recv() => {
                let Some(i) = det.index_of(&r.suspect) else { continue };
                if det.reported(i, leads(&status, leader_fresh), Instant::now()) == Step::Check {
                    tracing::info!(node = %r.suspect, "a peer reported a suspect; checking it");
                    start_check(&mut det, &mut tasks, i, None);
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                match done {
                    Ok(Done::Probed(i, p)) => {
                        let leader = leads(&status, leader_fresh);
                        match det.probed(i, p, leader, Instant::now()) {
                            Step::Nothing => {}
                            Step::Check => {
                                counters.suspicions.fetch_add(1, Ordering::Relaxed);
                                start_check(&mut det, &mut tasks, i, None);
                            }
                            Step::Report => {
                                counters.suspicions.fetch_add(1, Ordering::Relaxed);
                                let suspect = det.peer(i).name.clone();
                                let mut targets: Vec<Peer> = det.peers().iter()
                                    .filter(|p| p.name != suspect)
                                    .cloned()
                                    .collect();
                                if let Some(h) = &leader_hint {
                                    if let Some(pos) = targets.iter().position(|p| &p.name == h) {
                                        targets.swap(0, pos);
                                    }
                                }
                                tasks.spawn(async move { Done::Reported(report(targets, port, suspect).await) });
                            }
                        }
                    }
                    Ok(Done::Checked(i, v)) => det.checked(i, &v),
                    Ok(Done::Reported(accepted)) => {
                        if accepted.is_some() {
                            leader_hint = accepted;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "a detector task failed"),
                }
            }
        }
    }
    tasks.abort_all();
}

/// Where [`watch_own_key`] reports: the lease lost with a deleted key, and any write.
#[derive(Debug, Clone)]
pub struct OwnKeySignals {
    pub lost: mpsc::Sender<i64>,
    pub changed: Arc<tokio::sync::Notify>,
}

/// Watches this node's own key: when it is deleted while the node runs on the lease that
/// holds it (a false removal, or a lease that expired under the node), reports that lease on
/// `lost` so the key loop grants a new one and re-registers at once; on any write to it, asks
/// the key loop on `changed` to read it back (an overwrite is repaired at once, not at the
/// next [`crate::keys::NODE_KEY_RECHECK`]).
pub async fn watch_own_key(
    name: String,
    mut client: Client,
    status: watch::Receiver<NodeStatus>,
    signals: OwnKeySignals,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let OwnKeySignals { lost, changed } = signals;
    let key = schema::node_key(&name);
    let mut delay = Duration::from_millis(200);
    loop {
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            r = watch_once(&key, &mut client, &status, (&lost, &changed), &counters) => r,
        };
        if stop.is_cancelled() {
            return;
        }
        tracing::warn!(key = %key, error = %ended, "watch of the node's own key ended; watching again");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn watch_once(
    key: &str,
    client: &mut Client,
    status: &watch::Receiver<NodeStatus>,
    (lost, changed): (&mpsc::Sender<i64>, &tokio::sync::Notify),
    counters: &Counters,
) -> String {
    let opts = WatchOptions::new().with_prev_key();
    let mut stream =
        match tokio::time::timeout(crate::node::OP_TIMEOUT, client.watch(key, Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "starting the watch timed out".into(),
        };
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "closed".into(),
            Err(e) => return e.to_string(),
        };
        if resp.canceled() {
            return format!("cancelled: {}", resp.cancel_reason());
        }
        for ev in resp.events() {
            if ev.event_type() != EventType::Delete {
                // A write: this node's own, or somebody overwriting its record. One read-back
                // tells which (and rewrites it if it is not this node's).
                changed.notify_one();
                continue;
            }
            let prev_lease = ev.prev_kv().map(|kv| kv.lease());
            let mine = status
                .borrow()
                .lease_id
                .as_deref()
                .and_then(|h| i64::from_str_radix(h, 16).ok());
            let Some(lease) = mine else { continue };
            // A delete of a previous incarnation's key (another lease) is not this node's.
            if prev_lease.is_some_and(|l| l != lease) {
                continue;
            }
            let cut_off_at = status.borrow().cut_off_at;
            match Removal::classify(cut_off_at, std::time::Instant::now()) {
                Removal::WhileCutOff { ago } => {
                    counters.cut_off_removals.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        key = %key,
                        lease = format!("{lease:x}"),
                        cut_off_ms_ago = ago.as_millis() as u64,
                        "removed while cut off from the quorum; re-registering at once"
                    );
                }
                Removal::False => {
                    counters.false_removals.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        key = %key,
                        lease = format!("{lease:x}"),
                        total = counters.false_removals.load(Ordering::Relaxed),
                        "false removal: this node's key was deleted while it runs; re-registering at once"
                    );
                }
            }
            let _ = lost.try_send(lease);
        }
    }
}

/// How long after this node last saw itself cut off from the quorum a deletion of its key
/// still counts as a removal of a cut-off node. A partition's changes reach the node when it
/// heals; the detector removes within seconds of the cut, so a minute covers any partition a
/// trial or a student makes, while a node that could reach the quorum all along is never
/// excused.
pub const CUT_OFF_MEMORY: Duration = Duration::from_secs(60);

/// Why this node's key was deleted while it ran, as far as the node can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It saw itself cut off from the quorum `ago` before learning of the deletion: a
    /// partition the detector rightly acted on.
    WhileCutOff { ago: Duration },
    /// It reached the quorum all along: a live node was removed.
    False,
}

impl Removal {
    pub fn classify(cut_off_at: Option<std::time::Instant>, now: std::time::Instant) -> Removal {
        match cut_off_at.map(|t| now.saturating_duration_since(t)) {
            Some(ago) if ago <= CUT_OFF_MEMORY => Removal::WhileCutOff { ago },
            _ => Removal::False,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_is_false_unless_the_node_was_cut_off_shortly_before() {
        let now = std::time::Instant::now() + Duration::from_secs(600);
        assert_eq!(Removal::classify(None, now), Removal::False);
        let ago = Duration::from_secs(7);
        assert_eq!(
            Removal::classify(Some(now - ago), now),
            Removal::WhileCutOff { ago }
        );
        assert_eq!(
            Removal::classify(Some(now - CUT_OFF_MEMORY), now),
            Removal::WhileCutOff {
                ago: CUT_OFF_MEMORY
            }
        );
        assert_eq!(
            Removal::classify(Some(now - CUT_OFF_MEMORY - Duration::from_millis(1)), now),
            Removal::False
        );
    }

    fn peers(n: usize) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer {
                name: format!("node{i}"),
                ip: Ipv4Addr::new(127, 0, 0, 10 + i as u8),
            })
            .collect()
    }

    /// A port on `ip` that answers nothing: a listener with a backlog of one, never accepting,
    /// whose queue is already full (the kernel then drops further SYNs). Loopback has no other
    /// way to be silent: every 127/8 address is local and refuses with a reset.
    async fn silent_listener(ip: Ipv4Addr) -> ((tokio::net::TcpListener, TcpStream), u16) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0))).unwrap();
        let listener = sock.listen(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let filler = TcpStream::connect((ip, port)).await.unwrap();
        ((listener, filler), port)
    }

    #[tokio::test]
    async fn any_answer_of_the_peers_kernel_is_alive_and_silence_is_dead() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let t = Duration::from_millis(500);
        assert_eq!(tcp_probe(Ipv4Addr::LOCALHOST, open, t).await, Probe::Alive);
        // A port nobody listens on: the kernel's reset is an answer.
        drop(listener);
        assert_eq!(tcp_probe(Ipv4Addr::LOCALHOST, open, t).await, Probe::Alive);
        // No answer within the timeout.
        let (_silent, port) = silent_listener(Ipv4Addr::LOCALHOST).await;
        assert_eq!(tcp_probe(Ipv4Addr::LOCALHOST, port, t).await, Probe::Dead);
    }

    #[test]
    fn removal_needs_the_leader_its_own_failed_probe_and_a_second_prober() {
        let d = |n: &str| (n.to_string(), Probe::Dead);
        let na = |n: &str| (n.to_string(), Probe::NoAnswer);
        // Leader and one helper saw it fail: removed, with the evidence.
        assert_eq!(
            decide("node0", true, Probe::Dead, None, &[d("node2")]),
            Verdict::Remove {
                dead_by: vec!["node0".into(), "node2".into()]
            }
        );
        // The reporter counts as the second prober, once.
        assert_eq!(
            decide("node0", true, Probe::Dead, Some("node2"), &[d("node2")]),
            Verdict::Remove {
                dead_by: vec!["node0".into(), "node2".into()]
            }
        );
        // Only the leader saw it fail, the helpers did not answer: undecided.
        assert!(matches!(
            decide(
                "node0",
                true,
                Probe::Dead,
                None,
                &[na("node2"), na("node3")]
            ),
            Verdict::Undecided { .. }
        ));
        // Anybody reaching it refutes, even with a reporter and another dead vote.
        assert_eq!(
            decide(
                "node0",
                true,
                Probe::Dead,
                Some("node3"),
                &[d("node2"), ("node4".into(), Probe::Alive)]
            ),
            Verdict::Refuted { by: "node4".into() }
        );
        assert_eq!(
            decide("node0", true, Probe::Alive, Some("node3"), &[d("node2")]),
            Verdict::Refuted { by: "node0".into() }
        );
        // No leader (quorum loss): nobody removes, whatever the evidence.
        assert!(matches!(
            decide("node0", false, Probe::Dead, Some("node3"), &[d("node2")]),
            Verdict::Undecided { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rotation_probes_every_other_peer_and_starts_after_this_node() {
        let mut det = Detector::new("node1", &peers(4));
        let order: Vec<String> = (0..6)
            .map(|_| {
                let i = det.next_target().unwrap();
                det.peer(i).name.clone()
            })
            .collect();
        assert_eq!(
            order,
            ["node2", "node3", "node0", "node2", "node3", "node0"]
        );
        assert_eq!(det.index_of("node1"), None, "never probes itself");
        let h = det.helpers(det.index_of("node2").unwrap(), HELPERS);
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|i| det.peer(*i).name != "node2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_checks_a_suspect_once_at_a_time_and_not_more_than_once_a_second() {
        let mut det = Detector::new("node0", &peers(3));
        let x = det.index_of("node2").unwrap();
        let t0 = Instant::now();
        assert_eq!(det.probed(x, Probe::Alive, true, t0), Step::Nothing);
        assert_eq!(det.probed(x, Probe::Dead, true, t0), Step::Check);
        // While the check runs, further misses and reports start nothing.
        assert_eq!(det.probed(x, Probe::Dead, true, t0), Step::Nothing);
        assert_eq!(det.reported(x, true, t0), Step::Nothing);
        assert_eq!(det.misses(x), 2);
        det.checked(
            x,
            &Verdict::Undecided {
                why: "helpers silent".into(),
            },
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(det.reported(x, true, Instant::now()), Step::Nothing);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(det.reported(x, true, Instant::now()), Step::Check);
        // Refuted: the misses are forgotten.
        det.checked(x, &Verdict::Refuted { by: "node1".into() });
        assert_eq!(det.misses(x), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_reports_with_backoff_and_never_checks() {
        let mut det = Detector::new("node1", &peers(3));
        let x = det.index_of("node2").unwrap();
        assert_eq!(
            det.probed(x, Probe::Dead, false, Instant::now()),
            Step::Report
        );
        assert_eq!(
            det.probed(x, Probe::Dead, false, Instant::now()),
            Step::Nothing
        );
        assert_eq!(det.reported(x, false, Instant::now()), Step::Nothing);
        tokio::time::advance(REPORT_FIRST).await;
        assert_eq!(
            det.probed(x, Probe::Dead, false, Instant::now()),
            Step::Report
        );
        // Backed off: the next report waits twice as long.
        tokio::time::advance(REPORT_FIRST).await;
        assert_eq!(
            det.probed(x, Probe::Dead, false, Instant::now()),
            Step::Nothing
        );
        tokio::time::advance(REPORT_FIRST).await;
        assert_eq!(
            det.probed(x, Probe::Dead, false, Instant::now()),
            Step::Report
        );
        // Reached again: the next miss is reported at once.
        assert_eq!(
            det.probed(x, Probe::Alive, false, Instant::now()),
            Step::Nothing
        );
        assert_eq!(
            det.probed(x, Probe::Dead, false, Instant::now()),
            Step::Report
        );
    }

    #[test]
    fn status_lines_are_parsed_strictly() {
        assert_eq!(parse_status_line(b"HTTP/1.1 202 Accepted\r\n"), Some(202));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 x\r\nbody"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20000 no\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn the_endpoints_probe_only_configured_peers() {
        let (_silent, silent_port) = silent_listener(Ipv4Addr::new(127, 0, 0, 11)).await;
        let settings = Settings {
            me: "node0".into(),
            peers: peers(3),
            port: 1,
            probe_port: silent_port,
            leader_fresh: Duration::from_secs(1),
        };
        let config = clusterlab_core::config::Config {
            name: "node0".into(),
            ..Default::default()
        };
        let (status_tx, status) = watch::channel(NodeStatus::new(&config, 1));
        let (h, mut rx) = Handle::new(&settings, status);
        for name in ["127.0.0.1", "node0", "node9", "../health"] {
            let (code, _) = probe_route(State(h.clone()), Path(name.to_string())).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{name}");
            let (code, _) = suspect_route(State(h.clone()), Path(name.to_string())).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{name}");
        }
        assert!(rx.try_recv().is_err());
        // Only the leader's agent takes reports.
        let (code, _) = suspect_route(State(h.clone()), Path("node2".into())).await;
        assert_eq!(code, StatusCode::CONFLICT);
        status_tx.send_modify(|s| {
            s.role = Some(clusterlab_core::schema::Role::Leader);
            s.leader_confirmed_at = Some(std::time::Instant::now());
        });
        let (code, _) = suspect_route(State(h.clone()), Path("node2".into())).await;
        assert_eq!(code, StatusCode::ACCEPTED);
        assert_eq!(rx.try_recv().unwrap().suspect, "node2");
        // A configured peer that does not answer (127.0.0.11's probe port is silent) is
        // reported unreachable.
        let (code, body) = probe_route(State(h), Path("node1".into())).await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "unreachable\n")
        );
    }

    /// The indirect probe over real sockets on loopback: a helper's health API asked about a
    /// live peer and a dead one, and about a name that is not a peer.
    #[tokio::test]
    async fn an_indirect_probe_goes_through_a_real_helper() {
        let helper_ip = Ipv4Addr::new(127, 0, 0, 12);
        let listener = tokio::net::TcpListener::bind((helper_ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // node0 is alive (its kernel answers on the probe port), node3 is silent there.
        let (silent, probe_port) = silent_listener(Ipv4Addr::new(127, 0, 0, 13)).await;
        let mut all = peers(4);
        all[2].ip = helper_ip;
        let settings = Settings {
            me: "node2".into(),
            peers: all,
            port,
            probe_port,
            leader_fresh: Duration::from_secs(1),
        };
        let config = clusterlab_core::config::Config {
            name: "node2".into(),
            ..Default::default()
        };
        let (_status_tx, status) = watch::channel(NodeStatus::new(&config, 2));
        let (h, _rx) = Handle::new(&settings, status);
        let server = tokio::spawn(async move { axum::serve(listener, routes(h)).await });
        assert_eq!(indirect_probe(helper_ip, port, "node0").await, Probe::Alive);
        assert_eq!(indirect_probe(helper_ip, port, "node3").await, Probe::Dead);
        assert_eq!(
            http_status(helper_ip, port, "GET", "/probe/10.0.0.1", INDIRECT_TIMEOUT).await,
            Some(404)
        );
        // The helper itself gone: no answer, which is no evidence.
        server.abort();
        let _ = server.await;
        assert_eq!(
            indirect_probe(helper_ip, port, "node0").await,
            Probe::NoAnswer
        );
        drop(silent);
    }
}
