//! clusterlab-core: what every node binary (agent, hostsgen, sshkeys, proxy) shares.
//!
//! # Layout
//! - [`schema`]: the etcd key schema and the validated cluster view read from it.
//! - [`hosts`]: the clusterlab block of a hosts file: its markers, the one parser and the one
//!   renderer of its `<ip> hostN name` lines.
//! - [`config`] (feature `config`): node configuration (figment: defaults ← TOML ←
//!   `CLUSTERLAB_*`). Crates that read no configuration (the proxy) leave the feature off
//!   and do not pull figment.
//! - [`etcd`]: clusterlab's etcd connection timeouts, and (feature `etcd`) the etcd-client
//!   connection that applies them. The proxy, which reads etcd through its HTTP/JSON gateway,
//!   uses the timeouts only and leaves the feature off (no etcd-client, tonic or axum).
//! - [`fsread`]: bounded reads of small files other nodes can write (no symlink, FIFO,
//!   device or oversized file).
//! - [`backoff`]: the restart backoff shared by the agent's supervisor and sshkeys.
//! - [`html_escape`]: text made safe inside HTML (the leader page, the harness's reports).
//! - [`shutdown_signal`] and [`init_tracing`]: process set-up of every node binary.

pub mod backoff;
#[cfg(feature = "config")]
pub mod config;
pub mod etcd;
pub mod fsread;
pub mod hosts;
pub mod schema;

/// Text made safe for HTML character data and attribute values: `& < > " '` escaped.
/// Control characters are the caller's business (the harness cleans submission text first).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

/// Sets up logging for a plugin whose stderr, when the agent runs it, is a pipe into the
/// agent's own log, which adds its own timestamp: on a terminal as [`init_tracing`], on a
/// pipe plain text with no time and no colours. Filtered by `RUST_LOG` (default `info`).
pub fn init_plugin_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        fmt.try_init()
    } else {
        fmt.with_ansi(false).without_time().try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_escape_leaves_no_markup() {
        assert_eq!(
            super::html_escape(r#"<a href='x'>"&"</a>"#),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(super::html_escape("node1 10.77.0.11"), "node1 10.77.0.11");
    }
}
