//! clusterlab's gateway: a reverse proxy that always sends users to the current leader.
//!
//! The homework's version polled a file every 5 s and restarted a proxy whenever the leader
//! changed, dropping every open connection and WebSocket, crashing while the file did not
//! exist, and trusting a stale entry. This one follows the leader continuously and switches
//! in place: the upstream is a value in a watch channel, read by each request, so a switch
//! never restarts anything; requests that arrive while there is no reachable leader are held
//! (up to `hold`) and then retried on the next leader, and only then answered 503.
//!
//! # Layout
//! - [`upstream`]: the current upstream, switch history and counters (`/__proxy/status`).
//! - [`follow`]: feeding the upstream from etcd's `/clusterlab/leader` (a watch through every
//!   endpoint, resynced when lost) or from the hosts block of a file.
//! - [`gateway`]: etcd's HTTP/JSON gateway (`/v3/kv/range`, `/v3/watch`), read with hyper.
//! - [`fast`]: plain keep-alive GET/HEAD/OPTIONS forwarded in the client connection's task;
//!   everything else goes to [`forward`] through hyper.
//! - [`forward`]: forwarding one request: hold, retry, stream, WebSocket tunnels.
//! - [`pool`]: keep-alive connections to upstreams.
//! - [`limits`]: the cap on client connections, the header and idle timeouts.
//! - [`metrics`]: `/__proxy/metrics` in Prometheus (OpenMetrics) text.
//! - [`relay`]: a plain byte relay, the benchmark's floor for the cost of the extra hop.
//! - [`serve`] / [`run`]: the accept loop and the whole proxy.

pub mod fast;
pub mod follow;
pub mod forward;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod relay;
pub mod upstream;

pub use forward::{Proxy, Settings, STATUS_PATH, UPSTREAM_HEADER};
pub use upstream::{StatusReport, Tracker, Upstream};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Body type of everything the proxy sends and receives: streamed, never buffered.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

/// Where the proxy learns who the leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Watch `/clusterlab/leader` through these etcd client URLs, trusting only records of
    /// these peers at their planned addresses, on a lease.
    Etcd {
        endpoints: Vec<String>,
        peers: Vec<clusterlab_core::schema::Peer>,
    },
    /// Read `host0` from the clusterlab block of this hosts file every `interval`; with
    /// `peers`, only a configured peer at its planned address is followed.
    File {
        path: PathBuf,
        interval: Duration,
        peers: Vec<clusterlab_core::schema::Peer>,
    },
}

/// Everything the proxy needs besides its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub follow: Follow,
    /// Port of the leader service on the leader's address.
    pub upstream_port: u16,
    pub settings: Settings,
}

/// Connections still open at shutdown get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the proxy on `listener` until `shutdown` resolves.
pub async fn run(config: ProxyConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let source = match &config.follow {
        Follow::Etcd { .. } => "etcd".to_string(),
        Follow::File { path, .. } => format!("file:{}", path.display()),
    };
    let tracker = Arc::new(Tracker::new(source));
    let stop = CancellationToken::new();
    let follower = match config.follow {
        Follow::Etcd { endpoints, peers } => tokio::spawn(follow::follow_etcd(
            endpoints,
            peers,
            config.upstream_port,
            tracker.clone(),
            stop.clone(),
        )),
        Follow::File {
            path,
            interval,
            peers,
        } => tokio::spawn(follow::follow_file(
            path,
            peers,
            config.upstream_port,
            interval,
            tracker.clone(),
            stop.clone(),
        )),
    };
    let proxy = Proxy::new(tracker, config.settings);
    let pruner = tokio::spawn(proxy.clone().prune_on_switch());
    serve(listener, proxy, shutdown).await;
    stop.cancel();
    let _ = follower.await;
    pruner.abort();
}

/// Accepts connections and answers them with `proxy` until `shutdown` resolves; then lets
/// open connections finish (bounded) and returns. The proxy's settings bound every client
/// connection: the cap on open ones, the header timeout and the idle timeout.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    // Every connection holds a receiver: the flag tells it to finish, and the sender's
    // `closed()` says when all have.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = *proxy.settings();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.idle_timeout)
        .keep_alive_timeout(settings.header_timeout);
    let builder = Arc::new(builder);
    let slots = proxy.slots().clone();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.take() else {
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = limits::Activity::new();
        let io = limits::Watched::new(stream, activity.clone(), Some(slot));
        // The watchdog runs in a task of its own, woken only by its own timer: raced in the
        // connection's task, it would be polled again at every wake-up of every request. It
        // ends the connection by aborting its task; the connection's end ends it.
        let done = CancellationToken::new();
        let guard = done.clone().drop_guard();
        let conn = fast::connection(proxy.clone(), io, peer, builder.clone(), stop_rx.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            conn.await;
        });
        let abort = task.abort_handle();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = done.cancelled() => {}
                why = limits::watchdog(&activity, settings.header_timeout, settings.idle_timeout) => {
                    tracing::debug!(%peer, ?why, "closing a client connection");
                    abort.abort();
                }
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, stop_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Tells a connection beyond the cap why it is closed, without waiting on it (a full send
/// buffer on a fresh socket is not worth a task; the close is what protects the proxy).
fn refuse(stream: tokio::net::TcpStream) {
    let _ = stream.try_write(limits::REFUSAL);
}
