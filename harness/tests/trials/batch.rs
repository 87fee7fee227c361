//! Batch trial: `harness grade --batch`'s library on a small class built in a temporary
//! directory from the fixtures: copies of fixtures/good, fixtures/faulty and two fixtures
//! with faults the chosen scenario does not touch (sticky-service, last-digit), plus a copy
//! of good whose profile.toml tries to loosen a limit. Graded on kill_follower (the scenario
//! fixtures/faulty fails) with the default jobs; a subset (good, faulty) also with one job,
//! which must give the same verdicts. Then one report is deleted and the batch resumed:
//! only that submission is graded again.

use anyhow::{ensure, Context};
use harness::grade::batch::{self, BatchRequest, Summary};
use harness::grade::report::{GradeReport, Status};
use harness::grade::scenarios::Scenario;
use harness::images::{default_workspace, ImageOptions};
use harness::names::Subnet;
use harness::trial::{docker_required, runtime, Environment};
use libtest_mimic::Trial;
use std::net::Ipv4Addr;
use std::path::Path;

pub fn trials(env: &Environment) -> Vec<Trial> {
    let name = "grade_batch_jobs_and_resume";
    vec![match env.clone() {
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
                .block_on(batch_trial(&docker))
                .map_err(|e: anyhow::Error| format!("{e:#}").into())
        }),
    }]
}

/// Each submission's expected verdict on kill_follower (`None`: refused, an error).
const CLASS: &[(&str, &str, Option<Status>)] = &[
    ("good", "good", Some(Status::Passed)),
    ("faulty", "faulty", Some(Status::Failed)),
    ("sticky", "sticky-service", Some(Status::Passed)),
    ("last-digit", "last-digit", Some(Status::Passed)),
    ("loose", "good", None),
];

