//! The live view: a page served by the harness on 127.0.0.1 only, drawing the cluster from
//! [`crate::events`] (each node a box coloured by role and state, the hosts tables side by
//! side, the event stream below), pushed live with server-sent events, with buttons that do
//! what `harness kill`/`start`/`partition`/`heal` do.
//!
//! Only a page opened with this run's random token can use it: every request but the static
//! script and style must carry `?token=…` (compared in constant time), the Host header must
//! be the loopback address it listens on (so a DNS-rebinding page cannot reach it under its
//! own name), and an action must be a JSON POST whose Origin, when the browser sends one, is
//! this server's. A page elsewhere can neither read the token nor send a JSON POST across
//! origins without a preflight, which is never answered. The page may not be framed.
//! The harness talks to Docker itself: the Docker socket never goes into a container.

use crate::cluster::Cluster;
use crate::events::{self, Change, Event, Model};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

const INDEX_HTML: &str = include_str!("view/index.html");
const VIEW_JS: &str = include_str!("view/view.js");
const VIEW_CSS: &str = include_str!("view/view.css");

/// Event lines kept for a page that connects later.
const KEEP_LINES: usize = 300;
/// How often each node's hosts table and partition rules are read while the cluster is
/// changing: for [`STIRRED_FOR`] after any event or action (hostsgen rewrites the tables
/// when the node keys or the leader change, which the event stream sees too).
const HOSTS_EVERY: Duration = Duration::from_secs(1);
/// How long after an event or action the tables are read every [`HOSTS_EVERY`].
const STIRRED_FOR: Duration = Duration::from_secs(15);
/// How often they are read on a quiet cluster (where only an edit from outside the
/// harness could change them). A round costs two `docker exec`s per node.
const HOSTS_QUIET_EVERY: Duration = Duration::from_secs(5);
/// Lines and characters per line shown of one node's hosts block.
const MAX_HOSTS_LINES: usize = 64;
const MAX_HOSTS_LINE_CHARS: usize = 200;

/// A fresh random token (128 bits from the kernel, in hex).
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Equal strings, compared without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// One message to the pages.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Push {
    /// Everything, sent first to each page.
    State {
        cluster: String,
        nodes: Vec<String>,
        model: Model,
        lines: Vec<Line>,
        hosts: BTreeMap<String, HostsTable>,
    },
    Change {
        line: Line,
        model: Model,
    },
    Hosts {
        hosts: BTreeMap<String, HostsTable>,
    },
}

/// One event line as the page shows it.
#[derive(Debug, Clone, Serialize)]
struct Line {
    clock: String,
    text: String,
    kind: &'static str,
}

impl Line {
    fn of(e: &Event) -> Line {
        let kind = match &e.change {
            Change::Killed { .. } | Change::Died { .. } => "bad",
            Change::Refused { .. } | Change::SourceError { .. } => "warn",
            Change::RaftTerm { .. } | Change::LeaderKey { .. } => "leader",
            _ => "info",
        };
        Line {
            clock: e.clock(),
            text: e.change.to_string(),
            kind,
        }
    }
}

/// One node's hosts block as read: its lines (bounded, cleaned) and who it names host0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostsTable {
    pub lines: Vec<String>,
    pub host0: Option<String>,
    /// Why it could not be read (the node is down, no block …).
    pub error: Option<String>,
    /// The peers this node's partition rules drop (`harness partition`, the isolate button).
    pub cut_from: Vec<String>,
}

/// A hosts file as the page shows it: the clusterlab block's lines, bounded and cleaned.
pub fn hosts_table(file: &str) -> HostsTable {
    match clusterlab_core::hosts::extract_block(file) {
        None => HostsTable {
            error: Some("no clusterlab block".into()),
            ..Default::default()
        },
        Some(block) => {
            let lines = block
                .lines()
                .take(MAX_HOSTS_LINES)
                .map(|l| {
                    crate::grade::text::clean(l)
                        .chars()
                        .take(MAX_HOSTS_LINE_CHARS)
                        .collect()
                })
                .collect();
            HostsTable {
                lines,
                host0: crate::oracle::host0_of(&block),
                error: None,
                cut_from: Vec::new(),
            }
        }
    }
}

struct Live {
    model: Model,
    lines: VecDeque<Line>,
    hosts: BTreeMap<String, HostsTable>,
}

#[derive(Clone)]
struct App {
    cluster: Cluster,
    token: Arc<str>,
    /// `127.0.0.1:PORT`: the only Host (and, as `http://…`, Origin) accepted.
    authority: Arc<str>,
    live: Arc<Mutex<Live>>,
    tx: broadcast::Sender<Push>,
    /// When the last event was seen or action done.
    stirred: Arc<Mutex<Option<tokio::time::Instant>>>,
}

