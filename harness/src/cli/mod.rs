//! The `harness` command line: argument types (clap) and the code behind each subcommand.
//! This is the only layer that knows clap and `anyhow`: it parses flags into the library's
//! plain option structs, calls the library, prints, and turns typed errors into the exit
//! message. Nothing in the library imports it.

use crate::cluster::{self, Cluster, ClusterSpec};
use crate::images::{ensure_images, ImageOptions};
use crate::names::{Subnet, DEFAULT_CLUSTER, DEFAULT_SUBNET};
use clap::{Args, Parser, Subcommand};

mod bench;
mod events;
mod faults;
mod grade;
mod node;
mod view;

pub use bench::{
    BenchClusterArgs, BenchCommand, BenchFailoverArgs, BenchHostsArgs, BenchProxyArgs,
};
pub use events::EventsArgs;
pub use faults::{HealArgs, PartitionArgs};
pub use node::{line_plugin, LogsArgs, SshArgs, CLUSTER_USER};
use std::path::PathBuf;
use std::time::Duration;
pub use view::{state_file as view_state_file, ViewArgs};

/// clusterlab harness: build the node image with no registry, run an N-node etcd cluster in
/// Docker, break it (kill leaders and followers) and see it keep working.
///
/// Typical session:
///   harness up                 # builds what is missing, starts 3 nodes, prints the status
///   harness status             # etcd's own view and the /clusterlab/ keys
///   harness kill leader        # SIGKILL the raft leader's container
///   harness ssh node1          # a shell on node1 as the cluster user admin
///   harness logs node1         # its agent's and plugins' output
///   harness events --follow    # kills, keys, leader and raft term changes as they happen
///   harness view               # the live page (harness up already started one)
///   harness start node1        # bring a node back with its identity
///   harness down               # remove every container, network and volume of the cluster
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build the base image (from Debian packages) and the node image if they are missing.
    Images(ImagesArgs),
    /// Bring up a cluster and print its status and how to reach the nodes.
    Up(UpArgs),
    /// Show each node's container state, etcd role and keys.
    Status(StatusArgs),
    /// SIGKILL a node: `leader`, `follower` or a node name such as `node1`.
    Kill(TargetArgs),
    /// Start a stopped or killed node again (it rejoins with its data and keys).
    Start(TargetArgs),
    /// Cut traffic both ways between GROUP (e.g. node0,node1) and the rest of the cluster
    /// (or --from GROUP), replacing any earlier cut; the harness still reaches every node.
    Partition(PartitionArgs),
    /// Remove every partition rule from every node.
    Heal(HealArgs),
    /// Remove every container, network and volume labelled with the cluster's name.
    Down(NameArgs),
    /// Measure how fast the cluster follows faults.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Grade a submission of the assignment (or clusterlab itself) with a profile: every
    /// scenario once on a fresh cluster; writes report.json, junit.xml, results.json and report.html.
    Grade(grade::GradeArgs),
    /// A login shell (or a command) on a node as the cluster user `admin`, directly or
    /// over the cluster's own SSH from another node (--via).
    #[command(long_about = node::SSH_HELP, verbatim_doc_comment)]
    Ssh(SshArgs),
    /// A node's output: the agent's log with every plugin's lines (--plugin NAME to filter).
    #[command(long_about = node::LOGS_HELP, verbatim_doc_comment)]
    Logs(LogsArgs),
    /// One time-stamped line per change: container kills/deaths/starts, node and leader keys,
    /// raft term and leader (--follow: until Ctrl-C).
    #[command(long_about = events::EVENTS_HELP, verbatim_doc_comment)]
    Events(EventsArgs),
    /// A live page of the cluster on 127.0.0.1 (URL with a per-run token): nodes by role and
    /// state, hosts tables, events, and kill/start/isolate/heal buttons.
    #[command(long_about = view::VIEW_HELP, verbatim_doc_comment)]
    View(ViewArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ImagesArgs {
    /// Rebuild the base and node images even if they exist.
    #[arg(long)]
    pub rebuild: bool,
    /// Use this base image if it is present locally (e.g. debian:bookworm-slim).
    #[arg(long)]
    pub base_image: Option<String>,
    /// Debian suite for the base image (default: the host's, else bookworm).
    #[arg(long)]
    pub suite: Option<String>,
    /// Debian mirror for debootstrap (default: from the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// The clusterlab source tree (default: the one this harness was built from).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Prefix of the image names: PREFIX-base:<suite>, PREFIX-node:<hash> (e.g. to time a
    /// first run without touching the images in use).
    #[arg(long, env = crate::images::IMAGE_PREFIX_ENV, default_value = crate::images::DEFAULT_IMAGE_PREFIX)]
    pub image_prefix: String,
}

impl ImagesArgs {
    pub fn options(&self) -> ImageOptions {
        let mut o = ImageOptions::for_workspace(
            self.workspace
                .clone()
                .unwrap_or_else(crate::images::default_workspace),
        );
        o.rebuild = self.rebuild;
        o.base_image = self.base_image.clone();
        if let Some(s) = &self.suite {
            o.suite = s.clone();
        }
        o.mirror = self.mirror.clone();
        o.prefix = self.image_prefix.clone();
        o
    }
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub nodes: u16,
    /// Cluster name: prefixes every Docker object (NAME-net, NAME-node0 …).
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub name: String,
    /// Subnet of the cluster's bridge network; node i gets host address 10+i.
    #[arg(long, default_value = DEFAULT_SUBNET)]
    pub subnet: Subnet,
    /// TTL in seconds of each node's lease.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Nodes 0 … VOTERS−1 run etcd members; the others are etcd clients of them (1 to 7;
    /// 0: every node runs etcd).
    #[arg(long, default_value_t = clusterlab_core::config::DEFAULT_VOTERS)]
    pub voters: usize,
    /// Do not start the gateway (the proxy that follows the leader).
    #[arg(long)]
    pub no_gateway: bool,
    /// Port on 127.0.0.1 where the gateway is published (0: any free port).
    #[arg(long, default_value_t = 8888)]
    pub port: u16,
    /// Do not start the live view (`harness view`) in the background.
    #[arg(long)]
    pub no_view: bool,
    /// Extra node setting as KEY=VALUE, e.g. CLUSTERLAB_ETCD__ELECTION_MS=500 (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[command(flatten)]
    pub images: ImagesArgs,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// Cluster name.
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// `leader`, `follower`, or a node name (node0, node1 …).
    pub target: String,
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub name: String,
}

/// Runs one subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Images(a) => {
            let docker = crate::docker::connect().await?;
            let images = ensure_images(&docker, &a.options()).await?;
            println!("base image: {}\nnode image: {}", images.base, images.node);
        }
        Command::Up(a) => up(a).await?,
        Command::Status(a) => {
            let docker = crate::docker::connect().await?;
            let c = Cluster::discover(&docker, &a.name).await?;
            let st = c.status().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.table());
            }
        }
        Command::Kill(a) => {
            let docker = crate::docker::connect().await?;
            let c = Cluster::discover(&docker, &a.name).await?;
            let node = pick_target(&c, &a.target).await?;
            c.kill(&node).await?;
            println!("killed {node} ({})", c.container_name(&node)?);
        }
        Command::Start(a) => {
            let docker = crate::docker::connect().await?;
            let c = Cluster::discover(&docker, &a.name).await?;
            c.start(&a.target).await?;
            println!("started {}", c.container_name(&a.target)?);
        }
        Command::Bench(b) => bench::run(b).await?,
        Command::Grade(a) => grade::run(a).await?,
        Command::Partition(a) => faults::run_partition(a).await?,
        Command::Heal(a) => faults::run_heal(a).await?,
        Command::Ssh(a) => node::run_ssh(a).await?,
        Command::Logs(a) => node::run_logs(a).await?,
        Command::Events(a) => events::run(a).await?,
        Command::View(a) => view::run(a).await?,
        Command::Down(a) => {
            let docker = crate::docker::connect().await?;
            if view::stop_detached(&a.name) {
                println!("stopped the live view of {}", a.name);
            }
            let n = cluster::down(&docker, &a.name).await?;
            let left = cluster::list_objects(&docker, &a.name).await?;
            if left.is_empty() {
                println!("removed {n} objects of cluster {}; nothing labelled clusterlab.cluster={} is left", a.name, a.name);
            } else {
                anyhow::bail!("objects of {} are still present: {left:?}", a.name);
            }
        }
    }
    Ok(())
}

