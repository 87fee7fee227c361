//! Hostile submissions (fixtures/hostile): each is graded through the library, `startup`
//! only, and must end in a clear failure or error within its bound, with report.json and
//! junit.xml written, naming what happened, holding no escape sequence or control
//! character, while the Docker engine keeps answering and no container is left behind.
//! The symlink and link-loop submissions are refused while their folder is packed, before
//! Docker builds anything.

use anyhow::{ensure, Context};
use harness::grade::profile::Profile;
use harness::grade::report::{write_reports, GradeReport, Status};
use harness::grade::scenarios::Scenario;
use harness::grade::text::is_clean;
use harness::grade::{grade, GradeOptions};
use harness::images::{default_workspace, ImageOptions};
use harness::names::Subnet;
use harness::trial::{docker_required, runtime, Environment};
use libtest_mimic::Trial;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A hostile fixture: its folder, the most the grading may take, and what the report
/// must say.
struct Hostile {
    dir: &'static str,
    bound: Duration,
    status: Status,
    /// Text the report must contain (case-insensitive).
    names: &'static [&'static str],
}

const HOSTILE: [Hostile; 7] = [
    Hostile {
        dir: "forkbomb",
        bound: Duration::from_secs(120),
        status: Status::Failed,
        names: &["pids limit", "limits.pids"],
    },
    Hostile {
        dir: "memhog",
        bound: Duration::from_secs(90),
        status: Status::Failed,
        names: &["out of memory", "exit code 137"],
    },
    Hostile {
        dir: "flood",
        bound: Duration::from_secs(90),
        status: Status::Failed,
        names: &["log cut to its last"],
    },
    Hostile {
        dir: "symlink",
        bound: Duration::from_secs(20),
        status: Status::Error,
        names: &["symbolic link", "loot", "/root"],
    },
    Hostile {
        dir: "linkloop",
        bound: Duration::from_secs(20),
        status: Status::Error,
        names: &["symbolic link"],
    },
    Hostile {
        dir: "escapes",
        bound: Duration::from_secs(90),
        status: Status::Failed,
        // The texts survive, without their escape sequences.
        names: &["ssh-fake-output", "log-in-red"],
    },
    Hostile {
        dir: "endless",
        // limits.build_s is 10 there.
        bound: Duration::from_secs(60),
        status: Status::Error,
        names: &["build timed out", "limits.build_s", "building for ever"],
    },
];

/// The slowest the Docker engine may be to answer a ping while a hostile submission runs.
const MAX_PING: Duration = Duration::from_secs(5);

pub fn trials(env: &Environment) -> Vec<Trial> {
    HOSTILE
        .iter()
        .map(|h| hostile_trial(env, h))
        .collect()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A subnet of its own for each run, away from the other trials' and the grading trials'.
fn subnet() -> Subnet {
    let k = (std::process::id() * 7 + SEQ.fetch_add(1, Ordering::SeqCst)) % 50 + 50;
    Subnet {
        base: Ipv4Addr::new(10, 79, k as u8, 0),
        prefix: 24,
    }
}

fn hostile_trial(env: &Environment, h: &'static Hostile) -> Trial {
    let name = format!("grader_hostile_{}", h.dir);
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
        Environment::Ready { docker, .. } => Trial::test(name, move || {
            runtime()
                .block_on(grade_hostile(docker, h))
                .map_err(|e: anyhow::Error| format!("{e:#}").into())
        }),
    }
}

