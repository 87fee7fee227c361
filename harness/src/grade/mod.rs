//! `harness grade`: runs every scenario once against a submission of the assignment (or
//! clusterlab itself), each on a fresh cluster with its own time bounds and cleanup, and
//! writes report.json, junit.xml, results.json and report.html. What is judged is only
//! what can be seen from outside; docs/GRADING.md describes it and every profile field.
//!
//! # Layout
//! - [`profile`]: the grading profile (TOML through figment) and its templates.
//! - [`runner`]: the submission's image, its node containers from the profile's templates
//!   (created through [`crate::cluster::ClusterObjects`]), and the outside probes.
//! - [`judge`]: hosts tables, etcd's leader and the leader service, judged as plain functions.
//! - [`scenarios`]: startup, kill_follower, kill_leader.
//! - [`batch`]: `--batch`: a class of submissions graded through one work queue.
//! - [`report`]: report.json, junit.xml, results.json (Gradescope) and the summary table.
//! - [`timeline`]: what each scenario saw over time (recorded by its wait loops).
//! - [`html`]: report.html (one submission, with each scenario's SVG timeline) and the
//!   class page index.html.
//! - [`text`]: the one filter for text that came from a submission (escape sequences and
//!   control characters), applied before anything reaches a reason, a report or the
//!   terminal.

pub mod batch;
pub mod html;
pub mod judge;
pub mod profile;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod text;
pub mod timeline;

use crate::docker::HarnessError;
use crate::images::ImageOptions;
use crate::names::Subnet;
use bollard::Docker;
use futures::StreamExt;
use profile::{IpPlan, Profile};
use report::GradeReport;
use runner::GradedCluster;
use scenarios::Scenario;
use std::path::PathBuf;

/// The `k`-th subnet of the same size after `base` (`k = 0` is `base`).
pub fn nth_subnet(base: Subnet, k: usize) -> Subnet {
    let size = 1u64 << (32 - base.prefix);
    let start = u64::from(u32::from(base.base)) + size * k as u64;
    Subnet {
        base: std::net::Ipv4Addr::from(start.min(u64::from(u32::MAX)) as u32),
        prefix: base.prefix,
    }
}

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
    /// Scenarios run at once (at least 1), each cluster on its own subnet: slot k uses the
    /// k-th subnet of the same size after the profile's (or `subnet`).
    pub parallel: usize,
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
            parallel: 1,
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
    let started = std::time::Instant::now();
    let prefix = opts
        .cluster_prefix
        .clone()
        .unwrap_or_else(|| format!("grade-{}", profile.name));
    let scenarios: Vec<Scenario> = if opts.scenarios.is_empty() {
        Scenario::ALL
            .into_iter()
            .filter(|s| s.enabled(profile))
            .collect()
    } else {
        opts.scenarios.clone()
    };
    if scenarios.contains(&Scenario::Gateway) && profile.gateway.is_none() {
        return Err(GradeError::NoGateway);
    }
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
    let base_subnet = opts.subnet.unwrap_or_else(|| profile.subnet());
    let plan = IpPlan {
        subnet: base_subnet,
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
                .cleaned()
                .with_weights(&profile.weights)
                .with_seconds(started.elapsed()));
            }
        };
    // The gateway's image; when it cannot be had, the gateway scenario alone is an error.
    let gateway_image: Option<Result<String, String>> = match &profile.gateway {
        Some(g) if scenarios.contains(&Scenario::Gateway) => Some(
            gateway_image(docker, profile, &opts.images, g, &image)
                .await
                .map_err(|e| text::clean(&format!("the grader has no gateway image: {e}"))),
        ),
        _ => None,
    };
    let parallel = opts.parallel.max(1);
    // Free slots; a scenario takes one (and its subnet) while it runs.
    let slots = std::sync::Mutex::new((0..parallel).rev().collect::<Vec<usize>>());
    let runs = clusters.into_iter().map(|(s, cluster)| {
        let (image, gateway_image, slots) = (&image, &gateway_image, &slots);
        async move {
            let mut gateway = None;
            if s == Scenario::Gateway {
                match gateway_image {
                    Some(Ok(g)) => gateway = Some(g),
                    Some(Err(reason)) => return report::ScenarioReport::not_run(s, reason),
                    None => {}
                }
            }
            let slot = slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or(0);
            let subnet = nth_subnet(base_subnet, slot);
            let step = crate::progress::Step::start(format!(
                "scenario {} on {} nodes of {image} ({subnet})",
                s.name(),
                s.nodes(profile),
            ));
            let r = run_one(docker, profile, image, gateway, s, &cluster, subnet).await;
            step.done_with(match r.status {
                report::Status::Passed => "passed",
                report::Status::Failed => "FAILED",
                report::Status::Error => "could not be run",
            });
            slots.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
            r
        }
    });
    // In the profile's order whatever finishes first.
    let reports: Vec<report::ScenarioReport> = futures::stream::iter(runs)
        .buffered(parallel)
        .collect()
        .await;
    Ok(GradeReport::new(
        &profile.name,
        profile_file,
        &image,
        profile.nodes,
        &plan.subnet.to_string(),
        reports,
    )
    .cleaned()
    .with_weights(&profile.weights)
    .with_seconds(started.elapsed()))
}

