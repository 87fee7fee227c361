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
    #[command(flatten)]
    pub images: super::ImagesArgs,
}

/// Runs `harness grade`: reports are written whatever the verdict; the command fails when
/// any scenario did not pass.
pub async fn run(a: GradeArgs) -> anyhow::Result<()> {
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
