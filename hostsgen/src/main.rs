//! `hostsgen`: command-line wiring for the hosts generator; the work is in the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// clusterlab hosts generator: renders the cluster's hosts block from etcd, leader = host0,
/// followers host1, host2 … in ascending IP order, node names as aliases.
#[derive(Parser, Debug)]
#[command(name = "hostsgen", version)]
pub(crate) struct Args {
    /// Node configuration file (default: /etc/clusterlab/clusterlab.toml if it exists).
    /// CLUSTERLAB_* environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the hosts block once, read from etcd (trusting only the configured peers) or
    /// from a JSON file.
    #[command(after_long_help = FROM_JSON_HELP)]
    Render {
        /// etcd client URLs, comma separated (default: this node's local member from the
        /// configuration).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Render offline from a JSON cluster description instead of etcd ("-" for stdin).
        #[arg(long, value_name = "FILE", conflicts_with = "endpoints")]
        from_json: Option<PathBuf>,
    },
    /// Keep /etc/hosts (and, on the leader, <shared_dir>/hosts) current: read /clusterlab/,
    /// then follow an etcd watch. Runs until SIGTERM; the agent supervises it as a plugin.
    Watch {
        /// etcd client URLs, comma separated (default: this node's local member).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Hosts file to keep current (default: hosts.file from the configuration).
        #[arg(long)]
        hosts_file: Option<PathBuf>,
    },
}

const FROM_JSON_HELP: &str = r#"JSON cluster description for --from-json:
  {
    "leader": {"name": "node2", "ip": "10.77.0.12", "member_id": "8e9e05c52164694d"},
    "nodes": [
      {"name": "node0", "ip": "10.77.0.10", "role": "follower", "member_id": "1", "since": 0},
      {"name": "node1", "ip": "10.77.0.11"},
      {"name": "node2", "ip": "10.77.0.12"}
    ]
  }
"leader" is the value of /clusterlab/leader and may be left out (then there is no host0);
each node is the value of /clusterlab/nodes/<name>, of which only name and ip are required.
Unknown fields are errors. Entries whose name is not a hostname label or whose ip is not
IPv4 are skipped with a warning on stderr. Reading etcd is stricter: only the configured
peers (CLUSTERLAB_PEERS) at their planned IPs, on leases.

Example output:
  # BEGIN clusterlab
  10.77.0.12 host0 node2
  10.77.0.10 host1 node0
  10.77.0.11 host2 node1
  # END clusterlab"#;

// pub(crate): also the `hostsgen` of the multi-call node binary (node/src/main.rs).
#[tokio::main]
pub(crate) async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    clusterlab_core::init_tracing();
    let config = args.config.as_deref();
    match args.command {
        Command::Render {
            from_json: Some(path),
            ..
        } => print!("{}", hostsgen::commands::render_json(&path)?),
        Command::Render { endpoints, .. } => {
            print!(
                "{}",
                hostsgen::commands::render_etcd(endpoints, config).await?
            )
        }
        Command::Watch {
            endpoints,
            hosts_file,
        } => {
            let shutdown = clusterlab_core::shutdown_signal();
            hostsgen::commands::watch(endpoints, hosts_file, config, shutdown).await?
        }
    }
    Ok(())
}
