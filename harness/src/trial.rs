//! Fixtures for full-cluster trials: one Docker check, sweep and image build per run, and a
//! trial wrapper that brings up a fresh cluster (unique name, a subnet no network uses), runs
//! the body, and always tears the cluster down — with the nodes' last log lines attached when
//! the body failed.
//!
//! Trial clusters are run-scoped (labelled with this process's id): [`prepare`] removes the
//! clusters of earlier trial runs whose process is gone, and leaves those of runs still alive.
//!
//! With no reachable Docker engine, trials are reported as ignored (the reason is printed);
//! with `CLUSTERLAB_REQUIRE_DOCKER=1` they fail instead. `CLUSTERLAB_KEEP=1` leaves a failed
//! trial's cluster in place for inspection (`harness down --name …` removes it later).

use crate::cluster::objects::{sweep_orphans, used_subnets};
use crate::cluster::{Cluster, ClusterSpec};
use crate::docker::HarnessError;
use crate::images::{ensure_images, ImageOptions};
use crate::names::Subnet;
use bollard::Docker;
use futures::future::BoxFuture;
use futures::FutureExt;
use libtest_mimic::Trial;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// What a trial body fails with: any error (trial files use `anyhow`, which converts).
pub type TrialError = Box<dyn std::error::Error + Send + Sync>;

/// The async body of a cluster trial.
pub type TrialBody =
    Arc<dyn Fn(Cluster) -> BoxFuture<'static, Result<(), TrialError>> + Send + Sync>;

/// Anything that can serve as a trial body: a [`TrialBody`], or an `Arc` of a function from
/// the cluster to a future whose error converts into [`TrialError`] (such as
/// `Arc::new(|c| Box::pin(my_trial(c)))` with `my_trial` returning `anyhow::Result<()>`).
pub trait IntoTrialBody {
    fn into_body(self) -> TrialBody;
}

impl<F, Fut, E> IntoTrialBody for Arc<F>
where
    F: Fn(Cluster) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<TrialError> + 'static,
{
    fn into_body(self) -> TrialBody {
        Arc::new(move |c| {
            let fut = self(c);
            async move { fut.await.map_err(Into::into) }.boxed()
        })
    }
}

/// Why a trial cluster could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum TrialSetupError {
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("no free subnet for {cluster} after {tries} tries; last: {last}")]
    NoFreeSubnet {
        cluster: String,
        tries: usize,
        #[source]
        last: HarnessError,
    },
}

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
        match sweep_orphans(&docker).await {
            Ok(swept) => {
                for (cluster, n) in swept {
                    eprintln!(
                        "removed {n} objects of stale trial cluster {cluster} (its run is gone)"
                    );
                }
            }
            Err(e) => {
                return Environment::Unavailable(format!("sweeping stale trial clusters: {e}"))
            }
        }
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

/// Candidate subnets for trial clusters: 10.78.K.0/24, K spread by process id.
fn candidate_subnet() -> Subnet {
    let k = (run_id() * 7 + SUBNET_SEQ.fetch_add(1, Ordering::SeqCst)) % 230 + 20;
    Subnet {
        base: std::net::Ipv4Addr::new(10, 78, k as u8, 0),
        prefix: 24,
    }
}

/// The next candidate subnet that no existing network overlaps.
async fn free_subnet(docker: &Docker) -> Result<Subnet, HarnessError> {
    let used = used_subnets(docker).await?;
    let mut s = candidate_subnet();
    for _ in 0..230 {
        if !used.iter().any(|(_, u)| u.overlaps(&s)) {
            break;
        }
        s = candidate_subnet();
    }
    Ok(s)
}

/// A cluster name for a trial: `t<run>-<trial>` cut to fit.
pub fn cluster_name(trial: &str) -> String {
    let mut n = format!("t{}-{}", run_id(), trial.replace('_', "-"));
    n.truncate(36);
    n.trim_end_matches('-').to_string()
}

/// Brings up a cluster for a trial on a subnet no network uses; if another run takes it
/// in the meantime (Docker refuses with an overlap), tries another.
pub async fn up_for_trial(
    docker: &Docker,
    mut spec: ClusterSpec,
) -> Result<Cluster, TrialSetupError> {
    const TRIES: usize = 8;
    spec.run_scoped = true;
    let mut last = None;
    for _ in 0..TRIES {
        spec.subnet = free_subnet(docker).await?;
        match Cluster::up(docker, spec.clone()).await {
            Ok(c) => return Ok(c),
            Err(e @ HarnessError::SubnetTaken { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(match last {
        Some(last) => TrialSetupError::NoFreeSubnet {
            cluster: spec.name,
            tries: TRIES,
            last,
        },
        None => TrialSetupError::Harness(HarnessError::BadSpec {
            field: "subnet".into(),
            reason: "no attempt was made".into(),
        }),
    })
}

/// A trial that runs `body` against a fresh cluster of `nodes` nodes.
/// `configure` may change the spec (lease TTL, gateway, extra env) before it is brought up.
pub fn cluster_trial(
    env: &Environment,
    name: &str,
    nodes: usize,
    configure: impl Fn(&mut ClusterSpec) + Send + Sync + 'static,
    body: impl IntoTrialBody,
) -> Trial {
    let body = body.into_body();
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
                .map_err(|e| error_chain(e.as_ref()).into())
        }),
    }
}

/// An error and its sources, one per line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(&format!(": {s_text}"));
        }
        source = s.source();
    }
    text
}

/// A trial body that failed, with the cluster it ran on and its nodes' last log lines.
#[derive(Debug, thiserror::Error)]
#[error("{source}\ncluster {cluster}; last node log lines:\n{logs}")]
struct TrialFailed {
    cluster: String,
    logs: String,
    source: TrialError,
}

/// A trial body that panicked.
#[derive(Debug, thiserror::Error)]
#[error("trial panicked: {0}")]
struct TrialPanicked(String);

async fn run_in_cluster(
    docker: Docker,
    spec: ClusterSpec,
    body: TrialBody,
) -> Result<(), TrialError> {
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
            Err(TrialPanicked(msg).into())
        }
    };
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(TrialFailed {
            cluster: cluster.spec.name.clone(),
            logs: cluster.logs_tail(25).await,
            source: e,
        }
        .into()),
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
