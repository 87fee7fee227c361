//! The built-in leader service: a small HTTP service on `leader_service.port`.
//!
//! - `/`: an HTML page with the node's name and role, the clusterlab block of the hosts file
//!   and the live nodes from etcd, so a browser behind the proxy shows which node serves.
//! - `/api/status`: the same facts as JSON (`name`, `ip`, `role`, …), for checks and benches.
//! - `/ws/echo`: a WebSocket that echoes every message, for checking upgrades end to end.
//!
//! Stopping it closes the listener at once (so the node stops answering on the port), tells
//! open WebSockets to close, and gives in-flight requests the grace period before the server
//! task is aborted.

use super::{Launcher, LeaderServiceError};
use crate::node::NodeStatus;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clusterlab_core::config::Config;
use clusterlab_core::fsread::{read_small_file, SmallFileError, MAX_HOSTS_FILE_BYTES};
use clusterlab_core::html_escape as escape;
use clusterlab_core::schema::{self, ClusterView, Member};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the page waits for etcd before showing the error instead of the nodes.
const ETCD_TIMEOUT: Duration = Duration::from_secs(1);

/// Page views within this long of the last etcd read share its result (or its error), so a
/// flood of `GET /` costs etcd at most two reads a second. The reads are serializable: the
/// local member answers from its own copy without a round through raft; on the leader, where
/// the page is served, that copy is current but for writes still in flight.
const VIEW_CACHE_FOR: Duration = Duration::from_millis(500);

/// Page views within this long of the last read of the hosts file share it. Read anew for
/// every view, the file cost a trip to tokio's blocking threads per request: the leader spent
/// ~60 µs of CPU on a `GET /` against ~15 on `/api/status` (`harness bench proxy`).
const HOSTS_CACHE_FOR: Duration = Duration::from_millis(500);

/// Why the page shows no hosts block.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostsBlockError {
    #[error("cannot read: {0}")]
    Read(Arc<SmallFileError>),
    #[error("the read did not finish: {0}")]
    Lost(String),
    #[error("no complete clusterlab block yet")]
    Incomplete,
}

/// Why the page shows no live nodes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ViewError {
    #[error("connecting to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: Arc<etcd_client::Error>,
    },
    #[error("reading {prefix} timed out")]
    ReadTimeout { prefix: &'static str },
    #[error("reading {prefix}: {source}")]
    Read {
        prefix: &'static str,
        source: Arc<etcd_client::Error>,
    },
}

/// The live nodes and the leader key's node, or why etcd could not be read.
pub type NodesView = Result<(Vec<Member>, Option<String>), ViewError>;

/// The last read of something the page shows and when it was made. One read at a time:
/// concurrent page views wait for the read in flight and share its result.
#[derive(Debug)]
pub struct Cached<T> {
    ttl: Duration,
    slot: Mutex<Option<(tokio::time::Instant, T)>>,
}

/// The page's etcd read, shared for [`VIEW_CACHE_FOR`].
pub type ViewCache = Cached<NodesView>;

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The cached value if it is younger than the cache's ttl, else what `read` returns now.
    pub async fn get<F, Fut>(&self, read: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref() {
            if at.elapsed() < self.ttl {
                return value.clone();
            }
        }
        let value = read().await;
        *slot = Some((tokio::time::Instant::now(), value.clone()));
        value
    }
}

/// The lines of the hosts file's clusterlab block, trimmed, as the page shows them.
pub type BlockLines = Vec<String>;

/// The block's lines, or why they could not be read.
pub type HostsBlock = Result<BlockLines, HostsBlockError>;

/// Reads the clusterlab block of the hosts file at `path`: a regular file of at most
/// [`MAX_HOSTS_FILE_BYTES`] (whatever wrote it), read on a blocking thread.
async fn read_hosts_block(path: PathBuf) -> HostsBlock {
    let text = tokio::task::spawn_blocking(move || read_small_file(&path, MAX_HOSTS_FILE_BYTES))
        .await
        .map_err(|e| HostsBlockError::Lost(e.to_string()))?
        .map_err(|e| HostsBlockError::Read(Arc::new(e)))?;
    match clusterlab_core::hosts::block_lines(&text) {
        Some(lines) => Ok(lines.into_iter().map(String::from).collect()),
        None => Err(HostsBlockError::Incomplete),
    }
}

