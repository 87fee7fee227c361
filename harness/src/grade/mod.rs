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
//! - [`text`]: the one filter for text that came from a submission (escape sequences and
//!   control characters), applied before anything reaches a reason, a report or the
//!   terminal.

pub mod judge;
pub mod profile;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod text;

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
    /// Capabilities the operator allows beyond [`profile::BASELINE_CAPS`]
    /// (`--allow-cap`); the profile's `node.cap_add` may ask only for those.
    pub allow_caps: Vec<String>,
}

impl GradeOptions {
    pub fn new(images: ImageOptions) -> Self {
        GradeOptions {
            cluster_prefix: None,
            subnet: None,
            image: None,
            scenarios: Vec::new(),
            images,
            allow_caps: Vec::new(),
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
    // The capabilities are checked before anything is built or started.
    for cap in &opts.allow_caps {
        profile::capability(cap).map_err(|reason| GradeError::AllowCap {
            cap: cap.clone(),
            reason,
        })?;
    }
    profile.granted_caps(&opts.allow_caps, profile_file)?;
    let plan = IpPlan {
        subnet: opts.subnet.unwrap_or_else(|| profile.subnet()),
        first_offset: profile.network.first_offset,
        nodes: profile.nodes,
    };
    let image =
        match runner::prepare_image(docker, profile, &opts.images, opts.image.as_deref()).await {
            Ok(image) => image,
            // No image, no scenario: each is reported as an error with the reason.
            Err(e) => {
                let what = opts
                    .image
                    .clone()
                    .unwrap_or_else(|| describe_source(profile));
                let reason = text::clean(&format!("the grader has no image to run: {e}"));
                let reports = clusters
                    .iter()
                    .map(|(s, _)| report::ScenarioReport::not_run(*s, &reason))
                    .collect();
                return Ok(GradeReport::new(
                    &profile.name,
                    profile_file,
                    &what,
                    profile.nodes,
                    &plan.subnet.to_string(),
                    reports,
                )
                .cleaned());
            }
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
    )
    .cleaned())
}

/// The profile's image source in words, for a report that has no image.
fn describe_source(profile: &Profile) -> String {
    match profile.image_source() {
        profile::ImageSource::Image(i) => i,
        profile::ImageSource::Build(dir) => format!("(not built: {})", dir.display()),
        profile::ImageSource::ClusterlabNode => "(clusterlab's node image, not built)".into(),
    }
}

/// Everything `harness grade` can fail with, beyond a scenario that did not pass.
#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error(transparent)]
    CapNotAllowed(#[from] profile::CapNotAllowed),
    #[error("--allow-cap {cap}: {reason}")]
    AllowCap { cap: String, reason: String },
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
/// report directory whatever the verdict, also when the image could not be built or found
/// (every scenario is then an error). The report says which scenarios did not pass. A
/// profile that cannot be read or asks for a capability not allowed is refused before
/// anything starts, with no report.
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