impl App {
    /// Notes that the cluster is changing now.
    fn stir(&self) {
        *self.stirred.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Whether the hosts tables are due for a read at `now`, last read at `last`.
    fn hosts_due(&self, now: tokio::time::Instant, last: Option<tokio::time::Instant>) -> bool {
        let stirred = *self.stirred.lock().unwrap_or_else(|e| e.into_inner());
        reads_due(now, last, stirred)
    }

    /// Reads every node's hosts table and pushes it to the pages when it changed.
    async fn refresh_hosts(&self) {
        let now = read_hosts(&self.cluster).await;
        let changed = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let changed = live.hosts != now;
            live.hosts = now.clone();
            changed
        };
        if changed {
            let _ = self.tx.send(Push::Hosts { hosts: now });
        }
    }

    /// Whether a page is following the stream.
    fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn state(&self) -> Push {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        Push::State {
            cluster: self.cluster.spec.name.clone(),
            nodes: self.cluster.node_names(),
            model: live.model.clone(),
            lines: live.lines.iter().cloned().collect(),
            hosts: live.hosts.clone(),
        }
    }

    fn record(&self, e: &Event) {
        self.stir();
        let push = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.model.apply(&e.change);
            let line = Line::of(e);
            live.lines.push_back(line.clone());
            while live.lines.len() > KEEP_LINES {
                live.lines.pop_front();
            }
            Push::Change {
                line,
                model: live.model.clone(),
            }
        };
        let _ = self.tx.send(push);
    }
}

/// Why a request was refused.
fn refuse(code: StatusCode, why: &str) -> Response {
    (code, format!("{why}\n")).into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The checks every request but the static assets passes.
fn admit(app: &App, q: &TokenQuery, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host != Some(&*app.authority) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            "wrong Host: open the URL harness printed",
        ));
    }
    match &q.token {
        Some(t) if same(t, &app.token) => Ok(()),
        _ => Err((
            StatusCode::FORBIDDEN,
            "missing or wrong token: open the URL harness printed",
        )),
    }
}

fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn index(State(app): State<App>, Query(q): Query<TokenQuery>, h: HeaderMap) -> Response {
    if let Err((code, why)) = admit(&app, &q, &h) {
        return refuse(code, why);
    }
    security_headers(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML,
        )
            .into_response(),
    )
}

async fn asset(path: &'static str) -> Response {
    let (ty, body) = match path {
        "js" => ("text/javascript; charset=utf-8", VIEW_JS),
        _ => ("text/css; charset=utf-8", VIEW_CSS),
    };
    security_headers(([(header::CONTENT_TYPE, ty)], body).into_response())
}

async fn state(State(app): State<App>, Query(q): Query<TokenQuery>, h: HeaderMap) -> Response {
    if let Err((code, why)) = admit(&app, &q, &h) {
        return refuse(code, why);
    }
    // With no page open the tables are not kept current: read them for this answer.
    if !app.watched() {
        app.refresh_hosts().await;
    }
    Json(app.state()).into_response()
}

async fn stream(State(app): State<App>, Query(q): Query<TokenQuery>, h: HeaderMap) -> Response {
    if let Err((code, why)) = admit(&app, &q, &h) {
        return refuse(code, why);
    }
    let fresh = !app.watched();
    let rx = app.tx.subscribe();
    // The first page after a while with none: tables as they are now, not as last read.
    if fresh {
        app.refresh_hosts().await;
    }
    let first = app.state();
    let s = futures::stream::unfold((Some(first), rx, app), |(first, mut rx, app)| async move {
        let push = match first {
            Some(p) => p,
            None => match rx.recv().await {
                Ok(p) => p,
                // A page too slow to keep up gets the whole state again.
                Err(broadcast::error::RecvError::Lagged(_)) => app.state(),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        let ev = SseEvent::default()
            .json_data(&push)
            .unwrap_or_else(|_| SseEvent::default().data("{}"));
        Some((Ok::<_, std::convert::Infallible>(ev), (None, rx, app)))
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// A button's request.
#[derive(Debug, Deserialize)]
pub struct Action {
    /// `kill`, `start`, `isolate` (partition the node from the rest) or `heal`.
    pub action: String,
    /// `leader` or a node name (not for `heal`).
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Serialize)]
struct ActionReply {
    ok: bool,
    message: String,
}

async fn act(
    State(app): State<App>,
    Query(q): Query<TokenQuery>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err((code, why)) = admit(&app, &q, &h) {
        return refuse(code, why);
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let mine = format!("http://{}", app.authority);
        if origin.to_str().ok() != Some(mine.as_str()) {
            return refuse(StatusCode::FORBIDDEN, "foreign Origin");
        }
    }
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an action is a JSON POST",
        );
    }
    let a: Action = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("bad action: {e}")),
    };
    let (code, message) = match run_action(&app.cluster, &a).await {
        Ok(m) => (StatusCode::OK, m),
        Err(e) => (StatusCode::CONFLICT, e),
    };
    // An isolate or heal makes no event: the tables' cut marks change all the same.
    app.stir();
    (
        code,
        Json(ActionReply {
            ok: code == StatusCode::OK,
            message,
        }),
    )
        .into_response()
}