/// What the page shows; gathered by the handler, rendered by [`render_page`].
#[derive(Debug, Clone)]
pub struct Page {
    pub name: String,
    pub ip: String,
    pub role: String,
    pub term: u64,
    pub hosts_file: String,
    /// The block's lines, or why they could not be read.
    pub hosts: HostsBlock,
    /// Live nodes and the leader key's node, or why etcd could not be read.
    pub nodes: Result<(Vec<Member>, Option<String>), ViewError>,
}

/// The HTML page; every value from outside is escaped.
pub fn render_page(p: &Page) -> String {
    let mut h = String::new();
    let title = format!("clusterlab: {} ({})", escape(&p.name), escape(&p.role));
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:0 1em 0 0;text-align:left}}\
         pre{{background:#f4f4f4;padding:.5em}}</style></head><body>\n\
         <h1>{name}</h1>\n<p>Served by <b>{name}</b> ({ip}), role <b>{role}</b>, raft term {term}.</p>\n",
        name = escape(&p.name),
        ip = escape(&p.ip),
        role = escape(&p.role),
        term = p.term,
    );
    let _ = writeln!(h, "<h2>Hosts block ({})</h2>", escape(&p.hosts_file));
    match &p.hosts {
        Ok(lines) => {
            let body: Vec<String> = lines.iter().map(|l| escape(l)).collect();
            let _ = writeln!(h, "<pre>{}</pre>", body.join("\n"));
        }
        Err(e) => {
            let _ = writeln!(h, "<p><i>{}</i></p>", escape(&e.to_string()));
        }
    }
    h.push_str("<h2>Live nodes</h2>\n");
    match &p.nodes {
        Ok((nodes, leader)) => {
            h.push_str("<table><tr><th>name</th><th>ip</th><th>role</th><th>member</th></tr>\n");
            for m in nodes {
                // A dead leader's record outlives it until its lease expires; say so rather
                // than show two leaders.
                let mark = if leader.as_deref() == Some(m.name.as_str()) {
                    " (leader key)"
                } else if m.role == clusterlab_core::schema::Role::Leader {
                    " (stale: record waits for its lease to expire)"
                } else {
                    ""
                };
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}{mark}</td><td>{}</td></tr>",
                    escape(&m.name),
                    m.ip,
                    m.role,
                    escape(&m.member_id)
                );
            }
            h.push_str("</table>\n");
        }
        Err(e) => {
            let _ = writeln!(h, "<p><i>etcd: {}</i></p>", escape(&e.to_string()));
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[derive(Clone)]
struct AppState {
    name: String,
    ip: String,
    hosts_file: PathBuf,
    endpoint: String,
    /// The configured peers: the only nodes the page takes from etcd.
    peers: Arc<Vec<clusterlab_core::schema::Peer>>,
    /// Refused entries already logged.
    rejects: Arc<std::sync::Mutex<schema::RejectLog>>,
    status: watch::Receiver<NodeStatus>,
    etcd: Arc<Mutex<Option<etcd_client::Client>>>,
    /// The last read of the live nodes, shared by page views.
    view: Arc<ViewCache>,
    /// The last read of the hosts file's block, shared by page views.
    hosts: Arc<Cached<HostsBlock>>,
    /// Cancelled when the service stops: open WebSockets close on it.
    closing: CancellationToken,
}

/// The JSON of `/api/status`.
#[derive(Debug, Serialize)]
struct ApiStatus {
    name: String,
    ip: String,
    role: String,
    member_id: String,
    raft_term: u64,
    service: &'static str,
    unix_ms: u64,
}

/// The built-in service's routes. `closing` ends open WebSockets when cancelled.
pub fn router(
    config: &Config,
    status: watch::Receiver<NodeStatus>,
    closing: CancellationToken,
) -> Router {
    let state = AppState {
        name: config.name.clone(),
        ip: config.ip.clone(),
        hosts_file: config.hosts.file.clone(),
        endpoint: config.local_endpoint(),
        peers: Arc::new(config.peer_list()),
        rejects: Arc::default(),
        status,
        etcd: Arc::new(Mutex::new(None)),
        view: Arc::new(ViewCache::new(VIEW_CACHE_FOR)),
        hosts: Arc::new(Cached::new(HOSTS_CACHE_FOR)),
        closing,
    };
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(api_status))
        .route("/ws/echo", get(ws_echo))
        .with_state(state)
}