/// Copies a fixture's folder (without Python caches) into `to`.
fn copy_fixture(fixture: &str, to: &Path) -> anyhow::Result<()> {
    let from = default_workspace().join("fixtures").join(fixture);
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(&from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn request(docker_prefix: &str, dir: &Path, out: &Path, jobs: usize, pool: u8) -> BatchRequest {
    let ws = default_workspace();
    BatchRequest {
        dir: dir.to_path_buf(),
        out: out.to_path_buf(),
        profile: ws.join("fixtures/good/profile.toml"),
        jobs,
        resume: false,
        scenarios: vec![Scenario::KillFollower],
        allow_caps: Vec::new(),
        images: ImageOptions::for_workspace(ws),
        // Away from the grading trials' 10.79.100-249 and the other trials' 10.78.x.
        subnet: Some(Subnet {
            base: Ipv4Addr::new(10, 79, pool, 0),
            prefix: 24,
        }),
        cluster_prefix: docker_prefix.to_string(),
    }
}

fn verdict(s: &Summary, sub: &str) -> Option<Status> {
    s.submissions
        .iter()
        .find(|r| r.submission == sub)
        .and_then(|r| r.scenarios.get("kill_follower"))
        .map(|x| x.status)
}

async fn batch_trial(docker: &bollard::Docker) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let class = tmp.path().join("class");
    for (name, fixture, _) in CLASS {
        copy_fixture(fixture, &class.join(name))?;
    }
    std::fs::write(
        class.join("loose/profile.toml"),
        "[limits]\ndead_node_s = 600\n",
    )?;
    let prefix = format!("bt{}", std::process::id() % 10_000);

    // The whole class with the default jobs.
    let out = tmp.path().join("out");
    let started = std::time::Instant::now();
    let req = request(&prefix, &class, &out, batch::DEFAULT_JOBS, 40);
    let full = batch::run_batch(docker, &req).await?;
    print!("{}", batch::summary_table(&full.summary));
    println!(
        "default jobs ({}): {:.1} s",
        batch::DEFAULT_JOBS,
        started.elapsed().as_secs_f64()
    );
    for (name, _, want) in CLASS {
        let row = full
            .summary
            .submissions
            .iter()
            .find(|r| r.submission == *name)
            .with_context(|| format!("{name} is not in summary.json"))?;
        match want {
            Some(v) => ensure!(
                verdict(&full.summary, name) == Some(*v),
                "{name}: kill_follower should be {v:?}: {:?}",
                row.reason
            ),
            None => {
                ensure!(row.status == "error", "{name}: {row:?}");
                let reason = row.reason.as_deref().unwrap_or("");
                ensure!(
                    reason.contains("`limits.dead_node_s`"),
                    "the refusal names the key: {reason}"
                );
            }
        }
        let report: GradeReport = serde_json::from_str(
            &std::fs::read_to_string(out.join(name).join("report.json"))
                .with_context(|| format!("{name}/report.json"))?,
        )?;
        ensure!(
            !report.image_hash.is_empty() && !report.profile_hash.is_empty(),
            "{name}: report.json records both hashes"
        );
        ensure!(out.join(name).join("results.json").is_file());
        ensure!(out.join(name).join("junit.xml").is_file());
    }
    ensure!(
        !full.all_passed(),
        "faulty failed, so the batch did not pass"
    );
    let csv = std::fs::read_to_string(out.join("summary.csv"))?;
    ensure!(
        csv.lines().count() == CLASS.len() + 1,
        "summary.csv: a header and one line per submission:\n{csv}"
    );
    ensure!(csv.starts_with(
        "submission,status,score,max_score,seconds,kill_follower,kill_follower_s,reason"
    ));

    class_pages_in_chromium(&out, &full.summary)?;

    // One job at a time on a subset gives the same verdicts.
    let subset = tmp.path().join("subset");
    for name in ["good", "faulty"] {
        copy_fixture(name, &subset.join(name))?;
    }
    let started = std::time::Instant::now();
    let one = batch::run_batch(
        docker,
        &request(&prefix, &subset, &tmp.path().join("out1"), 1, 40),
    )
    .await?;
    println!("1 job: {:.1} s", started.elapsed().as_secs_f64());
    for name in ["good", "faulty"] {
        ensure!(
            verdict(&one.summary, name) == verdict(&full.summary, name),
            "{name}: verdict with 1 job {:?}, with {} jobs {:?}",
            verdict(&one.summary, name),
            batch::DEFAULT_JOBS,
            verdict(&full.summary, name)
        );
    }

    // An interrupted batch: one report missing; --resume grades only that one.
    std::fs::remove_file(out.join("sticky/report.json"))?;
    let mut again = req.clone();
    again.resume = true;
    let resumed = batch::run_batch(docker, &again).await?;
    ensure!(
        resumed.graded == ["sticky"],
        "only the submission without a report is graded again: graded {:?}, kept {:?}",
        resumed.graded,
        resumed.skipped
    );
    ensure!(resumed.skipped.len() == CLASS.len() - 1);
    ensure!(
        verdict(&resumed.summary, "sticky") == Some(Status::Passed),
        "sticky graded again: {:?}",
        verdict(&resumed.summary, "sticky")
    );
    for (name, _, _) in CLASS {
        ensure!(
            verdict(&resumed.summary, name) == verdict(&full.summary, name),
            "{name}: the resumed summary keeps every verdict"
        );
    }
    Ok(())
}

/// The class page and the submissions' pages of the real batch, as headless Chromium reads
/// them: index.html holds the class table with a row per submission, and each graded
/// submission's report.html one SVG timeline per scenario with a lane per node.
fn class_pages_in_chromium(out: &Path, summary: &Summary) -> anyhow::Result<()> {
    let Some(chrome) = chromium() else {
        ensure!(
            !docker_required(),
            "chromium is required (CLUSTERLAB_REQUIRE_DOCKER=1) but not on PATH; .ci/run installs it"
        );
        println!("class pages not loaded: chromium is not installed (apt-get install chromium)");
        return Ok(());
    };
    let index = dump_dom(&chrome, &out.join("index.html"))?;
    ensure!(
        index.contains("<table id=\"class\">"),
        "index.html as Chromium read it has no class table:\n{index}"
    );
    for (name, _, _) in CLASS {
        ensure!(
            index.contains(&format!("data-submission=\"{name}\"")),
            "index.html has no row for {name}"
        );
    }
    for (name, _, expected) in CLASS {
        if expected.is_none() {
            continue;
        }
        let report: GradeReport =
            serde_json::from_slice(&std::fs::read(out.join(name).join("report.json"))?)?;
        let page = dump_dom(&chrome, &out.join(name).join("report.html"))?;
        let lanes = harness::grade::html::count_lanes(&page);
        let want = vec![report.nodes; report.scenarios.len()];
        ensure!(
            lanes == want,
            "{name}/report.html: lanes per timeline {lanes:?}, expected {want:?} (one SVG per scenario, a lane per node)"
        );
    }
    println!(
        "class pages: index.html lists {} submissions; timelines checked in Chromium",
        summary.submissions.len()
    );
    Ok(())
}

/// Debian's chromium, if on PATH.
fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// The DOM of a local page after Chromium ran it.
fn dump_dom(chrome: &Path, file: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--dump-dom",
        ])
        .arg(format!("file://{}", file.display()))
        .output()
        .context("running chromium")?;
    ensure!(
        out.status.success(),
        "chromium failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