/// Does what the button asks, as the command line would; the message says what was done.
pub async fn run_action(c: &Cluster, a: &Action) -> Result<String, String> {
    let node = || -> Result<&str, String> {
        a.node
            .as_deref()
            .ok_or_else(|| format!("{} needs a node", a.action))
    };
    match a.action.as_str() {
        "kill" => {
            let n = crate::cli::pick_target(c, node()?)
                .await
                .map_err(|e| e.to_string())?;
            c.kill(&n).await.map_err(|e| e.to_string())?;
            Ok(format!("killed {n}"))
        }
        "start" => {
            let n = crate::cli::pick_target(c, node()?)
                .await
                .map_err(|e| e.to_string())?;
            c.start(&n).await.map_err(|e| e.to_string())?;
            Ok(format!("started {n}"))
        }
        "isolate" => {
            let n = crate::cli::pick_target(c, node()?)
                .await
                .map_err(|e| e.to_string())?;
            let groups = crate::faults::cli_groups(&c.node_names(), std::slice::from_ref(&n), None)
                .map_err(|e| e.to_string())?;
            let r = crate::faults::partition(c, &groups)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("partitioned: {}", crate::faults::describe(&r.cuts)))
        }
        "heal" => {
            crate::faults::heal(c).await.map_err(|e| e.to_string())?;
            Ok("healed: every partition rule removed".into())
        }
        other => Err(format!(
            "unknown action {:?}: kill, start, isolate or heal",
            crate::grade::text::clean(other)
        )),
    }
}

/// Reads every running node's hosts table now.
async fn read_hosts(c: &Cluster) -> BTreeMap<String, HostsTable> {
    let reads = c.node_names().into_iter().map(|n| async move {
        let table = match c.exec(&n, &["cat", "/etc/hosts"]).await {
            Ok(out) if out.code == 0 => hosts_table(&out.stdout),
            Ok(out) => HostsTable {
                error: Some(format!("cat /etc/hosts exited with {}", out.code)),
                ..Default::default()
            },
            Err(_) => HostsTable {
                error: Some("not readable (the node is down)".into()),
                ..Default::default()
            },
        };
        (n, table)
    });
    let mut tables: BTreeMap<String, HostsTable> =
        futures::future::join_all(reads).await.into_iter().collect();
    if let Ok(report) = crate::faults::cuts(c).await {
        let name_of = |ip: &std::net::Ipv4Addr| {
            c.node_names()
                .into_iter()
                .find(|n| c.node_ip(n).ok().as_ref() == Some(ip))
                .unwrap_or_else(|| ip.to_string())
        };
        for (node, drops) in report.cuts {
            if let Some(t) = tables.get_mut(&node) {
                t.cut_from = drops.iter().map(name_of).collect();
            }
        }
    }
    tables
}

/// Whether a round of reads is due at `now`: the first one, every [`HOSTS_EVERY`] within
/// [`STIRRED_FOR`] of the last event or action, else every [`HOSTS_QUIET_EVERY`].
fn reads_due(
    now: tokio::time::Instant,
    last: Option<tokio::time::Instant>,
    stirred: Option<tokio::time::Instant>,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    let changing = stirred.is_some_and(|at| now.saturating_duration_since(at) < STIRRED_FOR);
    let every = if changing {
        HOSTS_EVERY
    } else {
        HOSTS_QUIET_EVERY
    };
    // The ticks come every HOSTS_EVERY, a little late at times: a read is due a tick early
    // rather than a tick late.
    now.saturating_duration_since(last) + HOSTS_EVERY / 2 >= every
}

/// A live view being served.
#[derive(Debug)]
pub struct Served {
    /// `http://127.0.0.1:PORT/?token=…`
    pub url: String,
    pub addr: SocketAddr,
    pub token: String,
}

