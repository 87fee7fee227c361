//! `agent`: the node's main process. Parses arguments, loads the configuration and runs the
//! node until SIGTERM or SIGINT.

use clap::Parser;
use std::path::PathBuf;

/// clusterlab node agent: runs etcd, keeps this node's lease-backed key and, while this
/// node's etcd member is the raft leader, the leader key; serves the health API on :8008 and
/// supervises the plugin processes listed in the configuration.
#[derive(Parser, Debug)]
#[command(name = "agent", version)]
pub(crate) struct Args {
    /// Configuration file (default: /etc/clusterlab/clusterlab.toml if it exists).
    /// CLUSTERLAB_* environment variables override it, e.g. CLUSTERLAB_LEASE_TTL_S=5.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML-like debug output and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the flags etcd would be started with and exit.
    #[arg(long)]
    etcd_flags: bool,
}

// pub(crate): also the `agent` of the multi-call node binary (node/src/main.rs).
#[tokio::main]
pub(crate) async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    agent::init_tracing();
    let config = agent::Config::load(args.config.as_deref())?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    if args.etcd_flags {
        for f in agent::etcd::etcd_args(&config) {
            println!("{f}");
        }
        return Ok(());
    }
    agent::run(config, agent::shutdown_signal()).await?;
    Ok(())
}
