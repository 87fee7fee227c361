//! `harness bench …`: the benchmarks' flags, turned into the option structs of
//! [`crate::bench`]; run lines are printed as they finish, the totals close the report, and a
//! missed target makes the command fail.

use super::ImagesArgs;
use crate::bench::failover::{bench_failover, FailoverOptions};
use crate::bench::hosts::{bench_hosts, BenchOptions};
use crate::bench::proxy::{bench_proxy, ProxyOptions};
use crate::bench::scale::{bench_scale, ScaleOptions};
use crate::bench::{load_average, BenchSetup};
use crate::names::Subnet;
use bollard::Docker;
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Seconds until every survivor's /etc/hosts drops a killed follower and shows a killed
    /// leader's successor as host0 (per run, median, max).
    Hosts(BenchHostsArgs),
    /// Kill the leader under a steady stream of GETs through the gateway: seconds until the
    /// new leader answers, failed and slow GETs (per run, median, max).
    Failover(BenchFailoverArgs),
    /// Requests/s, p50/p99 latency and CPU per request through the gateway against direct to
    /// the leader, with a byte relay at the gateway as the floor of the extra hop.
    Proxy(BenchProxyArgs),
    /// Per cluster size: seconds until every key is present and every table identical, idle
    /// CPU per node and program, and the follower/leader kill figures of `bench hosts`.
    Scale(BenchScaleArgs),
}

/// Runs one benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Hosts(a) => run_hosts(a).await,
        BenchCommand::Failover(a) => run_failover(a).await,
        BenchCommand::Proxy(a) => run_proxy(a).await,
        BenchCommand::Scale(a) => run_scale(a).await,
    }
}

/// `harness bench hosts`: kill a follower, then the leader, RUNS times on a cluster of its
/// own, and print per run and as median/max the seconds until every survivor's /etc/hosts
/// dropped the follower and showed the new leader as host0. Exits non-zero if a target is
/// missed (follower: median ≤ 2 s, max ≤ 3 s whatever the lease TTL; new host0: median ≤
/// 2.5 s; no false removal; the times doubled under --cpu-hog).
#[derive(Args, Debug)]
pub struct BenchHostsArgs {
    /// Number of runs (each kills a follower and then the leader).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub runs: usize,
    /// Nodes in the benchmark cluster (at least 3).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(3..=50))]
    pub nodes: usize,
    /// TTL in seconds of each node's lease (sets the nodes' lease_ttl_s).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_ttl: u64,
    /// Run the kills while busy threads of the benchmark saturate every core, and count
    /// false removals (live nodes whose key was deleted) in the agents' logs.
    #[arg(long)]
    pub cpu_hog: bool,
    /// Name of the benchmark's own cluster (removed at the end).
    #[arg(long, default_value = "clusterlab-bench")]
    pub name: String,
    /// Subnet of the benchmark cluster, apart from the default cluster's.
    #[arg(long, default_value = "10.77.100.0/24")]
    pub subnet: Subnet,
    #[command(flatten)]
    pub images: ImagesArgs,
}

async fn run_hosts(a: BenchHostsArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let images = crate::images::ensure_images(&docker, &bench_images("hosts", &a.images)).await?;
    let opts = BenchOptions {
        runs: a.runs,
        nodes: a.nodes,
        lease_ttl_s: a.lease_ttl,
        name: a.name,
        subnet: a.subnet,
        image: images.node,
        cpu_hog: a.cpu_hog,
    };
    println!(
        "bench hosts: {} runs on {} nodes (cluster {}, lease TTL {} s{}); {} before",
        opts.runs,
        opts.nodes,
        opts.name,
        opts.lease_ttl_s,
        if opts.cpu_hog { ", CPU hog" } else { "" },
        load_average()
    );
    // Run lines are printed as they finish; the totals close the report.
    let report = bench_hosts(&docker, &opts, |line| println!("{line}")).await?;
    print!("{}", report.totals());
    println!("{} after", load_average());
    anyhow::ensure!(report.meets_targets(), "hosts benchmark missed a target");
    Ok(())
}

/// Arguments shared by the failover and proxy benchmarks.
#[derive(Args, Debug)]
pub struct BenchClusterArgs {
    /// Nodes in the benchmark cluster (at least 3).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// TTL in seconds of each node's lease.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Name of the benchmark's own cluster (removed at the end).
    #[arg(long, default_value = "clusterlab-bench-proxy")]
    pub name: String,
    /// Subnet of the benchmark cluster, apart from the default cluster's.
    #[arg(long, default_value = "10.77.101.0/24")]
    pub subnet: Subnet,
    #[command(flatten)]
    pub images: ImagesArgs,
}