/// Serves the live view of `c` on 127.0.0.1:`port` (0: any free port) until `stop` resolves.
/// `ready` receives the URL once the socket is bound.
pub async fn serve(
    c: Cluster,
    port: u16,
    ready: tokio::sync::oneshot::Sender<Served>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::HarnessError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| crate::HarnessError::BadSpec {
            field: "--port".into(),
            reason: format!("cannot listen on 127.0.0.1:{port}: {e}"),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| crate::HarnessError::BadSpec {
            field: "--port".into(),
            reason: e.to_string(),
        })?;
    let token = new_token().map_err(|e| crate::HarnessError::BadSpec {
        field: "token".into(),
        reason: format!("reading /dev/urandom: {e}"),
    })?;
    let (snap, cursor) = events::snapshot(&c).await?;
    let (tx, _) = broadcast::channel(256);
    let app = App {
        cluster: c.clone(),
        token: token.clone().into(),
        authority: addr.to_string().into(),
        live: Arc::new(Mutex::new(Live {
            model: Model::default(),
            lines: VecDeque::new(),
            hosts: BTreeMap::new(),
        })),
        tx,
        stirred: Arc::new(Mutex::new(None)),
    };
    for e in &snap {
        app.record(e);
    }
    let feeder = {
        let app = app.clone();
        let mut s = events::follow(&c, cursor);
        tokio::spawn(async move {
            while let Some(e) = s.next().await {
                app.record(&e);
            }
        })
    };
    let hosts = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOSTS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = None;
            loop {
                tick.tick().await;
                // A round is two `docker exec`s per node (the hosts file, the partition
                // rules), ~0.2 of a core with 3 nodes at one round a second: so only while
                // a page is open, and once a second only while the cluster is changing.
                if !app.watched() {
                    last = None;
                    continue;
                }
                let now = tokio::time::Instant::now();
                if app.hosts_due(now, last) {
                    app.refresh_hosts().await;
                    last = Some(now);
                }
            }
        })
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/view.js", get(|| asset("js")))
        .route("/view.css", get(|| asset("css")))
        .route("/api/state", get(state))
        .route("/api/stream", get(stream))
        .route("/api/action", post(act))
        .with_state(app);
    let _ = ready.send(Served {
        url: format!("http://{addr}/?token={token}"),
        addr,
        token,
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await;
    feeder.abort();
    hosts.abort();
    served.map_err(|e| crate::HarnessError::BadSpec {
        field: "view".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..31]));
        assert!(!same(&a, ""));
    }

    #[test]
    fn tables_are_read_each_second_while_the_cluster_changes_else_every_five() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The first read is due at once, stirred or not.
        assert!(reads_due(at(0), None, None));
        // Quiet: a tick (1 s) after a read is not due, five are (a tick late or a bit early).
        assert!(!reads_due(at(1000), Some(at(0)), None));
        assert!(!reads_due(at(4000), Some(at(0)), None));
        assert!(reads_due(at(4990), Some(at(0)), None));
        assert!(reads_due(at(5000), Some(at(0)), None));
        // Within 15 s of an event or action: every tick, even one that comes early.
        assert!(reads_due(at(1000), Some(at(0)), Some(at(500))));
        assert!(reads_due(at(990), Some(at(0)), Some(at(500))));
        assert!(reads_due(at(15_400), Some(at(14_400)), Some(at(500))));
        // 15 s after it: quiet again.
        assert!(!reads_due(at(16_500), Some(at(15_500)), Some(at(500))));
        assert!(reads_due(at(20_500), Some(at(15_500)), Some(at(500))));
    }

    #[test]
    fn hosts_tables_are_bounded_and_name_host0() {
        let file = "127.0.0.1 localhost\n# BEGIN clusterlab\n10.77.0.12 host0 node2\n10.77.0.10 host1 node0\n# END clusterlab\n";
        let t = hosts_table(file);
        assert_eq!(t.host0.as_deref(), Some("node2"));
        assert_eq!(t.lines.len(), 4, "{t:?}");
        assert!(hosts_table("127.0.0.1 localhost\n").error.is_some());
        let mut hostile = String::from("# BEGIN clusterlab\n");
        for _ in 0..1000 {
            hostile.push_str(&format!("10.77.0.10 host0 \x1b[2J{}\n", "x".repeat(500)));
        }
        hostile.push_str("# END clusterlab\n");
        let t = hosts_table(&hostile);
        assert!(t.lines.len() <= MAX_HOSTS_LINES);
        assert!(t
            .lines
            .iter()
            .all(|l| l.chars().count() <= MAX_HOSTS_LINE_CHARS && !l.contains('\x1b')));
    }

    #[test]
    fn the_page_is_embedded_and_uses_no_outside_resource() {
        for text in [INDEX_HTML, VIEW_JS, VIEW_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(INDEX_HTML.contains("view.js") && INDEX_HTML.contains("view.css"));
        // Untrusted text only ever goes in through textContent.
        assert!(!VIEW_JS.contains("innerHTML"));
    }
}