/// Why `harness kill TARGET` found no node to kill.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no node reports itself as etcd leader right now")]
    NoLeader,
    #[error("no running follower: {0}")]
    NoFollower(String),
    #[error(transparent)]
    Harness(#[from] crate::docker::HarnessError),
}

/// Resolves `leader`, `follower` or a node name to a node name.
pub async fn pick_target(c: &Cluster, target: &str) -> Result<String, TargetError> {
    match target {
        "leader" => c.etcd_leader().await?.ok_or(TargetError::NoLeader),
        "follower" => {
            let st = c.status().await?;
            st.nodes
                .iter()
                .find(|n| {
                    n.state.is_running() && n.etcd_role == Some(crate::oracle::Role::Follower)
                })
                .map(|n| n.name.clone())
                .ok_or_else(|| TargetError::NoFollower(st.summary()))
        }
        name => {
            c.resolve(name)?;
            Ok(name
                .strip_prefix(&format!("{}-", c.spec.name))
                .unwrap_or(name)
                .to_string())
        }
    }
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    let mut spec = ClusterSpec::new(&a.name, a.nodes as usize, "");
    spec.subnet = a.subnet;
    spec.voters = a.voters;
    spec.lease_ttl_s = a.lease_ttl;
    spec.gateway = !a.no_gateway;
    spec.gateway_port = a.port;
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--env {kv:?} is not KEY=VALUE"))?;
        if !k.starts_with(clusterlab_core::config::ENV_PREFIX) {
            anyhow::bail!(
                "--env {k}: node settings start with {}",
                clusterlab_core::config::ENV_PREFIX
            );
        }
        spec.env.push((k.into(), v.into()));
    }
    spec.ready_timeout = Duration::from_secs(120);
    // Bad arguments are refused before anything is built.
    spec.validate()?;
    let docker = crate::docker::connect().await?;
    spec.image = ensure_images(&docker, &a.images.options()).await?.node;
    let c = Cluster::up(&docker, spec).await?;
    let st = c.status().await?;
    println!(
        "cluster {} is up ({} nodes, image {})\n",
        c.spec.name, c.spec.nodes, c.spec.image
    );
    print!("{}", st.table());
    let n0 = c.names.node_container(0);
    println!("\nReach it:");
    println!("  docker exec -it {n0} bash                          # a shell on node0");
    println!(
        "  docker exec {n0} etcdctl --endpoints {} get --prefix /clusterlab/",
        c.etcd_endpoints().join(",")
    );
    println!(
        "  curl http://{}:8008/health                       # any node's health API",
        c.spec.node_ip(0)
    );
    if let Some(g) = &st.gateway {
        if let Some(url) = &g.url {
            println!(
                "  {url}                                # the leader's service through the gateway"
            );
        }
    }
    println!(
        "  harness kill leader | harness status | harness down --name {}",
        c.spec.name
    );
    c.hand_over();
    if !a.no_view {
        match view::start_detached(&c.spec.name).await {
            Ok(url) => println!("\nLive view (127.0.0.1 only, stopped by harness down):\n  {url}"),
            Err(e) => eprintln!(
                "warning: the live view did not start ({e:#}); run `harness view --name {}`",
                c.spec.name
            ),
        }
    }
    Ok(())
}
