//! Benchmarks: how fast the cluster follows faults, each on a cluster of its own that is
//! removed at the end. Library functions take plain option structs and report through a
//! `progress` callback; the command line (`harness bench …`, [`crate::cli`]) parses the
//! flags, prints and turns a missed target into a non-zero exit.
//!
//! - [`hosts`]: seconds until every survivor's /etc/hosts follows a dead follower and leader.
//! - [`failover`]: a leader kill under a steady stream of GETs through the gateway.
//! - [`proxy`]: what the gateway costs against straight to the leader.
//! - [`scale`]: time to agree, idle CPU per node and program, and kills, per cluster size.

pub mod failover;
pub mod hosts;
pub mod proxy;
pub mod scale;

use crate::cluster::{Cluster, ClusterSpec};
use crate::docker::HarnessError;
use crate::names::Subnet;
use crate::probe::http::HttpError;
use crate::probe::ProbeError;
use crate::wait::WaitError;
use bollard::Docker;

/// What a benchmark can fail with (a missed target is not a failure: the report says so).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The cluster is too small for what a run does to it.
    #[error("the {bench} benchmark needs at least 3 nodes (got {got}){why}")]
    TooFewNodes {
        bench: &'static str,
        got: usize,
        why: &'static str,
    },
    #[error("no etcd leader before the leader kill")]
    NoLeaderBeforeKill,
    /// Figures measured against a leader that stopped being the leader mean nothing.
    #[error("the leader changed during the benchmark ({from} → {to:?}); run it again")]
    LeaderChanged { from: String, to: Option<String> },
    /// A program a benchmark runs on the host is not installed.
    #[error("`{tool}` is not on PATH; install the Debian package {package} (see the README's Benchmarks)")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    /// A program a benchmark runs on the host failed.
    #[error("{what}: {detail}")]
    Tool { what: String, detail: String },
}

/// What `harness bench failover` and `harness bench proxy` run on.
#[derive(Debug, Clone)]
pub struct BenchSetup {
    pub nodes: usize,
    pub lease_ttl_s: u64,
    /// Name of the benchmark's own cluster (removed at the end).
    pub name: String,
    pub subnet: Subnet,
    /// The node image.
    pub image: String,
}

/// Brings up the benchmark's cluster with a gateway published on a free port; returns it and
/// the gateway's URL.
pub(crate) async fn up_with_gateway(
    docker: &Docker,
    s: &BenchSetup,
) -> Result<(Cluster, String), BenchError> {
    let _ = crate::cluster::down(docker, &s.name).await;
    let mut spec = ClusterSpec::new(&s.name, s.nodes, &s.image);
    spec.subnet = s.subnet;
    spec.lease_ttl_s = s.lease_ttl_s;
    spec.gateway = true;
    spec.gateway_port = 0;
    // Removed by the run that made it; if that run dies, the next trial run's sweep does.
    spec.run_scoped = true;
    let c = Cluster::up(docker, spec).await?;
    match c.gateway_url().await {
        Ok(url) => Ok((c, url)),
        Err(e) => {
            let _ = c.down().await;
            Err(e.into())
        }
    }
}

/// The machine's load average, printed with the figures: client, gateway and nodes share
/// this machine's cores, so the figures depend on what else runs.
pub fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(s) => format!(
            "load average {}",
            s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ),
        Err(_) => "load average unknown".into(),
    }
}
