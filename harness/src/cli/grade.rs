//! `harness grade` on the command line: arguments, the run, the summary and the exit status.

use crate::grade::{scenarios_by_name, GradeOptions, GradeRun};
use crate::names::Subnet;
use std::path::PathBuf;

/// `harness grade` arguments.
#[derive(clap::Args, Debug)]
pub struct GradeArgs {
    /// The grading profile (default: profiles/clusterlab.toml, which grades clusterlab).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Directory for report.json, junit.xml, results.json and report.html.
    #[arg(long, default_value = "grade-report")]
    pub report: PathBuf,
    /// Grade this local image instead of the profile's submission.
    #[arg(long)]
    pub image: Option<String>,
    /// Run on this subnet instead of the profile's.
    #[arg(long)]
    pub subnet: Option<Subnet>,
    /// Run only this scenario (repeatable): startup, kill_follower, kill_leader,
    /// leader_demoted, partition_leader, restart_follower, scale, gateway.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Allow the profile's node.cap_add to grant this Linux capability (repeatable; e.g.
    /// NET_ADMIN). Without it, the submission's containers get no capability beyond the
    /// baseline docs/GRADING.md lists, and a profile asking for one is refused.
    #[arg(long = "allow-cap", value_name = "CAP")]
    pub allow_caps: Vec<String>,
    /// Scenarios run at once, each cluster on its own subnet (the next ones after the
    /// profile's).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub parallel: u8,
    /// Grade K times and report every scenario whose verdict changed between runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub repeat: u8,
    /// Grade a class: every subfolder of DIR is one submission (its Dockerfile built on the
    /// base image; an optional profile.toml in it may change how it is run, not how it is
    /// judged). Reports go into REPORT/<folder>/ and REPORT/summary.{csv,json}.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["image", "parallel", "repeat"])]
    pub batch: Option<PathBuf>,
    /// With --batch: scenarios at once over the whole batch, each cluster on its own subnet
    /// (default: 3, measured on a 2-core machine; see README "Grading a class").
    #[arg(long, requires = "batch", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub jobs: Option<u8>,
    /// With --batch: skip a submission whose report.json is there for the same image and
    /// profile hashes.
    #[arg(long, requires = "batch")]
    pub resume: bool,
    /// With --batch: compare with an earlier batch's report directory (its summary.json):
    /// prints both wall times, the ratio and whether every verdict is the same; fails when
    /// one differs.
    #[arg(long, value_name = "REPORT", requires = "batch")]
    pub compare: Option<PathBuf>,
    #[command(flatten)]
    pub images: super::ImagesArgs,
}

/// `harness grade --batch`.
async fn run_batch(a: GradeArgs, batch: PathBuf) -> anyhow::Result<()> {
    use crate::grade::batch;
    let image_opts = a.images.options();
    let profile = a
        .profile
        .clone()
        .unwrap_or_else(|| image_opts.workspace.join("profiles/clusterlab.toml"));
    let jobs = a.jobs.map(usize::from);
    let req = batch::BatchRequest {
        dir: batch,
        out: a.report.clone(),
        profile,
        jobs: jobs.unwrap_or(batch::DEFAULT_JOBS),
        resume: a.resume,
        scenarios: scenarios_by_name(&a.scenarios)?,
        allow_caps: a.allow_caps.clone(),
        images: image_opts,
        subnet: a.subnet,
        cluster_prefix: "grade".into(),
    };
    println!(
        "jobs: {}{}",
        req.jobs,
        if jobs.is_none() {
            " (the default for this machine; --jobs K to change)"
        } else {
            ""
        }
    );
    // Read before this run may overwrite it (when --compare names the same directory).
    let earlier = match &a.compare {
        Some(dir) => {
            let path = dir.join("summary.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("--compare: reading {}: {e}", path.display()))?;
            let s: batch::Summary = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--compare: {}: {e}", path.display()))?;
            Some(s)
        }
        None => None,
    };
    let docker = crate::docker::connect().await?;
    let out = batch::run_batch(&docker, &req).await?;
    let s = &out.summary;
    println!();
    print!("{}", batch::summary_table(s));
    println!(
        "wall time: {:.1} s with {} job(s); {} graded, {} kept (--resume); reports in {}",
        s.wall_seconds,
        s.jobs,
        out.graded.len(),
        out.skipped.len(),
        req.out.display()
    );
    for e in &out.write_errors {
        eprintln!("could not write the report of {e}");
    }
    let mut problems = Vec::new();
    if let Some(earlier) = earlier {
        let cmp = batch::compare(&earlier, s);
        print!("{cmp}");
        if !cmp.differences.is_empty() {
            problems.push(format!(
                "{} verdict(s) differ from the earlier batch",
                cmp.differences.len()
            ));
        }
    }
    if !out.all_passed() {
        let bad = s
            .submissions
            .iter()
            .filter(|r| r.status != "passed")
            .count();
        problems.push(format!("{bad} submission(s) did not pass every scenario"));
    }
    if !out.write_errors.is_empty() {
        problems.push(format!("{} report(s) not written", out.write_errors.len()));
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Runs `harness grade`: reports are written whatever the verdict; the command fails when
/// any scenario did not pass.
pub async fn run(a: GradeArgs) -> anyhow::Result<()> {
    if let Some(dir) = a.batch.clone() {
        return run_batch(a, dir).await;
    }
    let image_opts = a.images.options();
    let profile = a
        .profile
        .clone()
        .unwrap_or_else(|| image_opts.workspace.join("profiles/clusterlab.toml"));
    let mut options = GradeOptions::new(image_opts);
    options.image = a.image.clone();
    options.subnet = a.subnet;
    options.scenarios = scenarios_by_name(&a.scenarios)?;
    options.allow_caps = a.allow_caps.clone();
    options.parallel = a.parallel.into();
    let req = GradeRun {
        profile,
        report_dir: a.report.clone(),
        options,
    };
    let repeat = usize::from(a.repeat);
    let runs = crate::grade::run_repeated(&req, repeat).await?;
    let mut not_passed = 0;
    for (k, report) in runs.iter().enumerate() {
        let dir = if repeat == 1 {
            a.report.clone()
        } else {
            println!("\nrun {} of {repeat}", k + 1);
            a.report.join(format!("run{}", k + 1))
        };
        print!("\n{}", crate::grade::report::summary_table(report));
        println!(
            "reports: {}, {} and {} (score {} of {})",
            dir.join("report.json").display(),
            dir.join("junit.xml").display(),
            dir.join("results.json").display(),
            crate::grade::report::gradescope_results(report).score,
            report
                .scenarios
                .iter()
                .map(|s| report.weight(&s.name))
                .sum::<f64>()
        );
        not_passed += report.failed + report.errors;
    }
    if repeat > 1 {
        let changes = crate::grade::verdict_changes(&runs);
        if changes.is_empty() {
            println!("\nno verdict changed over {repeat} runs");
        } else {
            println!("\nverdicts that changed over {repeat} runs:");
            for c in &changes {
                println!("  {c}");
            }
            anyhow::bail!(
                "{} scenario(s) changed verdict between runs: {}",
                changes.len(),
                changes.join("; ")
            );
        }
    }
    if not_passed > 0 {
        anyhow::bail!("{not_passed} scenario run(s) did not pass");
    }
    Ok(())
}
