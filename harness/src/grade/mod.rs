//! `harness grade`: runs every scenario once against a submission of the assignment (or
//! clusterlab itself), each on a fresh cluster with its own time bounds and cleanup, and
//! writes report.json and junit.xml. What is judged is only what can be seen from outside;
//! docs/GRADING.md describes it and every profile field.
//!
//! # Layout
//! - [`profile`]: the grading profile (TOML through figment) and its templates.
//! - [`runner`]: the submission's image and containers, and the outside probes.
//! - [`judge`]: hosts tables, etcd's leader and the leader service, judged as plain functions.
//! - [`scenarios`]: startup, kill_follower, kill_leader.
//! - [`report`]: report.json, junit.xml and the summary table.

pub mod judge;
pub mod profile;
pub mod report;
pub mod runner;
pub mod scenarios;

use crate::docker::{HarnessError, Result};
use crate::images::ImageOptions;
use crate::names::Subnet;
use bollard::Docker;
use profile::{IpPlan, Profile};
use report::GradeReport;
use runner::SubmissionCluster;
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
) -> Result<GradeReport> {
    let image = runner::prepare_image(docker, profile, &opts.images, opts.image.as_deref()).await?;
    let plan = IpPlan {
        subnet: opts.subnet.unwrap_or_else(|| profile.subnet()),
        first_offset: profile.network.first_offset,
        nodes: profile.nodes,
    };
    let prefix = opts
        .cluster_prefix
        .clone()
        .unwrap_or_else(|| format!("grade-{}", profile.name));
    let scenarios = if opts.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        opts.scenarios.clone()
    };
    let mut reports = Vec::new();
    for s in scenarios {
        let cluster = format!("{prefix}-{}", s.name().replace('_', "-"));
        crate::names::validate_cluster_name(&cluster).map_err(|e| {
            HarnessError::Usage(format!("{e} (shorten the profile's name or the prefix)"))
        })?;
        let sub = SubmissionCluster::new(docker, profile, &image, &cluster, plan);
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

/// `harness grade` arguments.
#[derive(clap::Args, Debug)]
pub struct GradeArgs {
    /// The grading profile (default: profiles/clusterlab.toml, which grades clusterlab).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Directory for report.json and junit.xml.
    #[arg(long, default_value = "grade-report")]
    pub report: PathBuf,
    /// Grade this local image instead of the profile's submission.
    #[arg(long)]
    pub image: Option<String>,
    /// Run on this subnet instead of the profile's.
    #[arg(long)]
    pub subnet: Option<Subnet>,
    /// Run only this scenario (repeatable): startup, kill_follower, kill_leader.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    #[command(flatten)]
    pub images: crate::cli::ImagesArgs,
}

/// Runs `harness grade`: reports are written whatever the verdict; the command fails when
/// any scenario did not pass.
pub async fn run_cli(a: GradeArgs) -> anyhow::Result<()> {
    let image_opts = a.images.options();
    let profile_path = a
        .profile
        .clone()
        .unwrap_or_else(|| image_opts.workspace.join("profiles/clusterlab.toml"));
    let profile = Profile::load(&profile_path)?;
    let mut opts = GradeOptions::new(image_opts);
    opts.image = a.image.clone();
    opts.subnet = a.subnet;
    for name in &a.scenarios {
        let s = Scenario::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            anyhow::anyhow!(
                "--scenario {name:?}: known scenarios are {}",
                known.join(", ")
            )
        })?;
        opts.scenarios.push(s);
    }
    let docker = crate::docker::connect().await?;
    let report = grade(
        &docker,
        &profile,
        &profile_path.display().to_string(),
        &opts,
    )
    .await?;
    report::write_reports(&a.report, &report)
        .map_err(|e| anyhow::anyhow!("writing the reports into {}: {e}", a.report.display()))?;
    print!("\n{}", report::summary_table(&report));
    println!(
        "reports: {} and {}",
        a.report.join("report.json").display(),
        a.report.join("junit.xml").display()
    );
    if report.failed + report.errors > 0 {
        anyhow::bail!(
            "{} of {} scenarios did not pass",
            report.failed + report.errors,
            report.scenarios.len()
        );
    }
    Ok(())
}
