//! clusterlab's node agent: the main process of every node container.
//!
//! # Layout
//! - [`config`]: node configuration (figment: defaults ← TOML ← `CLUSTERLAB_*`), shared by
//!   every plugin that runs on a node.
//! - [`schema`]: the etcd key schema and the validated cluster view read from it.
//! - [`etcd`]: etcd's flags, the child process and readiness.
//! - [`node`]: the node's life: lease, node key, leadership tracking, leader key, shutdown.
//! - [`health`]: the health API on :8008.
//! - [`supervise`]: plugin processes, restarted with backoff.
//! - [`leader_service`]: the service that runs on the leader only.

pub mod config;
pub mod etcd;
pub mod health;
pub mod leader_service;
pub mod node;
pub mod schema;
pub mod supervise;

pub use config::Config;
pub use node::run;

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Sets up logging to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Plugins log through a pipe into the agent's log: colour codes only on a terminal.
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
