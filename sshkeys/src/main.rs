//! `sshkeys`: command-line wiring for the sshkeys library (publish, sync, status, verify).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// clusterlab SSH trust through the shared volume: each node publishes its ed25519 user and
/// host keys to <shared>/ssh/{users,hosts}/<node>.pub and trusts what the others published,
/// after checking it. The node's configuration comes from /etc/clusterlab/clusterlab.toml
/// (or --config) and CLUSTERLAB_* environment variables, as for the agent.
#[derive(Parser, Debug)]
#[command(name = "sshkeys", version)]
pub(crate) struct Args {
    /// Configuration file (default: /etc/clusterlab/clusterlab.toml if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate the node's keys if missing (under <data_dir>/ssh) and publish both public
    /// keys to the shared folder, by temp file and rename.
    Publish,
    /// Run as the agent's plugin: create the cluster user, publish the keys, keep
    /// authorized_keys and /etc/ssh/ssh_known_hosts current (file events plus a short poll),
    /// configure sshd (keys only, no root) and run it as a supervised child.
    Sync {
        /// Rebuild the trust files once and exit (no sshd, no watching).
        #[arg(long)]
        once: bool,
        /// Keep the trust files current but do not start sshd.
        #[arg(long)]
        no_sshd: bool,
        /// Fallback poll period in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Show which published keys this node trusts and which files it refuses, and why
    /// (read-only; `sync` applies the same rules).
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check SSH to other nodes with an embedded client: the host key must be the published
    /// one (no trust on first use), the node's user key must log in, and `hostname` must
    /// print the target's name. Exit status 0 only when every target passes.
    Verify {
        /// Check these targets only: node name, hostN alias or IP (repeatable).
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        to: Vec<String>,
        /// Check every node known from the peer list and the published host keys (default).
        #[arg(long)]
        all: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Per-target deadline in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// sshd port on the targets.
        #[arg(long, default_value_t = 22)]
        port: u16,
    },
}

// pub(crate): also the `sshkeys` of the multi-call node binary (node/src/main.rs).
#[tokio::main]
pub(crate) async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    clusterlab_core::init_plugin_tracing();
    let config = clusterlab_core::config::Config::load(args.config.as_deref())?;
    let paths = sshkeys::Paths::from_config(&config);
    match args.command {
        Cmd::Publish => {
            for p in sshkeys::publish(&config, &paths)? {
                println!("{}", p.display());
            }
        }
        Cmd::Status { json } => {
            let st = sshkeys::status(&config, &paths)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.to_text());
            }
        }
        Cmd::Sync {
            once,
            no_sshd,
            poll_ms,
        } => {
            let opts = sshkeys::sync::SyncOptions {
                run_sshd: !no_sshd,
                once,
                poll: Duration::from_millis(poll_ms.max(100)),
                ..Default::default()
            };
            sshkeys::sync::run(&config, &paths, opts, clusterlab_core::shutdown_signal()).await?;
        }
        Cmd::Verify {
            to,
            all: _,
            json,
            timeout_ms,
            port,
        } => {
            let selection = if to.is_empty() {
                sshkeys::verify::Selection::All
            } else {
                sshkeys::verify::Selection::To(to)
            };
            let timeout = Duration::from_millis(timeout_ms);
            let report = sshkeys::verify(&config, &paths, &selection, port, timeout).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.ok {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
