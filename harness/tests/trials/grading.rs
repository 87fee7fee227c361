//! Grading trials: `harness grade`'s library graded against known submissions. clusterlab
//! (profiles/clusterlab.toml) and the correct fixture (fixtures/good) pass every scenario.
//! Every fixture with a planted fault is graded on the scenarios its fault concerns only
//! (two gradings at a time) and fails exactly those, on the checks the fault touches, with
//! a reason that names the node, what was wrong and the limit. Each run also writes
//! report.json and junit.xml, which must read back, and report.html, which must hold a
//! timeline per scenario recorded from the cluster.

use anyhow::{ensure, Context};
use futures::StreamExt;
use harness::grade::profile::Profile;
use harness::grade::report::{write_reports, GradeReport, ScenarioReport, Status};
use harness::grade::scenarios::Scenario;
use harness::grade::{grade, scenarios_by_name, GradeOptions};
use harness::images::{default_workspace, ImageOptions};
use harness::names::Subnet;
use harness::trial::{docker_required, runtime, Environment};
use libtest_mimic::Trial;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        grading_trial(env, "grade_clusterlab", &[CLUSTERLAB]),
        grading_trial(env, "grade_good_fixture", &[GOOD]),
        grading_trial(env, "grade_planted_faults", PLANTED),
    ]
}

/// One grading: a profile, the scenarios it runs (empty: all), and what its report must say.
struct Case {
    profile: &'static str,
    scenarios: &'static [&'static str],
    check: fn(&GradeReport) -> anyhow::Result<()>,
}

const CLUSTERLAB: Case = Case {
    profile: "profiles/clusterlab.toml",
    scenarios: &[],
    check: check_all_pass,
};
const GOOD: Case = Case {
    profile: "fixtures/good/profile.toml",
    scenarios: &[],
    check: check_all_pass,
};
/// Every fixture with a planted fault, on the scenarios its fault concerns only.
const PLANTED: &[Case] = &[
    Case {
        profile: "fixtures/faulty/profile.toml",
        scenarios: &["startup", "kill_follower", "kill_leader"],
        check: check_faulty,
    },
    Case {
        profile: "fixtures/sticky-service/profile.toml",
        scenarios: &["leader_demoted", "partition_leader"],
        check: check_sticky_service,
    },
    Case {
        profile: "fixtures/no-rejoin/profile.toml",
        scenarios: &["restart_follower"],
        check: check_no_rejoin,
    },
    Case {
        profile: "fixtures/forwarder-exits/profile.toml",
        scenarios: &["gateway"],
        check: check_forwarder_exits,
    },
    Case {
        profile: "fixtures/last-digit/profile.toml",
        scenarios: &["scale"],
        check: check_last_digit,
    },
    Case {
        profile: "fixtures/no-shared-table/profile.toml",
        scenarios: &["startup"],
        check: check_no_shared_table,
    },
];

/// Gradings run at once in one trial, and scenarios at once in one grading.
const GRADINGS_AT_ONCE: usize = 2;
const SCENARIOS_AT_ONCE: usize = 2;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Two subnets of their own for each grading run (one per scenario slot), away from the
/// other trials' 10.78.x.
fn subnet() -> Subnet {
    let k = (std::process::id() * 6 + SEQ.fetch_add(2, Ordering::SeqCst)) % 150 + 100;
    Subnet {
        base: Ipv4Addr::new(10, 79, k as u8, 0),
        prefix: 24,
    }
}

fn grading_trial(env: &Environment, name: &str, cases: &'static [Case]) -> Trial {
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
                    let runs = cases.iter().map(|case| grade_case(&docker, &image, case));
                    let outcomes: Vec<anyhow::Result<()>> = futures::stream::iter(runs)
                        .buffered(GRADINGS_AT_ONCE)
                        .collect()
                        .await;
                    let failed: Vec<String> = cases
                        .iter()
                        .zip(outcomes)
                        .filter_map(|(c, r)| r.err().map(|e| format!("{}: {e:#}", c.profile)))
                        .collect();
                    ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
                    Ok(())
                })
                .map_err(|e: anyhow::Error| format!("{e:#}").into())
        }),
    }
}

