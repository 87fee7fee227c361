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

/// The log filter: `RUST_LOG` as a default level and levels per module (`warn`,
/// `hostsgen=debug,info`), `info` when it is unset or unreadable. (A `Targets` filter, not
/// an `EnvFilter`: the same syntax but for span and field filters, which nobody uses here,
/// and no regular-expression engine to compile into every program.)
pub fn log_filter() -> tracing_subscriber::filter::Targets {
    parse_log_filter(std::env::var("RUST_LOG").ok().as_deref())
}

fn parse_log_filter(spec: Option<&str>) -> tracing_subscriber::filter::Targets {
    spec.and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    })
}

/// Sets up logging to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Plugins log through a pipe into the agent's log: colour codes only on a terminal.
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .finish()
        .with(log_filter())
        .try_init();
}

/// Sets up logging for a plugin whose stderr, when the agent runs it, is a pipe into the
/// agent's own log, which adds its own timestamp: on a terminal as [`init_tracing`], on a
/// pipe plain text with no time and no colours. Filtered by `RUST_LOG` (default `info`).
pub fn init_plugin_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        fmt.finish().with(log_filter()).try_init()
    } else {
        fmt.with_ansi(false)
            .without_time()
            .finish()
            .with(log_filter())
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_filter_reads_levels_per_module_and_defaults_to_info() {
        use tracing::Level;
        let f = super::parse_log_filter(Some("hostsgen=debug,warn"));
        assert!(f.would_enable("hostsgen::watch", &Level::DEBUG));
        assert!(!f.would_enable("agent", &Level::INFO));
        assert!(f.would_enable("agent", &Level::WARN));
        for unset in [None, Some("=garbage=")] {
            let f = super::parse_log_filter(unset);
            assert!(f.would_enable("agent", &Level::INFO), "{unset:?}");
            assert!(!f.would_enable("agent", &Level::DEBUG), "{unset:?}");
        }
    }

    #[test]
    fn html_escape_leaves_no_markup() {
        assert_eq!(
            super::html_escape(r#"<a href='x'>"&"</a>"#),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(super::html_escape("node1 10.77.0.11"), "node1 10.77.0.11");
    }
}
