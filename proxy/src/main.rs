//! `proxy`: the gateway's reverse proxy. Parses arguments, binds, and runs
//! [`proxy::run`] until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Reverse proxy that follows the clusterlab leader: requests go to the leader service of
/// whichever node /clusterlab/leader names (or host0 of a hosts file), switching in place.
#[derive(Parser, Debug)]
#[command(name = "proxy", version)]
pub(crate) struct Args {
    /// etcd client URLs, comma separated; the leader key is watched through all of them.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["follow_file", "relay_to"])]
    endpoints: Vec<String>,
    /// The cluster's peers as `name=ip,name=ip` (what the nodes get as CLUSTERLAB_PEERS): a
    /// leader key is followed only when it names one of them at its address, on a lease
    /// (required with --endpoints); with --follow-file, host0 only when it is one of them at
    /// its address.
    #[arg(long, env = "CLUSTERLAB_PEERS", required_unless_present_any = ["follow_file", "relay_to"])]
    peers: Option<String>,
    /// Follow host0 of the clusterlab block in this hosts file instead of etcd.
    #[arg(long, conflicts_with = "endpoints")]
    follow_file: Option<PathBuf>,
    /// How often the hosts file is read, in milliseconds.
    #[arg(long, default_value_t = 250)]
    follow_interval_ms: u64,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8888")]
    listen: SocketAddr,
    /// Seconds a request may wait for a reachable leader before it is answered 503.
    #[arg(long, default_value_t = 5.0)]
    hold_s: f64,
    /// Port of the leader service on the leader.
    #[arg(long, default_value_t = 8888)]
    upstream_port: u16,
    /// Limit of one connection attempt to the leader, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// Seconds the leader may take to send a response head once it has the request; past
    /// it the client gets 504 naming the leader. WebSocket tunnels are not bounded by it.
    #[arg(long, default_value_t = 30.0)]
    response_timeout_s: f64,
    /// Seconds a client has to send a complete request head, counted from the accept or the
    /// end of the previous response (so it also closes idle keep-alive connections).
    #[arg(long, default_value_t = 10.0)]
    header_timeout_s: f64,
    /// Seconds a client connection may go with no byte moving either way before it is closed
    /// (slow request bodies, clients that stop reading); WebSocket tunnels are exempt.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout_s: f64,
    /// Threads that serve requests. 1 (the default) runs everything on one thread with no
    /// work stealing and no cross-thread wake-ups, as nginx's single worker does: the least
    /// CPU per request, and far more throughput than the leader service can use.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Client connections open at once; beyond it a new one is answered 503 and closed.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Benchmark aid, not a gateway: copy the bytes of every connection to this fixed
    /// address with no HTTP handling and no leader following (`harness bench proxy` uses it
    /// to measure what the extra network hop alone costs).
    #[arg(long, conflicts_with_all = ["endpoints", "follow_file"])]
    relay_to: Option<SocketAddr>,
}

// pub(crate): also the `proxy` of the multi-call node binary (node/src/main.rs).
pub(crate) fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    clusterlab_core::init_tracing();
    anyhow::ensure!(
        (1..=256).contains(&args.threads),
        "--threads must be 1 to 256, not {}",
        args.threads
    );
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.hold_s.is_finite() && args.hold_s >= 0.0,
        "--hold-s must be a non-negative number of seconds"
    );
    let seconds = |name: &str, v: f64| -> anyhow::Result<Duration> {
        anyhow::ensure!(
            v.is_finite() && v > 0.0 && v <= 86_400.0,
            "--{name} must be a positive number of seconds (at most a day), not {v}"
        );
        Ok(Duration::from_secs_f64(v))
    };
    let response_timeout = seconds("response-timeout-s", args.response_timeout_s)?;
    let header_timeout = seconds("header-timeout-s", args.header_timeout_s)?;
    let idle_timeout = seconds("idle-timeout-s", args.idle_timeout_s)?;
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    if let Some(to) = args.relay_to {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        tracing::info!(listen = %args.listen, %to, "byte relay started");
        proxy::relay::run(listener, to, clusterlab_core::shutdown_signal()).await;
        return Ok(());
    }
    let peers = match args.peers.as_deref() {
        Some(p) => {
            clusterlab_core::schema::parse_peers(p).with_context(|| format!("--peers {p:?}"))?
        }
        None => Vec::new(),
    };
    let follow = match args.follow_file {
        Some(path) => proxy::Follow::File {
            path,
            interval: Duration::from_millis(args.follow_interval_ms.max(10)),
            peers,
        },
        None => proxy::Follow::Etcd {
            endpoints: args.endpoints,
            peers,
        },
    };
    let config = proxy::ProxyConfig {
        follow,
        upstream_port: args.upstream_port,
        settings: proxy::Settings {
            hold: Duration::from_secs_f64(args.hold_s),
            connect_timeout: Duration::from_millis(args.connect_timeout_ms.max(1)),
            response_timeout,
            header_timeout,
            idle_timeout,
            max_connections: args.max_connections,
            ..proxy::Settings::default()
        },
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, follow = ?config.follow, hold_s = args.hold_s, "proxy started");
    proxy::run(config, listener, clusterlab_core::shutdown_signal()).await;
    Ok(())
}