/// The image options of a benchmark: benchmarks measure optimised code, so the nodes (and
/// the proxy `bench proxy` runs on the host) are built in the `node` profile even by a debug
/// harness, whose nodes are otherwise `dev` builds
/// ([`crate::images::ImageOptions::optimised_nodes`]). Says so on stdout.
fn bench_images(what: &str, images: &ImagesArgs) -> crate::images::ImageOptions {
    let mut o = images.options();
    o.optimised_nodes = true;
    let build = o.bin_build();
    println!(
        "bench {what}: nodes built in the optimised cargo profile {} ({})",
        build.profile,
        build.out_dir().display()
    );
    o
}

impl BenchClusterArgs {
    async fn setup(&self, docker: &Docker, what: &str) -> anyhow::Result<BenchSetup> {
        let images =
            crate::images::ensure_images(docker, &bench_images(what, &self.images)).await?;
        Ok(BenchSetup {
            nodes: self.nodes,
            lease_ttl_s: self.lease_ttl,
            name: self.name.clone(),
            subnet: self.subnet,
            image: images.node,
        })
    }
}

/// `harness bench failover`: kill the leader RUNS times under a steady stream of GETs through
/// the gateway; print per run and as median/max the seconds from the kill to the first
/// response from the new leader, the failed GETs and the GETs slower than 1 s. Exits non-zero
/// if a target is missed (median ≤ 2.5 s, max ≤ 4 s, no failed GET).
#[derive(Args, Debug)]
pub struct BenchFailoverArgs {
    /// Number of leader kills.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Milliseconds between GETs of the stream.
    #[arg(long, default_value_t = 25)]
    pub interval_ms: u64,
    #[command(flatten)]
    pub cluster: BenchClusterArgs,
}

async fn run_failover(a: BenchFailoverArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let opts = FailoverOptions {
        setup: a.cluster.setup(&docker, "failover").await?,
        runs: a.runs,
        interval: Duration::from_millis(a.interval_ms.max(1)),
    };
    println!(
        "bench failover: {} leader kills on {} nodes (cluster {}), one GET through the gateway every {} ms; {}",
        opts.runs,
        opts.setup.nodes,
        opts.setup.name,
        a.interval_ms,
        load_average()
    );
    let report = bench_failover(&docker, &opts, |l| println!("{l}")).await?;
    print!("{}", report.summary());
    anyhow::ensure!(report.meets_targets(), "failover benchmark missed a target");
    Ok(())
}

/// `harness bench proxy`: requests/s, p50/p99 latency and CPU per request, measured by wrk in
/// alternating rounds, of GETs straight to the leader, through the gateway (published port
/// and container address), through a byte relay in the gateway, and — on the host, in front
/// of the same leader — through clusterlab's proxy, a byte relay, nginx and
/// configurable-http-proxy. Needs wrk, nginx-light and node-configurable-http-proxy on the
/// host. Exits non-zero if on any path the proxy on the host is below 1.0× nginx's throughput,
/// above nginx's p99, below 5× configurable-http-proxy's or below 0.9× the relay's.
#[derive(Args, Debug)]
pub struct BenchProxyArgs {
    /// Path requested on every way (repeatable): `/api/status` is tiny, so the cost of the
    /// hop shows in full; `/` is the leader's page, which reads etcd.
    #[arg(long = "path", default_values_t = ["/api/status".to_string(), "/".to_string()])]
    pub paths: Vec<String>,
    /// wrk's connections (one thread).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Whole seconds per round; each way gets ROUNDS rounds per path, alternating.
    #[arg(long, default_value_t = 3)]
    pub round_s: u64,
    /// Rounds per way and path (the figures are their medians). Against nginx the rounds are
    /// also compared one by one with a sign test, which needs 6 or more to tell two servers
    /// apart at all (with 9, one has to be ahead in 8 of them).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    #[command(flatten)]
    pub cluster: BenchClusterArgs,
}