/// Grades one case and checks its report, report.json and junit.xml.
async fn grade_case(docker: &bollard::Docker, image: &str, case: &Case) -> anyhow::Result<()> {
    let path = default_workspace().join(case.profile);
    let p = Profile::load(&path)?;
    let mut opts = GradeOptions::new(ImageOptions::for_workspace(default_workspace()));
    opts.subnet = Some(subnet());
    opts.parallel = SCENARIOS_AT_ONCE;
    opts.cluster_prefix = Some(format!("g{}-{}", std::process::id() % 10_000, p.name));
    opts.scenarios = scenarios_by_name(
        &case
            .scenarios
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )?;
    if p.submission.clusterlab_node_image {
        // The trials' node image is this tree's; do not build it twice.
        opts.image = Some(image.to_string());
    }
    let started = std::time::Instant::now();
    let report = grade(docker, &p, case.profile, &opts).await?;
    print!("{}", harness::grade::report::summary_table(&report));
    println!(
        "graded {} in {:.1} s",
        case.profile,
        started.elapsed().as_secs_f64()
    );
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
    let html = std::fs::read_to_string(dir.path().join("report.html"))?;
    check_page(&report, &p, &html)?;
    if !case.scenarios.is_empty() {
        ensure!(
            names(&report) == case.scenarios,
            "only the scenarios asked for run, in order: {:?}",
            names(&report)
        );
    }
    (case.check)(&report).with_context(|| {
        format!(
            "report:\n{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        )
    })
}

/// report.html holds one SVG timeline per scenario with a lane for every node of its
/// cluster, recorded from the real cluster: every node observed, a failure marked on a
/// failed scenario, and after a kill the moment the dead node left each survivor's table.
fn check_page(r: &GradeReport, p: &Profile, html: &str) -> anyhow::Result<()> {
    let lanes = harness::grade::html::count_lanes(html);
    ensure!(
        lanes.len() == r.scenarios.len(),
        "report.html holds {} timelines for {} scenarios",
        lanes.len(),
        r.scenarios.len()
    );
    let svgs: Vec<&str> = html.split("<svg class=\"timeline\"").skip(1).collect();
    for ((s, n), svg) in r.scenarios.iter().zip(&lanes).zip(&svgs) {
        let t = s
            .timeline
            .as_ref()
            .with_context(|| format!("{} recorded no timeline", s.name))?;
        let want = Scenario::from_name(&s.name).map_or(r.nodes, |sc| sc.nodes(p));
        ensure!(
            *n == want && t.nodes.len() == want,
            "{}: {n} lanes, {} nodes in the timeline, {want} nodes in the cluster",
            s.name,
            t.nodes.len()
        );
        for node in &t.nodes {
            ensure!(
                t.samples.iter().any(|x| &x.node == node),
                "{}: nothing recorded for {node}",
                s.name
            );
        }
        if t.fault.is_some() {
            ensure!(
                !t.limits.is_empty() && svg.contains("class=\"marker limit\""),
                "{}: no limit line after the fault",
                s.name
            );
        }
        if s.status == Status::Failed {
            ensure!(
                t.failure.is_some() && svg.contains("class=\"marker failure\""),
                "{}: the first failed check is not marked",
                s.name
            );
        }
        if s.passed && (s.name == "kill_follower" || s.name == "kill_leader") {
            ensure!(
                t.fault.is_some() && svg.matches("class=\"gone\"").count() == want - 1,
                "{}: the dead node's leaving is not marked on every survivor's lane",
                s.name
            );
        }
    }
    Ok(())
}

fn names(r: &GradeReport) -> Vec<&str> {
    r.scenarios.iter().map(|s| s.name.as_str()).collect()
}

fn check_all_pass(r: &GradeReport) -> anyhow::Result<()> {
    let all: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
    ensure!(
        names(r) == all,
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
    ensure!(
        fig("scale", "ssh_pairs_ok") == Some(110.0),
        "110 SSH pairs at 11 nodes"
    );
    ensure!(
        fig("leader_demoted", "one_server_watched_s").is_some_and(|s| s >= 5.0),
        "leader_demoted watched for two servers at least limits.steady_s"
    );
    ensure!(
        fig("partition_leader", "rejoined_s").is_some()
            && fig("restart_follower", "rejoined_s").is_some()
            && fig("restart_follower", "member_healthy_s").is_some(),
        "partition_leader and restart_follower measure the rejoin"
    );
    ensure!(
        fig("gateway", "gateway_alive") == Some(1.0)
            && fig("gateway", "gateway_recovered_s").is_some()
            && fig("gateway", "gateway_gets").is_some_and(|n| n > 0.0),
        "gateway measures the stream"
    );
    for s in &r.scenarios {
        ensure!(
            s.figures.contains_key("shared_hosts_s") || s.name == "gateway",
            "{} checks the shared table",
            s.name
        );
    }
    ensure!(r.passed == all.len() && r.failed == 0 && r.errors == 0);
    Ok(())
}

/// The names of the checks that failed in scenario `name`, which must have failed.
fn failed_checks<'a>(
    r: &'a GradeReport,
    name: &str,
) -> anyhow::Result<(&'a ScenarioReport, Vec<&'a str>)> {
    let s = r.scenario(name).with_context(|| format!("no {name}"))?;
    ensure!(
        s.status == Status::Failed,
        "{name} should fail, got {:?}: {:?}",
        s.status,
        s.reason
    );
    ensure!(
        s.logs.is_some(),
        "{name}: a failed scenario carries the nodes' logs"
    );
    Ok((
        s,
        s.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect(),
    ))
}

fn reason_says(s: &ScenarioReport, needles: &[&str]) -> anyhow::Result<()> {
    let reason = s.reason.as_deref().unwrap_or("");
    for n in needles {
        ensure!(
            reason.contains(n),
            "{}'s reason should say {n:?}: {reason}",
            s.name
        );
    }
    Ok(())
}

/// The node a note names after `prefix` (`moved etcd's leadership from node0 (…) …`).
fn noted_node(s: &ScenarioReport, prefix: &str) -> anyhow::Result<String> {
    s.notes
        .iter()
        .find_map(|n| n.strip_prefix(prefix))
        .and_then(|n| n.split(' ').next())
        .map(String::from)
        .with_context(|| format!("{}: no note starting {prefix:?}: {:?}", s.name, s.notes))
}

fn check_sticky_service(r: &GradeReport) -> anyhow::Result<()> {
    let (s, failed) = failed_checks(r, "leader_demoted")?;
    ensure!(
        failed == ["leader_service"] || failed == ["leader_service", "one_server"],
        "leader_demoted: the service checks alone should fail, failed: {failed:?}"
    );
    let old = noted_node(s, "moved etcd's leadership from ")?;
    reason_says(
        s,
        &[
            &format!("{old} ("),
            "but is not the leader",
            "(limits.leader_change_s)",
        ],
    )?;
    let (s, failed) = failed_checks(r, "partition_leader")?;
    ensure!(
        failed == ["service_after_heal"],
        "partition_leader: only the service after the heal should fail, failed: {failed:?}"
    );
    let old = noted_node(s, "cut ")?;
    reason_says(
        s,
        &[
            &format!("{old} ("),
            "but is not the leader",
            "(limits.rejoin_s)",
        ],
    )?;
    ensure!(r.failed == 2 && r.errors == 0);
    Ok(())
}

fn check_no_rejoin(r: &GradeReport) -> anyhow::Result<()> {
    let (s, failed) = failed_checks(r, "restart_follower")?;
    ensure!(
        failed.contains(&"rejoin") && failed.contains(&"etcd_member"),
        "restart_follower: rejoin and etcd_member should fail, failed: {failed:?}"
    );
    ensure!(
        failed
            .iter()
            .all(|c| ["rejoin", "etcd_member", "ssh"].contains(c)),
        "restart_follower: the node's own checks alone should fail, failed: {failed:?}"
    );
    let node = noted_node(s, "started ")?;
    reason_says(
        s,
        &[
            &format!("{node} ("),
            "after the follower was started again",
            "(limits.rejoin_s)",
        ],
    )?;
    ensure!(r.failed == 1 && r.errors == 0);
    Ok(())
}

fn check_forwarder_exits(r: &GradeReport) -> anyhow::Result<()> {
    let (s, failed) = failed_checks(r, "gateway")?;
    ensure!(
        failed == ["gateway_serves"],
        "gateway: only gateway_serves should fail, failed: {failed:?}"
    );
    reason_says(s, &["the gateway stopped", "exit", "/mnt/hosts"])?;
    ensure!(r.failed == 1 && r.errors == 0);
    Ok(())
}

fn check_last_digit(r: &GradeReport) -> anyhow::Result<()> {
    let (s, failed) = failed_checks(r, "scale")?;
    ensure!(
        failed == ["hosts"],
        "scale: only the hosts check should fail, failed: {failed:?}"
    );
    reason_says(s, &["node10 (", "(limits.start_s)"])?;
    ensure!(r.failed == 1 && r.errors == 0);
    Ok(())
}

fn check_no_shared_table(r: &GradeReport) -> anyhow::Result<()> {
    let (s, failed) = failed_checks(r, "startup")?;
    ensure!(
        failed == ["shared_hosts"],
        "startup: only the shared table should fail, failed: {failed:?}"
    );
    reason_says(s, &["/mnt/hosts", "(limits.start_s)", "publish"])?;
    ensure!(r.failed == 1 && r.errors == 0);
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