fn role_of(s: &NodeStatus) -> String {
    s.role.map(|r| r.to_string()).unwrap_or("unknown".into())
}

async fn api_status(State(st): State<AppState>) -> Json<ApiStatus> {
    let s = st.status.borrow().clone();
    Json(ApiStatus {
        name: st.name.clone(),
        ip: st.ip.clone(),
        role: role_of(&s),
        member_id: s.member_id,
        raft_term: s.raft_term,
        service: "builtin",
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    })
}

async fn read_view(st: &AppState) -> Result<ClusterView, ViewError> {
    // The lock only guards making the client; clones share its channel, so page views do
    // not queue behind each other's reads.
    let mut client = {
        let mut guard = st.etcd.lock().await;
        match guard.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = tokio::time::timeout(
                    ETCD_TIMEOUT,
                    clusterlab_core::etcd::connect(&st.endpoint),
                )
                .await
                .map_err(|_| ViewError::ConnectTimeout {
                    endpoint: st.endpoint.clone(),
                })?
                .map_err(|e| ViewError::Connect {
                    endpoint: st.endpoint.clone(),
                    source: Arc::new(e),
                })?;
                *guard = Some(c.clone());
                c
            }
        }
    };
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_serializable();
    let resp =
        match tokio::time::timeout(ETCD_TIMEOUT, client.get(schema::PREFIX, Some(opts))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(ViewError::Read {
                    prefix: schema::PREFIX,
                    source: Arc::new(e),
                })
            }
            Err(_) => {
                return Err(ViewError::ReadTimeout {
                    prefix: schema::PREFIX,
                })
            }
        };
    let kvs = resp.kvs().iter().map(|kv| schema::RawKv {
        key: kv.key_str().unwrap_or(""),
        value: kv.value(),
        lease: kv.lease(),
        mod_revision: kv.mod_revision(),
    });
    let (view, errors) = ClusterView::from_etcd(kvs, &st.peers);
    // Once per refused key and revision, not once per page view.
    let fresh: Vec<String> = match st.rejects.lock() {
        Ok(mut log) => log.fresh(&errors).iter().map(|r| r.to_string()).collect(),
        Err(_) => Vec::new(),
    };
    for e in fresh {
        tracing::warn!(error = %e, "skipping invalid cluster entry");
    }
    Ok(view)
}

async fn page(State(st): State<AppState>) -> Html<String> {
    let s = st.status.borrow().clone();
    let hosts = st
        .hosts
        .get(|| read_hosts_block(st.hosts_file.clone()))
        .await;
    let nodes = st
        .view
        .get(|| async {
            read_view(&st)
                .await
                .map(|v| (v.nodes, v.leader.map(|l| l.name)))
        })
        .await;
    Html(render_page(&Page {
        name: st.name.clone(),
        ip: st.ip.clone(),
        role: role_of(&s),
        term: s.raft_term,
        hosts_file: st.hosts_file.display().to_string(),
        hosts,
        nodes,
    }))
}

async fn ws_echo(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let closing = st.closing.clone();
    ws.on_upgrade(move |socket| echo(socket, closing))
        .into_response()
}

async fn echo(mut socket: WebSocket, closing: CancellationToken) {
    loop {
        tokio::select! {
            _ = closing.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by the library
            },
        }
    }
}

/// Starts the built-in service on `leader_service.port` of every interface.
pub struct Builtin {
    config: Config,
    status: watch::Receiver<NodeStatus>,
    grace: Duration,
}

impl Builtin {
    pub fn new(config: &Config, status: watch::Receiver<NodeStatus>, grace: Duration) -> Self {
        Builtin {
            config: config.clone(),
            status,
            grace,
        }
    }
}

/// A running built-in service.
pub struct RunningBuiltin {
    closing: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Launcher for Builtin {
    type Running = RunningBuiltin;

    async fn start(&mut self) -> Result<RunningBuiltin, LeaderServiceError> {
        let port = self.config.leader_service.port;
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| LeaderServiceError::Bind { port, source })?;
        let closing = CancellationToken::new();
        let app = router(&self.config, self.status.clone(), closing.clone());
        let shutdown = closing.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        Ok(RunningBuiltin { closing, task })
    }

