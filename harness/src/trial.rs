//! Fixtures for full-cluster trials: one Docker check and image build per run, and a trial
//! wrapper that brings up a fresh cluster (unique name and subnet), runs the body, and always
//! tears the cluster down — with the nodes' last log lines attached when the body failed.
//!
//! With no reachable Docker engine, trials are reported as ignored (the reason is printed);
//! with `CLUSTERLAB_REQUIRE_DOCKER=1` they fail instead. `CLUSTERLAB_KEEP=1` leaves a failed
//! trial's cluster in place for inspection (`harness down --name …` removes it later).

use crate::cluster::{Cluster, ClusterSpec};
use crate::images::{ensure_images, ImageOptions};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::FutureExt;
use libtest_mimic::Trial;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// The async body of a cluster trial.
pub type TrialBody = Arc<dyn Fn(Cluster) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// The shared runtime trials run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the trial runtime")
    })
}

/// Whether a missing engine must fail the trials instead of skipping them.
pub fn docker_required() -> bool {
    std::env::var("CLUSTERLAB_REQUIRE_DOCKER").is_ok_and(|v| v == "1" || v == "true")
}

/// What the trials can run against.
#[derive(Clone)]
pub enum Environment {
    Ready {
        docker: Docker,
        image: String,
    },
    /// No engine (or images could not be made): trials are skipped or failed with this reason.
    Unavailable(String),
}

/// Connects to Docker and makes sure the images exist. Called once per test run.
pub fn prepare() -> Environment {
    runtime().block_on(async {
        let docker = match crate::docker::connect().await {
            Ok(d) => d,
            Err(e) => return Environment::Unavailable(e.to_string()),
        };
        let opts = ImageOptions::for_workspace(crate::images::default_workspace());
        match ensure_images(&docker, &opts).await {
            Ok(images) => Environment::Ready {
                docker,
                image: images.node,
            },
            Err(e) => Environment::Unavailable(format!("preparing images: {e}")),
        }
    })
}

/// A small, mostly unique number for names and subnets of this test process.
fn run_id() -> u32 {
    std::process::id() % 10_000
}

static SUBNET_SEQ: AtomicU32 = AtomicU32::new(0);

/// The next candidate subnet for a trial cluster: 10.78.K.0/24, K spread by process id.
fn next_subnet() -> crate::names::Subnet {
    let k = (run_id() * 7 + SUBNET_SEQ.fetch_add(1, Ordering::SeqCst)) % 230 + 20;
    crate::names::Subnet {
        base: std::net::Ipv4Addr::new(10, 78, k as u8, 0),
        prefix: 24,
    }
}

/// A cluster name for a trial: `t<run>-<trial>` cut to fit.
pub fn cluster_name(trial: &str) -> String {
    let mut n = format!("t{}-{}", run_id(), trial.replace('_', "-"));
    n.truncate(36);
    n.trim_end_matches('-').to_string()
}

/// Brings up a cluster for a trial, retrying with another subnet if one is taken.
pub async fn up_for_trial(env_docker: &Docker, mut spec: ClusterSpec) -> anyhow::Result<Cluster> {
    let mut last = None;
    for _ in 0..8 {
        spec.subnet = next_subnet();
        match Cluster::up(env_docker, spec.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let text = e.to_string();
                if text.contains("overlaps") || text.contains("Pool") {
                    last = Some(e);
                    continue;
                }
                return Err(e.into());
            }
        }
    }
    Err(anyhow::anyhow!(
        "no free subnet for {}: {}",
        spec.name,
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// A trial that runs `body` against a fresh cluster of `nodes` nodes.
/// `configure` may change the spec (lease TTL, gateway, extra env) before it is brought up.
pub fn cluster_trial(
    env: &Environment,
    name: &str,
    nodes: usize,
    configure: impl Fn(&mut ClusterSpec) + Send + Sync + 'static,
    body: TrialBody,
) -> Trial {
    let trial_name = name.to_string();
    match env.clone() {
        Environment::Unavailable(reason) => {
            if docker_required() {
                Trial::test(trial_name, move || {
                    Err(format!("Docker is required (CLUSTERLAB_REQUIRE_DOCKER=1) but unavailable: {reason}").into())
                })
            } else {
                Trial::test(trial_name, || Ok(())).with_ignored_flag(true)
            }
        }
        Environment::Ready { docker, image } => Trial::test(trial_name.clone(), move || {
            let mut spec = ClusterSpec::new(&cluster_name(&trial_name), nodes, &image);
            spec.gateway = false;
            spec.gateway_port = 0;
            configure(&mut spec);
            let body = body.clone();
            let docker = docker.clone();
            runtime()
                .block_on(run_in_cluster(docker, spec, body))
                .map_err(|e| format!("{e:#}").into())
        }),
    }
}

async fn run_in_cluster(docker: Docker, spec: ClusterSpec, body: TrialBody) -> anyhow::Result<()> {
    // A cluster of the same name left by a crashed earlier run goes first.
    let _ = crate::cluster::down(&docker, &spec.name).await;
    let cluster = up_for_trial(&docker, spec).await?;
    let outcome = AssertUnwindSafe(body(cluster.clone())).catch_unwind().await;
    let result = match outcome {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(anyhow::anyhow!("trial panicked: {msg}"))
        }
    };
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let logs = cluster.logs_tail(25).await;
            Err(e.context(format!(
                "cluster {}; last node log lines:\n{logs}",
                cluster.spec.name
            )))
        }
    };
    let keep = std::env::var("CLUSTERLAB_KEEP").is_ok_and(|v| v == "1") && result.is_err();
    if keep {
        eprintln!(
            "CLUSTERLAB_KEEP=1: leaving cluster {} in place",
            cluster.spec.name
        );
    } else if let Err(e) = cluster.down().await {
        eprintln!("warning: tearing down {}: {e}", cluster.spec.name);
    }
    result
}

/// Prints the skip reason once, so ignored trials say why.
pub fn announce(env: &Environment) {
    if let Environment::Unavailable(reason) = env {
        if docker_required() {
            eprintln!("clusterlab trials: Docker required but unavailable: {reason}");
        } else {
            eprintln!(
                "clusterlab trials: ignored — no usable Docker engine ({reason}). Set CLUSTERLAB_REQUIRE_DOCKER=1 to make this a failure."
            );
        }
    }
}