async fn run_proxy(a: BenchProxyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=600).contains(&a.round_s),
        "--round-s must be 1 to 600 seconds"
    );
    if let Some(p) = a.paths.iter().find(|p| !p.starts_with('/')) {
        anyhow::bail!("--path {p:?} must start with /");
    }
    crate::bench::proxy::check_host_tools()?;
    let docker = crate::docker::connect().await?;
    let setup = a.cluster.setup(&docker, "proxy").await?;
    // The node image's own proxy binary, for the host (cargo has it built already: a no-op).
    let images = a.cluster.images.options();
    let build = images.bin_build().optimised();
    let bins = crate::images::build_binaries(&images.workspace, &build).await?;
    let opts = ProxyOptions {
        setup,
        paths: a.paths.clone(),
        concurrency: a.concurrency,
        round_s: a.round_s,
        rounds: a.rounds,
        proxy_bin: bins.join("proxy"),
    };
    println!(
        "bench proxy: GET {} with wrk (1 thread, {} connections), {} × {} s per way and path (cluster {}); {}",
        opts.paths.join(" and "),
        opts.concurrency,
        opts.rounds,
        a.round_s,
        opts.setup.name,
        load_average()
    );
    let report = bench_proxy(&docker, &opts, |l| println!("{l}")).await?;
    print!("{}", report.summary());
    anyhow::ensure!(report.meets_target(), "proxy benchmark missed its target");
    Ok(())
}

/// `harness bench scale`: for each size in NODES, a fresh cluster: seconds from the start of
/// `up` until every node key is present and every /etc/hosts identical; after a quiet
/// period, each node's idle CPU per program (`/proc/<pid>/stat` over a window); then RUNS
/// follower and leader kills as `bench hosts` runs them. Exits non-zero if a target is missed
/// (25 nodes agree within 30 s; follower dropped at 25 nodes within 3 s; every node's
/// non-etcd programs ≤ 0.5 % of a core when idle).
#[derive(Args, Debug)]
pub struct BenchScaleArgs {
    /// Cluster sizes, comma separated (3 to 25 each).
    #[arg(long, value_delimiter = ',', default_values_t = [3usize, 9, 25],
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(3..=25))]
    pub nodes: Vec<usize>,
    /// Follower and leader kills per size (0: none).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=20))]
    pub runs: usize,
    /// `etcd.voters` of every cluster (1 to 7; 0: every node votes).
    #[arg(long, default_value_t = clusterlab_core::config::DEFAULT_VOTERS)]
    pub voters: usize,
    /// TTL in seconds of each node's lease.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds of quiet after the cluster agreed, before the idle window.
    #[arg(long, default_value_t = 15)]
    pub settle_s: u64,
    /// Seconds of the idle CPU window.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=600))]
    pub idle_s: u64,
    /// Name of the benchmark's own cluster (removed at the end).
    #[arg(long, default_value = "clusterlab-bench-scale")]
    pub name: String,
    /// Subnet of the benchmark cluster, apart from the default cluster's.
    #[arg(long, default_value = "10.77.102.0/24")]
    pub subnet: Subnet,
    /// Run this existing node image instead of building one from the tree (e.g. an older
    /// build, for a before/after comparison of the idle cost; it must know the node
    /// settings the run passes).
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub images: ImagesArgs,
}

async fn run_scale(a: BenchScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.voters <= clusterlab_core::config::MAX_VOTERS,
        "--voters {} is more than {}",
        a.voters,
        clusterlab_core::config::MAX_VOTERS
    );
    let docker = crate::docker::connect().await?;
    let image = match &a.image {
        Some(i) => i.clone(),
        None => {
            crate::images::ensure_images(&docker, &bench_images("scale", &a.images))
                .await?
                .node
        }
    };
    let opts = ScaleOptions {
        sizes: a.nodes.clone(),
        runs: a.runs,
        voters: a.voters,
        lease_ttl_s: a.lease_ttl,
        settle: Duration::from_secs(a.settle_s),
        idle_window: Duration::from_secs(a.idle_s),
        name: a.name,
        subnet: a.subnet,
        image,
    };
    println!(
        "bench scale: sizes {:?}, {} voters, {} kill runs each, idle window {} s (cluster {}, lease TTL {} s); {}",
        opts.sizes,
        opts.voters,
        opts.runs,
        a.idle_s,
        opts.name,
        opts.lease_ttl_s,
        load_average()
    );
    let report = bench_scale(&docker, &opts, |line| println!("{line}")).await?;
    print!("{}", report.summary());
    anyhow::ensure!(report.meets_targets(), "scale benchmark missed a target");
    Ok(())
}