/// Runs scenario `s` once on a fresh cluster named `cluster` on `subnet`, with the
/// submission's `image` (and the gateway's, for the gateway scenario).
pub async fn run_one(
    docker: &Docker,
    profile: &Profile,
    image: &str,
    gateway: Option<&String>,
    s: Scenario,
    cluster: &str,
    subnet: Subnet,
) -> report::ScenarioReport {
    let plan = IpPlan {
        subnet,
        first_offset: profile.network.first_offset,
        nodes: s.nodes(profile),
    };
    let mut sub = GradedCluster::new(docker, profile, image, cluster, plan);
    if let Some(g) = gateway {
        sub = sub.with_gateway(g);
    }
    scenarios::run_scenario(&sub, s, LOG_LINES).await
}

/// The image of the profile's `[gateway]`: a local image, a folder built on the base image
/// as a submission's is (same checks and bounds), or else the submission's own image.
pub async fn gateway_image(
    docker: &Docker,
    profile: &Profile,
    images: &crate::images::ImageOptions,
    g: &profile::GatewayTemplate,
    image: &str,
) -> Result<String, runner::ImageError> {
    match (&g.image, &g.build) {
        (Some(i), _) => runner::prepare_image(docker, profile, images, Some(i.as_str())).await,
        (None, Some(dir)) => {
            let context = runner::submission_context(dir)?;
            let base = crate::images::ensure_base(docker, images).await?;
            runner::build_dir_image_within(
                docker,
                dir,
                context,
                &base,
                &format!("{}-gateway", profile.name),
                &profile.limits,
            )
            .await
        }
        (None, None) => Ok(image.to_string()),
    }
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
    #[error("the gateway scenario needs a [gateway] section in the profile")]
    NoGateway,
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
    let mut runs = run_repeated(req, 1).await?;
    Ok(runs.remove(0))
}

/// Grades `repeat` times (at least once). With one run the reports go into the report
/// directory; with more, run k's go into `<dir>/run<k>` (from 1).
pub async fn run_repeated(req: &GradeRun, repeat: usize) -> Result<Vec<GradeReport>, GradeError> {
    let profile = Profile::load(&req.profile)?;
    let docker = crate::docker::connect().await?;
    let repeat = repeat.max(1);
    let mut runs = Vec::new();
    for k in 1..=repeat {
        let report = grade(
            &docker,
            &profile,
            &req.profile.display().to_string(),
            &req.options,
        )
        .await?;
        let dir = if repeat == 1 {
            req.report_dir.clone()
        } else {
            req.report_dir.join(format!("run{k}"))
        };
        report::write_reports(&dir, &report).map_err(|source| GradeError::Reports {
            dir: dir.display().to_string(),
            source,
        })?;
        runs.push(report);
    }
    Ok(runs)
}

/// The scenarios whose verdict was not the same in every run of a `--repeat`, each as
/// `name: passed, failed, passed` (a scenario missing from a run counts as `missing`).
pub fn verdict_changes(runs: &[GradeReport]) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        for s in &r.scenarios {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let verdicts: Vec<String> = runs
                .iter()
                .map(|r| {
                    r.scenario(name)
                        .map(|s| {
                            match s.status {
                                report::Status::Passed => "passed",
                                report::Status::Failed => "failed",
                                report::Status::Error => "error",
                            }
                            .to_string()
                        })
                        .unwrap_or_else(|| "missing".into())
                })
                .collect();
            (verdicts.iter().any(|v| *v != verdicts[0]))
                .then(|| format!("{name}: {}", verdicts.join(", ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::{ScenarioReport, Status};

    fn run(verdicts: &[(&str, Status)]) -> GradeReport {
        let scenarios = verdicts
            .iter()
            .map(|(n, st)| ScenarioReport {
                name: n.to_string(),
                description: String::new(),
                status: *st,
                passed: *st == Status::Passed,
                reason: None,
                seconds: 1.0,
                figures: Default::default(),
                notes: Vec::new(),
                checks: Vec::new(),
                logs: None,
                timeline: None,
            })
            .collect();
        GradeReport::new("p", "p.toml", "img", 3, "10.79.1.0/24", scenarios)
    }

    #[test]
    fn changed_verdicts_are_named_with_every_run() {
        let a = run(&[("startup", Status::Passed), ("scale", Status::Passed)]);
        let b = run(&[("startup", Status::Passed), ("scale", Status::Failed)]);
        assert!(verdict_changes(&[a.clone(), a.clone()]).is_empty());
        assert_eq!(
            verdict_changes(&[a.clone(), b, a]),
            ["scale: passed, failed, passed"]
        );
    }

    #[test]
    fn switches_and_the_gateway_section_decide_what_runs() {
        let mut p = Profile::default();
        let on = |p: &Profile| {
            Scenario::ALL
                .into_iter()
                .filter(|s| s.enabled(p))
                .map(|s| s.name())
                .collect::<Vec<_>>()
        };
        assert!(
            !on(&p).contains(&"gateway"),
            "no [gateway], no gateway scenario"
        );
        assert_eq!(on(&p).len(), 7);
        p.gateway = Some(Default::default());
        p.scenarios.scale = false;
        assert!(on(&p).contains(&"gateway") && !on(&p).contains(&"scale"));
        assert_eq!(Scenario::Scale.nodes(&p), 11);
        assert_eq!(Scenario::Startup.nodes(&p), 3);
    }

    #[test]
    fn subnets_for_parallel_slots_follow_each_other() {
        let base: Subnet = "10.79.1.0/24".parse().unwrap();
        assert_eq!(nth_subnet(base, 0), base);
        assert_eq!(nth_subnet(base, 2).to_string(), "10.79.3.0/24");
        let big: Subnet = "10.79.0.0/16".parse().unwrap();
        assert_eq!(nth_subnet(big, 1).to_string(), "10.80.0.0/16");
    }
}