    async fn stop(&mut self, mut running: RunningBuiltin) {
        running.closing.cancel();
        if tokio::time::timeout(self.grace, &mut running.task)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = self.grace.as_secs(),
                "leader service connections still open after the grace period; closing them"
            );
            running.task.abort();
            let _ = running.task.await;
        }
    }

    async fn ended(running: &mut RunningBuiltin) -> String {
        match (&mut running.task).await {
            Ok(Ok(())) => "server returned".into(),
            Ok(Err(e)) => format!("server failed: {e}"),
            Err(e) => format!("server task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlab_core::schema::Role;
    use futures::{SinkExt, StreamExt};
    use std::net::Ipv4Addr;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_page_views_shares_one_etcd_read_per_cache_period() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = Arc::new(ViewCache::new(VIEW_CACHE_FOR));
        let reads = Arc::new(AtomicUsize::new(0));
        let view = |cache: Arc<ViewCache>, reads: Arc<AtomicUsize>| async move {
            cache
                .get(|| async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    // A read that takes a while: views arriving meanwhile wait for it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(ViewError::ReadTimeout {
                        prefix: schema::PREFIX,
                    })
                })
                .await
        };
        let views: Vec<_> = (0..200)
            .map(|_| tokio::spawn(view(cache.clone(), reads.clone())))
            .collect();
        for v in views {
            assert!(v.await.unwrap().is_err());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "200 concurrent views");
        tokio::time::sleep(VIEW_CACHE_FOR / 2).await;
        view(cache.clone(), reads.clone()).await.unwrap_err();
        assert_eq!(reads.load(Ordering::SeqCst), 1, "within the cache period");
        tokio::time::sleep(VIEW_CACHE_FOR).await;
        view(cache.clone(), reads.clone()).await.unwrap_err();
        assert_eq!(reads.load(Ordering::SeqCst), 2, "after the cache period");
    }

    #[test]
    fn page_escapes_everything_from_outside() {
        let p = Page {
            name: "node0".into(),
            ip: "10.77.0.10".into(),
            role: "leader".into(),
            term: 3,
            hosts_file: "/etc/hosts".into(),
            hosts: Ok(vec!["10.0.0.1 host0 <script>".into()]),
            nodes: Ok((
                vec![Member {
                    name: "node0".into(),
                    ip: Ipv4Addr::new(10, 77, 0, 10),
                    role: Role::Leader,
                    member_id: "a&b".into(),
                }],
                Some("node0".into()),
            )),
        };
        let html = render_page(&p);
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("a&amp;b"), "{html}");
        assert!(html.contains("leader (leader key)"), "{html}");
        assert!(html.contains("raft term 3"), "{html}");
        let mut stale = p.clone();
        if let Ok((nodes, leader)) = &mut stale.nodes {
            nodes.push(Member {
                name: "node1".into(),
                ip: Ipv4Addr::new(10, 77, 0, 11),
                role: Role::Leader,
                member_id: "b".into(),
            });
            *leader = Some("node0".into());
        }
        let html = render_page(&stale);
        assert!(html.contains("leader (stale: "), "{html}");
        let p = Page {
            hosts: Err(HostsBlockError::Read(Arc::new(SmallFileError::TooLarge {
                path: "/etc/<hosts>".into(),
                limit: 9,
            }))),
            nodes: Err(ViewError::ReadTimeout {
                prefix: schema::PREFIX,
            }),
            ..p
        };
        let html = render_page(&p);
        assert!(
            html.contains(
                "cannot read: refusing /etc/&lt;hosts&gt;: larger than the limit of 9 bytes"
            ),
            "{html}"
        );
        assert!(
            html.contains("etcd: reading /clusterlab/ timed out"),
            "{html}"
        );
    }

    #[tokio::test]
    async fn the_hosts_block_is_read_bounded_and_shared_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let block =
            "127.0.0.1 localhost\n# BEGIN clusterlab\n10.77.0.11 host0 node1\n# END clusterlab\n";
        std::fs::write(&path, block).unwrap();
        assert_eq!(
            read_hosts_block(path.clone()).await.unwrap(),
            vec!["10.77.0.11 host0 node1".to_string()]
        );
        // Whatever wrote the file, the page reads at most the limit, and no symbolic link.
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_HOSTS_FILE_BYTES + 1).unwrap();
        let e = read_hosts_block(big).await.unwrap_err();
        assert!(e.to_string().contains("larger than the limit"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = read_hosts_block(link).await.unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::write(
            dir.path().join("half"),
            "# BEGIN clusterlab\n10.77.0.11 host0 node1\n",
        )
        .unwrap();
        assert!(matches!(
            read_hosts_block(dir.path().join("half")).await,
            Err(HostsBlockError::Incomplete)
        ));

        // Views within the cache period share a read; a later view sees the new block.
        let cache = Cached::new(Duration::from_millis(200));
        let first = cache.get(|| read_hosts_block(path.clone())).await.unwrap();
        std::fs::write(
            &path,
            block.replace("10.77.0.11 host0 node1", "10.77.0.12 host0 node2"),
        )
        .unwrap();
        assert_eq!(
            cache.get(|| read_hosts_block(path.clone())).await.unwrap(),
            first
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            cache.get(|| read_hosts_block(path.clone())).await.unwrap(),
            vec!["10.77.0.12 host0 node2".to_string()]
        );
    }

    fn test_config(port: u16, hosts: PathBuf) -> Config {
        let mut c = Config {
            name: "node3".into(),
            ip: "10.77.0.13".into(),
            ..Config::default()
        };
        c.leader_service.port = port;
        c.hosts.file = hosts;
        // Nothing listens here: the page must show the etcd error, not hang.
        c.etcd.client_port = 1;
        c
    }

    fn status() -> NodeStatus {
        NodeStatus {
            name: "node3".into(),
            ip: "10.77.0.13".into(),
            member_id: "abc".into(),
            role: Some(Role::Leader),
            raft_leader: Some("abc".into()),
            raft_term: 4,
            lease_id: None,
            etcd_ok: true,
            last_error: None,
            leader_confirmed_at: None,
            cut_off_at: None,
        }
    }

    async fn free_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    async fn get(port: u16, path: &str) -> Result<String, std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn serves_page_status_and_echo_then_stops_answering() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "127.0.0.1 localhost\n# BEGIN clusterlab\n10.77.0.13 host0 node3\n# END clusterlab\n",
        )
        .unwrap();
        let (_tx, rx) = watch::channel(status());
        // A port found free can be taken by another test before the service binds it:
        // try a few.
        let mut attempt = 0;
        let (port, mut b, running) = loop {
            let port = free_port().await;
            let mut b = Builtin::new(
                &test_config(port, hosts.clone()),
                rx.clone(),
                Duration::from_secs(2),
            );
            match b.start().await {
                Ok(running) => break (port, b, running),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("port {port} taken ({e}); trying another");
                }
                Err(e) => panic!("cannot start the built-in service: {e}"),
            }
        };

        let api = get(port, "/api/status").await.unwrap();
        assert!(api.starts_with("HTTP/1.1 200"), "{api}");
        let json: serde_json::Value =
            serde_json::from_str(api.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["name"], "node3");
        assert_eq!(json["ip"], "10.77.0.13");
        assert_eq!(json["role"], "leader");

        let page = get(port, "/").await.unwrap();
        assert!(page.contains("10.77.0.13 host0 node3"), "{page}");
        assert!(page.contains("etcd: "), "{page}");

        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/echo"))
                .await
                .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), "hello");

        // Stopping closes the open WebSocket and the port, well within the grace period.
        let t = std::time::Instant::now();
        b.stop(running).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Either a Close frame, an error or the end of the stream: the socket is gone.
        tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(m) = ws.next().await {
                if matches!(
                    m,
                    Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_)
                ) {
                    break;
                }
            }
        })
        .await
        .expect("the WebSocket stayed open after stop");
        let err = get(port, "/api/status").await;
        assert!(err.is_err(), "still answering after stop: {err:?}");
    }

    #[tokio::test]
    async fn a_busy_port_is_a_bind_error() {
        let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (_tx, rx) = watch::channel(status());
        let mut b = Builtin::new(
            &test_config(port, "/nonexistent".into()),
            rx,
            Duration::from_secs(1),
        );
        match b.start().await {
            Err(LeaderServiceError::Bind { port: p, .. }) => assert_eq!(p, port),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("bound a busy port"),
        }
    }
}
