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
    /// Allow the profile's node.cap_add to grant this Linux capability (repeatable; e.g.
    /// NET_ADMIN). Without it, the submission's containers get no capability beyond the
    /// baseline docs/GRADING.md lists, and a profile asking for one is refused.
    #[arg(long = "allow-cap", value_name = "CAP")]
    pub allow_caps: Vec<String>,
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
    let req = GradeRun {
        profile,
        report_dir: a.report.clone(),
        options,
    };
    let report = crate::grade::run(&req).await?;
    print!("\n{}", crate::grade::report::summary_table(&report));
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