async fn grade_hostile(docker: bollard::Docker, h: &Hostile) -> anyhow::Result<()> {
    let file = format!("fixtures/hostile/{}/profile.toml", h.dir);
    let p = Profile::load(&default_workspace().join(&file))?;
    let mut opts = GradeOptions::new(ImageOptions::for_workspace(default_workspace()));
    opts.subnet = Some(subnet());
    let prefix = format!("h{}-{}", std::process::id() % 10_000, h.dir);
    opts.cluster_prefix = Some(prefix.clone());
    opts.scenarios = vec![Scenario::Startup];
    // The engine is pinged all along; the slowest answer says whether the host kept up.
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let pinger = {
        let (docker, slowest) = (docker.clone(), slowest.clone());
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(30), docker.ping()).await;
                let took = if matches!(ok, Ok(Ok(_))) {
                    t.elapsed()
                } else {
                    Duration::from_secs(30)
                };
                {
                    let mut s = slowest.lock().unwrap_or_else(|e| e.into_inner());
                    *s = (*s).max(took);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let started = Instant::now();
    let report = tokio::time::timeout(h.bound, grade(&docker, &p, &file, &opts)).await;
    let took = started.elapsed();
    pinger.abort();
    let report = report
        .map_err(|_| anyhow::anyhow!("grading did not finish within {:?}", h.bound))??;
    let slowest = *slowest.lock().unwrap_or_else(|e| e.into_inner());
    print!("{}", harness::grade::report::summary_table(&report));
    println!(
        "graded in {:.1} s (bound {} s); slowest engine ping {:.2} s",
        took.as_secs_f64(),
        h.bound.as_secs(),
        slowest.as_secs_f64()
    );
    ensure!(
        slowest < MAX_PING,
        "the engine took {slowest:?} to answer a ping while the submission ran (allowed {MAX_PING:?})"
    );
    // Every report is written and reads back.
    let dir = tempfile::tempdir()?;
    write_reports(dir.path(), &report)?;
    let json = std::fs::read_to_string(dir.path().join("report.json"))?;
    let back: GradeReport =
        serde_json::from_str(&json).context("report.json does not read back")?;
    ensure!(back == report, "report.json differs from the report");
    let xml = std::fs::read_to_string(dir.path().join("junit.xml"))?;
    ensure!(
        xml.matches("<testcase ").count() == 1,
        "junit.xml lacks the test case:\n{xml}"
    );
    // No escape sequence or control character anywhere.
    for (what, text) in [("report.json", &json), ("junit.xml", &xml)] {
        ensure!(
            !text.contains('\u{1b}')
                && !text.contains("\\u001b")
                && !text.contains('\u{7}')
                && !text.contains("\\u0007")
                && !text.contains('\u{9b}'),
            "{what} holds an escape character:\n{text}"
        );
    }
    let s = report.scenario("startup").context("no startup scenario")?;
    let texts = s
        .reason
        .iter()
        .chain(s.logs.iter())
        .chain(s.notes.iter())
        .chain(s.checks.iter().filter_map(|c| c.reason.as_ref()));
    for t in texts {
        ensure!(is_clean(t), "a report text is not clean: {t:?}");
    }
    ensure!(
        s.status == h.status,
        "{} should end as {:?}, got {:?}: {}",
        h.dir,
        h.status,
        s.status,
        s.reason.as_deref().unwrap_or("")
    );
    let lower = json.to_lowercase();
    for needle in h.names {
        ensure!(
            lower.contains(&needle.to_lowercase()),
            "the report should say {needle:?}:\n{json}"
        );
    }
    // Nothing is left: the cluster's objects, and (for the cancelled build) its container.
    let cluster = format!("{prefix}-startup");
    let left = harness::cluster::list_objects(&docker, &cluster).await?;
    ensure!(left.is_empty(), "objects left behind: {left:?}");
    if h.dir == "endless" {
        harness::wait_for(
            "the cancelled build's container to go",
            Duration::from_secs(30),
            Duration::from_millis(500),
            || async {
                let all = docker
                    .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                        all: true,
                        ..Default::default()
                    }))
                    .await
                    .map_err(|e| e.to_string())?;
                let building: Vec<String> = all
                    .iter()
                    .filter(|c| {
                        c.command
                            .as_deref()
                            .is_some_and(|cmd| cmd.contains("building for ever"))
                    })
                    .map(|c| format!("{:?} {:?}", c.names, c.state))
                    .collect();
                if building.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still there: {building:?}"))
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
