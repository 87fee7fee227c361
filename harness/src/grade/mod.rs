//! `harness grade`: runs every scenario once against a submission of the assignment (or
//! clusterlab itself), each on a fresh cluster with its own time bounds and cleanup, and
//! writes report.json and junit.xml. What is judged is only what can be seen from outside;
//! docs/GRADING.md describes it and every profile field.
//!
//! # Layout
//! - [`profile`]: the grading profile (TOML through figment) and its templates.
//! - [`runner`]: the submission's image, its node containers from the profile's templates
//!   (created through [`crate::cluster::ClusterObjects`]), and the outside probes.
//! - [`judge`]: hosts tables, etcd's leader and the leader service, judged as plain functions.
//! - [`scenarios`]: startup, kill_follower, kill_leader.
//! - [`report`]: report.json, junit.xml and the summary table.

pub mod judge;
pub mod profile;
pub mod report;
pub mod runner;
pub mod scenarios;

use crate::docker::HarnessError;
use crate::images::ImageOptions;
use crate::names::Subnet;
use bollard::Docker;
use profile::{IpPlan, Profile};
use report::GradeReport;
use runner::GradedCluster;
use scenarios::Scenario;
use std::path::PathBuf;

/// Log lines per node attached to a scenario that did not pass.
const LOG_LINES: usize = 15;

/// How to run a grading beyond what the profile says.
#[derive(Debug, Clone)]
pub struct GradeOptions {
    /// Prefix of the clusters' names (`<prefix>-<scenario>`); default `grade-<profile name>`.
    pub cluster_prefix: Option<String>,
    /// Runs on this subnet instead of the profile's (the offsets stay).
    pub subnet: Option<Subnet>,
    /// Grades this image instead of the profile's submission.
    pub image: Option<String>,
    /// The scenarios to run; empty for all.
    pub scenarios: Vec<Scenario>,
    /// Where the base and node images come from.
    pub images: ImageOptions,
}

impl GradeOptions {
    pub fn new(images: ImageOptions) -> Self {
        GradeOptions {
            cluster_prefix: None,
            subnet: None,
            image: None,
            scenarios: Vec::new(),
            images,
        }
    }
}

/// Prepares the image and runs the scenarios one after the other.
pub async fn grade(
    docker: &Docker,
    profile: &Profile,
    profile_file: &str,
    opts: &GradeOptions,
) -> Result<GradeReport, GradeError> {
    let prefix = opts
        .cluster_prefix
        .clone()
        .unwrap_or_else(|| format!("grade-{}", profile.name));
    let scenarios = if opts.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        opts.scenarios.clone()
    };
    // Every cluster name is checked before anything is built.
    let clusters = scenarios
        .iter()
        .map(|s| {
            let cluster = format!("{prefix}-{}", s.name().replace('_', "-"));
            crate::names::validate_cluster_name(&cluster)
                .map(|()| (*s, cluster.clone()))
                .map_err(|source| GradeError::ClusterName {
                    cluster,
                    scenario: s.name(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let image = runner::prepare_image(docker, profile, &opts.images, opts.image.as_deref()).await?;
    let plan = IpPlan {
        subnet: opts.subnet.unwrap_or_else(|| profile.subnet()),
        first_offset: profile.network.first_offset,
        nodes: profile.nodes,
    };
    let mut reports = Vec::new();
    for (s, cluster) in clusters {
        let sub = GradedCluster::new(docker, profile, &image, &cluster, plan);
        let step = crate::progress::Step::start(format!(
            "scenario {} on {} nodes of {image}",
            s.name(),
            plan.nodes
        ));
        let r = scenarios::run_scenario(&sub, s, LOG_LINES).await;
        step.done_with(match r.status {
            report::Status::Passed => "passed",
            report::Status::Failed => "FAILED",
            report::Status::Error => "could not be run",
        });
        reports.push(r);
    }
    Ok(GradeReport::new(
        &profile.name,
        profile_file,
        &image,
        profile.nodes,
        &plan.subnet.to_string(),
        reports,
    ))
}

/// Everything `harness grade` can fail with, beyond a scenario that did not pass.
#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("--scenario {name:?}: known scenarios are {known}")]
    UnknownScenario { name: String, known: String },
    #[error("cluster name {cluster:?} for scenario {scenario}: {source} (shorten the profile's name or the prefix)")]
    ClusterName {
        cluster: String,
        scenario: &'static str,
        #[source]
        source: crate::names::BadClusterName,
    },
    #[error("writing the reports into {dir}: {source}")]
    Reports {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// A whole `harness grade` run: which profile, where the reports go, and how to run.
#[derive(Debug, Clone)]
pub struct GradeRun {
    pub profile: PathBuf,
    pub report_dir: PathBuf,
    pub options: GradeOptions,
}

/// The scenarios named (as in reports and `--scenario`), in the order given.
pub fn scenarios_by_name(names: &[String]) -> Result<Vec<Scenario>, GradeError> {
    names
        .iter()
        .map(|name| {
            Scenario::from_name(name).ok_or_else(|| GradeError::UnknownScenario {
                name: name.clone(),
                known: Scenario::ALL
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
        .collect()
}

/// Loads and checks the profile, grades, and writes report.json and junit.xml into the
/// report directory whatever the verdict. The report says which scenarios did not pass.
pub async fn run(req: &GradeRun) -> Result<GradeReport, GradeError> {
    let profile = Profile::load(&req.profile)?;
    let docker = crate::docker::connect().await?;
    let report = grade(
        &docker,
        &profile,
        &req.profile.display().to_string(),
        &req.options,
    )
    .await?;
    report::write_reports(&req.report_dir, &report).map_err(|source| GradeError::Reports {
        dir: req.report_dir.display().to_string(),
        source,
    })?;
    Ok(report)
}
