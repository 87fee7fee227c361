//! Grading trials: `harness grade`'s library graded against known submissions. clusterlab
//! (profiles/clusterlab.toml) and the correct fixture (fixtures/good) pass every scenario;
//! the fixture with a planted fault (fixtures/faulty: dead nodes are never removed from
//! /etc/hosts) fails exactly the scenarios that kill a node, on the hosts check alone,
//! with a reason that names the node, the table and the time allowed. Each run also writes
//! report.json and junit.xml, which must read back.

use anyhow::{ensure, Context};
use harness::grade::profile::Profile;
use harness::grade::report::{write_reports, GradeReport, Status};
use harness::grade::{grade, GradeOptions};
use harness::images::{default_workspace, ImageOptions};
use harness::names::Subnet;
use harness::trial::{docker_required, runtime, Environment};
use libtest_mimic::Trial;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        grading_trial(
            env,
            "grade_clusterlab",
            "profiles/clusterlab.toml",
            check_all_pass,
        ),
        grading_trial(
            env,
            "grade_good_fixture",
            "fixtures/good/profile.toml",
            check_all_pass,
        ),
        grading_trial(
            env,
            "grade_faulty_fixture",
            "fixtures/faulty/profile.toml",
            check_faulty,
        ),
    ]
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A subnet of its own for each grading run, away from the other trials' 10.78.x.
fn subnet() -> Subnet {
    let k = (std::process::id() * 3 + SEQ.fetch_add(1, Ordering::SeqCst)) % 150 + 100;
    Subnet {
        base: Ipv4Addr::new(10, 79, k as u8, 0),
        prefix: 24,
    }
}

fn grading_trial(
    env: &Environment,
    name: &str,
    profile: &'static str,
    check: fn(&GradeReport) -> anyhow::Result<()>,
) -> Trial {
    match env.clone() {
        Environment::Unavailable(reason) => {
            if docker_required() {
                Trial::test(name, move || {
                    Err(format!("Docker is required but unavailable: {reason}").into())
                })
            } else {
                Trial::test(name, || Ok(())).with_ignored_flag(true)
            }
        }
        Environment::Ready { docker, image } => Trial::test(name, move || {
            runtime()
                .block_on(async {
                    let path = default_workspace().join(profile);
                    let p = Profile::load(&path)?;
                    let mut opts =
                        GradeOptions::new(ImageOptions::for_workspace(default_workspace()));
                    opts.subnet = Some(subnet());
                    opts.cluster_prefix =
                        Some(format!("g{}-{}", std::process::id() % 10_000, p.name));
                    if p.submission.clusterlab_node_image {
                        // The trials' node image is this tree's; do not build it twice.
                        opts.image = Some(image.clone());
                    }
                    let report = grade(&docker, &p, profile, &opts).await?;
                    print!("{}", harness::grade::report::summary_table(&report));
                    let dir = tempfile::tempdir()?;
                    write_reports(dir.path(), &report)?;
                    let json = std::fs::read_to_string(dir.path().join("report.json"))?;
                    let back: GradeReport =
                        serde_json::from_str(&json).context("report.json does not read back")?;
                    ensure!(back == report, "report.json differs from the report");
                    let xml = std::fs::read_to_string(dir.path().join("junit.xml"))?;
                    ensure!(
                        xml.matches("<testcase ").count() == report.scenarios.len(),
                        "junit.xml lacks test cases:\n{xml}"
                    );
                    check(&report).with_context(|| {
                        format!(
                            "report:\n{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        )
                    })
                })
                .map_err(|e: anyhow::Error| format!("{e:#}").into())
        }),
    }
}

fn names(r: &GradeReport) -> Vec<&str> {
    r.scenarios.iter().map(|s| s.name.as_str()).collect()
}

fn check_all_pass(r: &GradeReport) -> anyhow::Result<()> {
    ensure!(
        names(r) == ["startup", "kill_follower", "kill_leader"],
        "every scenario runs once, in order: {:?}",
        names(r)
    );
    for s in &r.scenarios {
        ensure!(
            s.status == Status::Passed,
            "{} did not pass: {}",
            s.name,
            s.reason.as_deref().unwrap_or("")
        );
        ensure!(
            s.checks.iter().all(|c| c.passed),
            "{}: a check failed",
            s.name
        );
    }
    let fig = |s: &str, f: &str| r.scenario(s).and_then(|s| s.figures.get(f).copied());
    ensure!(
        fig("startup", "ssh_pairs_ok") == Some(6.0),
        "6 SSH pairs in startup"
    );
    ensure!(
        fig("kill_follower", "dead_follower_gone_s").is_some(),
        "kill_follower measures when the dead follower left every table"
    );
    ensure!(
        fig("kill_leader", "dead_leader_gone_s").is_some()
            && fig("kill_leader", "host0_moved_s").is_some()
            && fig("kill_leader", "service_moved_s").is_some(),
        "kill_leader measures host0, the service and the dead leader"
    );
    ensure!(r.passed == 3 && r.failed == 0 && r.errors == 0);
    Ok(())
}

fn check_faulty(r: &GradeReport) -> anyhow::Result<()> {
    let startup = r.scenario("startup").context("no startup scenario")?;
    ensure!(
        startup.status == Status::Passed,
        "the fault does not show on a fresh cluster, yet startup failed: {:?}",
        startup.reason
    );
    for (name, role) in [("kill_follower", "follower"), ("kill_leader", "leader")] {
        let s = r.scenario(name).with_context(|| format!("no {name}"))?;
        ensure!(
            s.status == Status::Failed,
            "{name} should fail, got {:?}",
            s.status
        );
        let failed: Vec<&str> = s
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        ensure!(
            failed == ["hosts"],
            "{name}: only the hosts check should fail, failed: {failed:?}"
        );
        let reason = s.reason.as_deref().unwrap_or("");
        let killed = s
            .notes
            .iter()
            .find_map(|n| n.strip_prefix("killed "))
            .and_then(|n| n.split(", the ").next())
            .with_context(|| format!("{name} notes no killed node"))?;
        ensure!(
            s.notes.iter().any(|n| n.ends_with(&format!("the {role}"))),
            "{name} killed a {role}: {:?}",
            s.notes
        );
        let still_listed = format!("{killed} still listed as host");
        for needle in [
            still_listed.as_str(),
            "in /etc/hosts of node",
            "after it was killed",
            "allowed 20 s (limits.dead_node_s)",
        ] {
            ensure!(
                reason.contains(needle),
                "{name}'s reason should say {needle:?}: {reason}"
            );
        }
        ensure!(
            s.logs.is_some(),
            "{name}: a failed scenario carries the nodes' logs"
        );
    }
    ensure!(r.passed == 1 && r.failed == 2 && r.errors == 0);
    Ok(())
}
