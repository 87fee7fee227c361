//! `harness grade --batch DIR`: a class of submissions graded through one work queue.
//!
//! Every subfolder of DIR is a submission (a Dockerfile built on the base image). Its
//! optional `profile.toml` may change how it is run, never how it is judged
//! ([`merge_override`]). The (submission, scenario) pairs go through one queue of `jobs`
//! slots, each slot with its own subnet; images are built one after the other ahead of the
//! queue. A submission's report.json, junit.xml and results.json are written (atomically)
//! when its last scenario ends; `--resume` skips a submission whose report.json records the
//! same image and profile hashes ([`resume_decision`]). summary.csv and summary.json list
//! every submission; index.html and each submission's report.html are drawn from the reports
//! on disk by [`super::html::write_class_pages`].

use super::profile::{Profile, ProfileError};
use super::report::{self, GradeReport, ScenarioReport, Status};
use super::scenarios::Scenario;
use super::text::clean;
use crate::images::ImageOptions;
use crate::names::Subnet;
use bollard::Docker;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Scenarios at once when `--jobs` is not given: measured on the 2-core machine the
/// project is graded on (README, "Grading a class"): six fixtures on startup and
/// kill_follower gave the same verdicts as with one job, 1.75x faster.
pub const DEFAULT_JOBS: usize = 3;
/// Most scenarios at once (`--jobs`).
pub const MAX_JOBS: usize = 8;
/// Most subfolders of a batch directory.
pub const MAX_SUBMISSIONS: usize = 1000;
/// Largest `profile.toml` a folder may carry, in bytes.
pub const MAX_OVERRIDE_BYTES: u64 = 64 * 1024;
/// Longest submission (folder) name.
pub const MAX_LABEL: usize = 64;
/// Longest reason kept in a summary.csv cell, in characters.
const CSV_REASON_CHARS: usize = 300;

/// Checks a folder's name as a submission label: 1 to [`MAX_LABEL`] ASCII letters, digits,
/// `-`, `_` or `.`, starting with a letter or digit.
pub fn check_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LABEL {
        return Err(format!("a name of 1 to {MAX_LABEL} characters"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("a name starting with a letter or a digit".into());
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("a name of ASCII letters, digits, '-', '_' and '.' only".into());
    }
    Ok(())
}

/// The submission's part of Docker names: the label itself when it is already lowercase
/// letters, digits and dashes and at most 17 long, otherwise a shortened form with a hash
/// of the label (so that two labels never share it).
pub fn docker_slug(label: &str) -> String {
    const MAX: usize = 17;
    let plain = label
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !label.ends_with('-')
        && !label.contains("--");
    if plain && label.len() <= MAX {
        return label.to_string();
    }
    let mut body = String::new();
    for c in label.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (body.is_empty() || body.ends_with('-'))) {
            body.push(c);
        }
        if body.len() >= 10 {
            break;
        }
    }
    let body = body.trim_end_matches('-');
    let hash = &hex::encode(Sha256::digest(label.as_bytes()))[..6];
    if body.is_empty() {
        format!("s{hash}")
    } else {
        format!("{body}-{hash}")
    }
}

/// One subfolder of the batch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub name: String,
    pub dir: PathBuf,
}

/// An entry of the batch directory that is not graded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedFolder {
    /// The entry's name, cleaned for display.
    pub name: String,
    pub reason: String,
}

/// The submissions of `dir` in name order, and the entries refused (a symbolic link or a
/// bad name). Plain files are skipped; `skip` (the report directory, when inside `dir`) too.
pub fn list_folders(
    dir: &Path,
    skip: Option<&Path>,
) -> std::io::Result<(Vec<Folder>, Vec<RefusedFolder>)> {
    let mut folders = Vec::new();
    let mut refused = Vec::new();
    let skip = skip.and_then(|s| std::fs::canonicalize(s).ok());
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let raw = e.file_name();
        let shown = clean(&raw.to_string_lossy());
        let meta = std::fs::symlink_metadata(e.path())?;
        if meta.file_type().is_symlink() {
            refused.push(RefusedFolder {
                name: shown,
                reason: "is a symbolic link; a batch never follows links out of its directory"
                    .into(),
            });
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        if skip.is_some() && std::fs::canonicalize(e.path()).ok() == skip {
            continue;
        }
        let Some(name) = raw.to_str() else {
            refused.push(RefusedFolder {
                name: shown,
                reason: "the folder's name is not UTF-8".into(),
            });
            continue;
        };
        if let Err(want) = check_label(name) {
            refused.push(RefusedFolder {
                name: shown,
                reason: format!("the folder's name must be {want}"),
            });
            continue;
        }
        if folders.len() >= MAX_SUBMISSIONS {
            refused.push(RefusedFolder {
                name: shown,
                reason: format!("a batch grades at most {MAX_SUBMISSIONS} submissions"),
            });
            continue;
        }
        folders.push(Folder {
            name: name.to_string(),
            dir: e.path(),
        });
    }
    Ok((folders, refused))
}

/// Why a folder's `profile.toml` was not used; the submission is then reported as an error
/// with this reason.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: `{key}` {reason}")]
    Refused {
        file: String,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Cap(#[from] super::profile::CapNotAllowed),
}

/// Reads a folder's optional `profile.toml` (at most [`MAX_OVERRIDE_BYTES`], not a link).
pub fn read_override(dir: &Path) -> Result<Option<String>, OverrideError> {
    let path = dir.join("profile.toml");
    let file = clean(&path.display().to_string());
    let read = |reason: String| OverrideError::Read {
        file: file.clone(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e.to_string())),
    };
    if !meta.is_file() {
        return Err(read("is not a plain file (a link or a directory)".into()));
    }
    if meta.len() > MAX_OVERRIDE_BYTES {
        return Err(read(format!(
            "{} bytes; a submission's profile.toml may hold at most {MAX_OVERRIDE_BYTES}",
            meta.len()
        )));
    }
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| read(e.to_string()))
}

/// How a key that decides verdicts or confinement may appear in a folder's profile.toml.
#[derive(Clone, Copy)]
enum Rule {
    /// Only with the batch profile's value.
    Same,
    /// The batch profile's value or a smaller one (a tighter bound only hurts the
    /// submission itself).
    NotAbove,
    /// The batch profile's value or a larger one.
    NotBelow,
}

/// The `limits` keys and how a folder may change them.
fn limit_rule(key: &str) -> Rule {
    match key {
        // A shorter steady period is easier to pass; a faster poll loads the grader.
        "steady_s" => Rule::NotBelow,
        "poll_ms" => Rule::Same,
        _ => Rule::NotAbove,
    }
}

/// Compares each field of two sections (as JSON objects); the first field that `rule`
/// refuses is returned as (key, reason).
fn compare_section<T: Serialize>(
    section: &str,
    base: &T,
    merged: &T,
    rule: impl Fn(&str) -> Option<Rule>,
) -> Option<(String, String)> {
    let as_map = |v: &T| match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (b, m) = (as_map(base), as_map(merged));
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(m.keys()).collect();
    for k in keys {
        let Some(r) = rule(k) else { continue };
        let (bv, mv) = (b.get(k), m.get(k));
        if bv == mv {
            continue;
        }
        let num = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_f64());
        let ok = match (r, num(bv), num(mv)) {
            (Rule::NotAbove, Some(b), Some(m)) => m <= b,
            (Rule::NotBelow, Some(b), Some(m)) => m >= b,
            _ => false,
        };
        if !ok {
            let show = |v: Option<&serde_json::Value>| {
                v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
            };
            let how = match r {
                Rule::Same => "may not be changed by a submission",
                Rule::NotAbove => "may only be lowered by a submission",
                Rule::NotBelow => "may only be raised by a submission",
            };
            return Some((
                format!("{section}.{k}"),
                format!(
                    "is {} where the batch's profile has {}: it decides verdicts or confinement and {how}",
                    show(mv),
                    show(bv)
                ),
            ));
        }
    }
    None
}

/// The effective profile of one submission: the batch's profile with the folder's
/// `profile.toml` (`text`) merged over it, the submission being the folder itself.
///
/// A folder may set how it is run: `[node]` (command, entrypoint, env, mounts; `cap_add`
/// within the baseline and `--allow-cap`), the judge's `service_port` and
/// `etcd_client_port`, and a `[gateway]`'s command, entrypoint, env and port when the
/// batch's profile has a gateway. `name` and `network.subnet` are ignored (the batch names
/// and places every cluster) and `submission.build` may only be `"."`. Every other key
/// decides verdicts or confinement (`nodes`, `network.first_offset`, `[judge]`, `[limits]`,
/// `[scenarios]`, `[weights]`, the gateway's image, build, path and interval): it may only
/// repeat the batch's value, or for a limit set a tighter one, and is refused otherwise,
/// naming the key.
pub fn merge_override(
    base: &Profile,
    text: Option<&str>,
    dir: &Path,
    allow_caps: &[String],
) -> Result<Profile, OverrideError> {
    let file = clean(&dir.join("profile.toml").display().to_string());
    let refuse = |key: &str, reason: &str| OverrideError::Refused {
        file: file.clone(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    // The submission is the folder: checked on the file itself, before merging.
    if let Some(text) = text {
        let raw = Figment::from(Toml::string(text));
        let own = "is not allowed: a batch grades the image built from the folder's own Dockerfile";
        if raw.find_value("submission.image").is_ok() {
            return Err(refuse("submission.image", own));
        }
        if let Ok(v) = raw.find_value("submission.clusterlab_node_image") {
            if v.to_bool() != Some(false) {
                return Err(refuse("submission.clusterlab_node_image", own));
            }
        }
        if let Ok(v) = raw.find_value("submission.build") {
            if !matches!(v.as_str(), Some(".") | Some("./")) {
                return Err(refuse(
                    "submission.build",
                    "may only be \".\": a batch builds the folder itself",
                ));
            }
        }
    }
    let mut start = base.clone();
    start.submission = super::profile::SubmissionSource {
        build: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let mut merged = match text {
        None => start.clone(),
        Some(text) => {
            let fig = Figment::from(Serialized::defaults(&start)).merge(Toml::string(text));
            Profile::from_figment(&fig, &file)?
        }
    };
    let section = |key: &str, reason: String| OverrideError::Refused {
        file: file.clone(),
        key: key.to_string(),
        reason,
    };
    if merged.nodes != base.nodes {
        return Err(section(
            "nodes",
            format!(
                "is {} where the batch's profile has {}: it decides verdicts and may not be changed by a submission",
                merged.nodes, base.nodes
            ),
        ));
    }
    if merged.network.first_offset != base.network.first_offset {
        return Err(section(
            "network.first_offset",
            format!(
                "is {} where the batch's profile has {}: it may not be changed by a submission",
                merged.network.first_offset, base.network.first_offset
            ),
        ));
    }
    let judged =
        |k: &str| (!matches!(k, "service_port" | "etcd_client_port")).then_some(Rule::Same);
    let found = compare_section("judge", &base.judge, &merged.judge, judged)
        .or_else(|| {
            compare_section("limits", &base.limits, &merged.limits, |k| {
                Some(limit_rule(k))
            })
        })
        .or_else(|| {
            compare_section("scenarios", &base.scenarios, &merged.scenarios, |_| {
                Some(Rule::Same)
            })
        })
        .or_else(|| {
            compare_section("weights", &base.weights, &merged.weights, |_| {
                Some(Rule::Same)
            })
        });
    if let Some((key, reason)) = found {
        return Err(section(&key, reason));
    }
    match (&base.gateway, &merged.gateway) {
        (None, Some(_)) => {
            return Err(refuse(
                "gateway",
                "is not allowed: the batch's profile grades no gateway, and a submission cannot add a scenario",
            ))
        }
        (Some(b), Some(m)) => {
            let fixed = |k: &str| {
                (!matches!(k, "command" | "entrypoint" | "env" | "port")).then_some(Rule::Same)
            };
            if let Some((key, reason)) = compare_section("gateway", b, m, fixed) {
                return Err(section(&key, reason));
            }
        }
        _ => {}
    }
    merged.name = base.name.clone();
    merged.network.subnet = base.network.subnet.clone();
    merged.submission = super::profile::SubmissionSource {
        build: Some(dir.to_path_buf()),
        ..Default::default()
    };
    merged.granted_caps(allow_caps, &file)?;
    Ok(merged)
}

/// A hash of what decides a grading besides the image: the effective profile (without its
/// name, subnet and submission folder, which the batch decides), the scenarios asked for
/// and the capabilities allowed.
pub fn profile_hash(p: &Profile, scenarios: &[Scenario], allow_caps: &[String]) -> String {
    let mut p = p.clone();
    p.name = String::new();
    p.network.subnet = String::new();
    p.submission = Default::default();
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&p).unwrap_or_default());
    for s in scenarios {
        h.update([0]);
        h.update(s.name().as_bytes());
    }
    for c in allow_caps {
        h.update([1]);
        h.update(c.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// What `--resume` does with one submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Its report is there for the same image and profile: kept as it is.
    Skip(Box<GradeReport>),
    /// Graded (again), for this reason.
    Grade(&'static str),
}

/// Whether a submission with these hashes is graded again, given its report.json (`None`
/// when there is none).
pub fn resume_decision(existing: Option<&str>, image_hash: &str, profile_hash: &str) -> Resume {
    let Some(text) = existing else {
        return Resume::Grade("no report yet");
    };
    let Ok(r) = serde_json::from_str::<GradeReport>(text) else {
        return Resume::Grade("its report.json does not read");
    };
    if image_hash.is_empty() || r.image_hash != image_hash {
        return Resume::Grade("the image changed");
    }
    if r.profile_hash != profile_hash {
        return Resume::Grade("the profile changed");
    }
    Resume::Skip(Box::new(r))
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    // Readable like any report (a temporary file starts as 0600).
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes OUT/<name>/{junit.xml,results.json} and then report.json, each atomically;
/// report.json, written last, marks the submission complete. OUT/<name> must not be a
/// link.
pub fn write_submission_reports(out: &Path, name: &str, r: &GradeReport) -> std::io::Result<()> {
    let dir = out.join(name);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if !m.is_dir() => {
            return Err(std::io::Error::other(format!(
                "{} is not a directory (a link?); not writing into it",
                dir.display()
            )))
        }
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(&dir)?,
    }
    write_atomic(&dir.join("junit.xml"), report::junit_xml(r).as_bytes())?;
    let results = serde_json::to_string_pretty(&report::gradescope_results(r))
        .map_err(std::io::Error::other)?;
    write_atomic(&dir.join("results.json"), (results + "\n").as_bytes())?;
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    write_atomic(&dir.join("report.json"), (json + "\n").as_bytes())?;
    Ok(())
}

/// One scenario of one submission in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryScenario {
    pub status: Status,
    /// Wall time of the scenario.
    pub seconds: f64,
    /// The scenario's main figure ([`key_figure`]), when it measured one.
    pub key_figure: Option<String>,
    pub key_seconds: Option<f64>,
    pub figures: BTreeMap<String, f64>,
    pub reason: Option<String>,
}

/// One submission in summary.csv and summary.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub submission: String,
    /// passed, failed (a scenario failed), error (a scenario could not be run, e.g. the
    /// build failed or the profile.toml was refused) or refused (the folder was not graded).
    pub status: String,
    pub score: f64,
    pub max_score: f64,
    pub seconds: f64,
    /// Kept from an earlier run by `--resume`.
    pub resumed: bool,
    pub reason: Option<String>,
    pub image_hash: String,
    pub profile_hash: String,
    pub scenarios: BTreeMap<String, SummaryScenario>,
}

/// summary.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub profile: String,
    pub jobs: usize,
    /// Wall time of the batch run, in seconds.
    pub wall_seconds: f64,
    /// Every scenario that appears, in the grader's order (the columns of summary.csv).
    pub scenarios: Vec<String>,
    pub submissions: Vec<SummaryRow>,
}

/// A scenario's main figure: `hosts_correct_s` (the tables right again) where measured,
/// else the first `_s` figure by name.
pub fn key_figure(s: &ScenarioReport) -> Option<(String, f64)> {
    s.figures
        .get_key_value("hosts_correct_s")
        .or_else(|| s.figures.iter().find(|(k, _)| k.ends_with("_s")))
        .map(|(k, v)| (k.clone(), *v))
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Passed => "passed",
        Status::Failed => "failed",
        Status::Error => "error",
    }
}

/// The summary row of a submission's report.
pub fn summary_row(name: &str, r: &GradeReport, resumed: bool) -> SummaryRow {
    let status = if r.errors > 0 {
        "error"
    } else if r.failed > 0 {
        "failed"
    } else {
        "passed"
    };
    let scenarios = r
        .scenarios
        .iter()
        .map(|s| {
            let key = key_figure(s);
            (
                s.name.clone(),
                SummaryScenario {
                    status: s.status,
                    seconds: s.seconds,
                    key_figure: key.as_ref().map(|k| k.0.clone()),
                    key_seconds: key.map(|k| k.1),
                    figures: s.figures.clone(),
                    reason: s.reason.clone(),
                },
            )
        })
        .collect();
    SummaryRow {
        submission: name.to_string(),
        status: status.into(),
        score: report::gradescope_results(r).score,
        max_score: r.scenarios.iter().map(|s| r.weight(&s.name)).sum(),
        seconds: r.seconds,
        resumed,
        reason: r
            .scenarios
            .iter()
            .find(|s| s.status != Status::Passed)
            .and_then(|s| s.reason.as_ref().map(|x| format!("{}: {x}", s.name))),
        image_hash: r.image_hash.clone(),
        profile_hash: r.profile_hash.clone(),
        scenarios,
    }
}

/// A CSV cell of text that may come from a submission: cleaned ([`clean`]), prefixed with
/// `'` when it starts with `=`, `+`, `-`, `@`, a tab or a carriage return (so a spreadsheet
/// never reads it as a formula), and quoted.
pub fn csv_text(s: &str) -> String {
    let mut c = clean(s);
    if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        c.insert(0, '\'');
    }
    format!("\"{}\"", c.replace('"', "\"\""))
}

fn csv_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{}", (v * 100.0).round() / 100.0),
        _ => String::new(),
    }
}

/// summary.csv: a header, then one line per submission: submission, status, score,
/// max_score, seconds, then per scenario its verdict and `<scenario>_s` (its key figure),
/// then the first reason.
pub fn summary_csv(s: &Summary) -> String {
    let mut out = String::from("submission,status,score,max_score,seconds");
    for sc in &s.scenarios {
        out.push_str(&format!(",{sc},{sc}_s"));
    }
    out.push_str(",reason\r\n");
    for r in &s.submissions {
        out.push_str(&csv_text(&r.submission));
        out.push(',');
        out.push_str(&csv_text(&r.status));
        for v in [r.score, r.max_score, r.seconds] {
            out.push(',');
            out.push_str(&csv_num(Some(v)));
        }
        for sc in &s.scenarios {
            match r.scenarios.get(sc) {
                Some(x) => {
                    out.push(',');
                    out.push_str(status_word(x.status));
                    out.push(',');
                    out.push_str(&csv_num(x.key_seconds));
                }
                None => out.push_str(",,"),
            }
        }
        out.push(',');
        let reason: String = r
            .reason
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(CSV_REASON_CHARS)
            .collect();
        out.push_str(&csv_text(&reason));
        out.push_str("\r\n");
    }
    out
}

/// The summary as a table for the terminal: one line per submission, a column per scenario.
pub fn summary_table(s: &Summary) -> String {
    let name_w = s
        .submissions
        .iter()
        .map(|r| r.submission.chars().count())
        .chain([10])
        .max()
        .unwrap_or(10)
        .min(40);
    let mut out = format!("{:<name_w$}  {:<7}  {:>9}", "submission", "status", "score");
    for sc in &s.scenarios {
        out.push_str(&format!("  {sc}"));
    }
    out.push('\n');
    for r in &s.submissions {
        let name: String = clean(&r.submission).chars().take(name_w).collect();
        let score = format!("{}/{}", csv_num(Some(r.score)), csv_num(Some(r.max_score)));
        out.push_str(&format!("{name:<name_w$}  {:<7}  {score:>9}", r.status));
        for sc in &s.scenarios {
            let v = r
                .scenarios
                .get(sc)
                .map(|x| match x.status {
                    Status::Passed => "passed",
                    Status::Failed => "FAILED",
                    Status::Error => "error",
                })
                .unwrap_or("-");
            out.push_str(&format!("  {v:<w$}", w = sc.len()));
        }
        out.push('\n');
    }
    out
}

/// Two batches side by side (`--compare`): wall times, ratio, verdicts that differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub earlier_seconds: f64,
    pub earlier_jobs: usize,
    pub seconds: f64,
    pub jobs: usize,
    /// Every (submission, scenario) verdict compared.
    pub compared: usize,
    /// `submission scenario: earlier → now`, for each verdict that is not the same.
    pub differences: Vec<String>,
}

impl Comparison {
    /// How many times faster this batch was than the earlier one.
    pub fn ratio(&self) -> f64 {
        if self.seconds > 0.0 {
            self.earlier_seconds / self.seconds
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "compared with the earlier batch: {:.1} s with {} job(s) then, {:.1} s with {} job(s) now: {:.2}x faster",
            self.earlier_seconds,
            self.earlier_jobs,
            self.seconds,
            self.jobs,
            self.ratio()
        )?;
        if self.differences.is_empty() {
            writeln!(f, "verdicts: all {} the same", self.compared)
        } else {
            writeln!(
                f,
                "verdicts that differ ({} of {}):",
                self.differences.len(),
                self.compared
            )?;
            for d in &self.differences {
                writeln!(f, "  {d}")?;
            }
            Ok(())
        }
    }
}

/// Compares two batches' verdicts, submission by submission and scenario by scenario.
pub fn compare(earlier: &Summary, now: &Summary) -> Comparison {
    let word = |r: Option<&SummaryRow>, sc: &str| -> String {
        match r {
            None => "no submission".into(),
            Some(r) => r
                .scenarios
                .get(sc)
                .map(|x| status_word(x.status).to_string())
                .unwrap_or_else(|| format!("not run ({})", r.status)),
        }
    };
    let mut subs: Vec<&str> = earlier
        .submissions
        .iter()
        .map(|r| r.submission.as_str())
        .collect();
    for r in &now.submissions {
        if !subs.contains(&r.submission.as_str()) {
            subs.push(&r.submission);
        }
    }
    let mut scs: Vec<&str> = earlier.scenarios.iter().map(String::as_str).collect();
    for sc in &now.scenarios {
        if !scs.contains(&sc.as_str()) {
            scs.push(sc);
        }
    }
    let mut differences = Vec::new();
    let mut compared = 0;
    for sub in &subs {
        let a = earlier.submissions.iter().find(|r| r.submission == *sub);
        let b = now.submissions.iter().find(|r| r.submission == *sub);
        for sc in &scs {
            compared += 1;
            let (x, y) = (word(a, sc), word(b, sc));
            if x != y {
                differences.push(format!("{} {sc}: {x} -> {y}", clean(sub)));
            }
        }
    }
    Comparison {
        earlier_seconds: earlier.wall_seconds,
        earlier_jobs: earlier.jobs,
        seconds: now.wall_seconds,
        jobs: now.jobs,
        compared,
        differences,
    }
}

/// Writes OUT/summary.csv and OUT/summary.json (atomically).
pub fn write_summary(out: &Path, s: &Summary) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("summary.csv"), summary_csv(s).as_bytes())?;
    let json = serde_json::to_string_pretty(s).map_err(std::io::Error::other)?;
    write_atomic(&out.join("summary.json"), (json + "\n").as_bytes())
}

/// A batch to grade.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub profile: PathBuf,
    /// Scenarios at once over the whole batch (at least 1).
    pub jobs: usize,
    pub resume: bool,
    /// The scenarios to run; empty for every one the profile enables.
    pub scenarios: Vec<Scenario>,
    pub allow_caps: Vec<String>,
    pub images: ImageOptions,
    /// First subnet of the pool (slot k takes the k-th after it); default the profile's.
    pub subnet: Option<Subnet>,
    /// Clusters are named `<prefix>-<submission>-<scenario>`.
    pub cluster_prefix: String,
}

/// What a batch did.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub summary: Summary,
    /// Submissions graded by this run, in order.
    pub graded: Vec<String>,
    /// Submissions kept from an earlier run by `--resume`.
    pub skipped: Vec<String>,
    /// Reports that could not be written, with why.
    pub write_errors: Vec<String>,
}

impl BatchOutcome {
    /// Every submission graded and passed, nothing refused, every report written.
    pub fn all_passed(&self) -> bool {
        self.write_errors.is_empty()
            && self
                .summary
                .submissions
                .iter()
                .all(|r| r.status == "passed")
    }
}

/// What stops a whole batch before it starts.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Grade(#[from] super::GradeError),
    #[error("reading the batch directory {dir}: {source}")]
    Dir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the base image: {0}")]
    Base(crate::docker::HarnessError),
    #[error("writing the summary and class pages into {dir}: {source}")]
    Summary {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// One submission being graded.
struct Graded {
    name: String,
    dir: PathBuf,
    slug: String,
    profile: Profile,
    scenarios: Vec<Scenario>,
    image_hash: String,
    profile_hash: String,
}

/// A built submission: its image and, for the gateway scenario, the gateway's image.
type Images = (String, Option<Result<String, String>>);
/// A submission's images, or why it has none.
type Built = Result<Images, String>;

/// Grades a batch on `docker` (see the module's documentation).
pub async fn run_batch(docker: &Docker, req: &BatchRequest) -> Result<BatchOutcome, BatchError> {
    let started = Instant::now();
    let jobs = req.jobs.clamp(1, MAX_JOBS);
    let base = Profile::load(&req.profile).map_err(super::GradeError::from)?;
    let profile_file = req.profile.display().to_string();
    for cap in &req.allow_caps {
        super::profile::capability(cap).map_err(|reason| super::GradeError::AllowCap {
            cap: cap.clone(),
            reason,
        })?;
    }
    if req.scenarios.contains(&Scenario::Gateway) && base.gateway.is_none() {
        return Err(super::GradeError::NoGateway.into());
    }
    let scenarios: Vec<Scenario> = if req.scenarios.is_empty() {
        Scenario::ALL
            .into_iter()
            .filter(|s| s.enabled(&base))
            .collect()
    } else {
        req.scenarios.clone()
    };
    // Absolute, so that reports name every folder plainly.
    let batch_dir = std::fs::canonicalize(&req.dir).map_err(|source| BatchError::Dir {
        dir: req.dir.display().to_string(),
        source,
    })?;
    let (folders, refused) =
        list_folders(&batch_dir, Some(&req.out)).map_err(|source| BatchError::Dir {
            dir: req.dir.display().to_string(),
            source,
        })?;
    let base_image = crate::images::ensure_base(docker, &req.images)
        .await
        .map_err(BatchError::Base)?;
    let base_id = crate::docker::ctx(
        format!("inspecting base image {base_image}"),
        docker.inspect_image(&base_image).await,
    )
    .map_err(BatchError::Base)?
    .id
    .unwrap_or_default();
    let pool = req.subnet.unwrap_or_else(|| base.subnet());

    // Each folder: its effective profile, its hashes, and whether it is graded at all.
    let mut reports: Vec<(String, Option<GradeReport>, bool)> = Vec::new();
    let mut todo: Vec<Graded> = Vec::new();
    let mut skipped = Vec::new();
    let mut write_errors = Vec::new();
    let not_run_report = |profile: &Profile, image: &str, reason: &str, ih: &str, ph: &str| {
        let mut r = GradeReport::new(
            &base.name,
            &profile_file,
            image,
            profile.nodes,
            &pool.to_string(),
            scenarios
                .iter()
                .map(|s| ScenarioReport::not_run(*s, &clean(reason)))
                .collect(),
        )
        .cleaned()
        .with_weights(&profile.weights);
        r.image_hash = ih.to_string();
        r.profile_hash = ph.to_string();
        r
    };
    for f in folders {
        let image_hash = match super::runner::submission_context(&f.dir) {
            Ok(ctx) => ctx.hash(&base_id),
            Err(_) => String::new(),
        };
        let merged = read_override(&f.dir)
            .and_then(|t| merge_override(&base, t.as_deref(), &f.dir, &req.allow_caps));
        let (profile, refusal) = match merged {
            Ok(p) => (p, None),
            Err(e) => (base.clone(), Some(e.to_string())),
        };
        let ph = profile_hash(&profile, &scenarios, &req.allow_caps);
        if req.resume {
            let existing = std::fs::read_to_string(f.dir_report(&req.out)).ok();
            match resume_decision(existing.as_deref(), &image_hash, &ph) {
                Resume::Skip(r) => {
                    skipped.push(f.name.clone());
                    reports.push((f.name, Some(*r), true));
                    continue;
                }
                Resume::Grade(_) => {}
            }
        }
        if let Some(reason) = refusal {
            let r = not_run_report(
                &profile,
                "(not built)",
                &format!("the submission's profile.toml was refused: {reason}"),
                &image_hash,
                &ph,
            );
            if let Err(e) = write_submission_reports(&req.out, &f.name, &r) {
                write_errors.push(format!("{}: {e}", f.name));
            }
            reports.push((f.name, Some(r), false));
            continue;
        }
        reports.push((f.name.clone(), None, false));
        todo.push(Graded {
            slug: docker_slug(&f.name),
            name: f.name,
            dir: f.dir,
            profile,
            scenarios: scenarios.clone(),
            image_hash,
            profile_hash: ph,
        });
    }
    let total: usize = todo.iter().map(|g| g.scenarios.len()).sum();
    let mut progress = Progress::new(total, jobs);
    progress.line(&format!(
        "grading {} submission(s) ({} scenario runs) with {jobs} job(s) at once{}",
        todo.len(),
        total,
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; {} kept from an earlier run (--resume)", skipped.len())
        }
    ));

    // Images are built one after the other, ahead of the queue.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Built)>();
    let builder = {
        let todo = &todo;
        let base_image = &base_image;
        async move {
            for (i, g) in todo.iter().enumerate() {
                let built = build(docker, &req.images, base_image, g).await;
                if tx.send((i, built)).is_err() {
                    break;
                }
            }
        }
    };
    let mut results: Vec<Vec<Option<ScenarioReport>>> =
        todo.iter().map(|g| vec![None; g.scenarios.len()]).collect();
    let mut images: Vec<Option<Images>> = todo.iter().map(|_| None).collect();
    let mut first_start: Vec<Option<Instant>> = todo.iter().map(|_| None).collect();
    let mut finished: Vec<Option<GradeReport>> = todo.iter().map(|_| None).collect();
    let queue = async {
        let mut ready: VecDeque<(usize, usize)> = VecDeque::new();
        let mut free: Vec<usize> = (0..jobs).rev().collect();
        let mut running = FuturesUnordered::new();
        let mut builds_left = todo.len();
        let mut next_job = 0usize;
        loop {
            while !free.is_empty() {
                let Some((i, k)) = ready.pop_front() else {
                    break;
                };
                let g = &todo[i];
                let s = g.scenarios[k];
                // Only built submissions are queued.
                let Some((image, gateway)) = images[i].clone() else {
                    continue;
                };
                let slot = free.pop().unwrap_or(0);
                first_start[i].get_or_insert_with(Instant::now);
                let cluster = format!(
                    "{}-{}-{}",
                    req.cluster_prefix,
                    g.slug,
                    s.name().replace('_', "-")
                );
                let subnet = super::nth_subnet(pool, slot);
                let id = next_job;
                next_job += 1;
                progress.start(id, &g.name, s.name());
                let profile = g.profile.clone();
                running.push(async move {
                    let r = if let Err(e) = crate::names::validate_cluster_name(&cluster) {
                        ScenarioReport::not_run(s, &format!("cluster name {cluster:?}: {e}"))
                    } else {
                        match (s, &gateway) {
                            (Scenario::Gateway, Some(Err(reason))) => {
                                ScenarioReport::not_run(s, reason)
                            }
                            (_, gw) => {
                                let gw = gw.as_ref().and_then(|g| g.as_ref().ok());
                                super::run_one(docker, &profile, &image, gw, s, &cluster, subnet)
                                    .await
                            }
                        }
                    };
                    (id, i, k, slot, r)
                });
            }
            if running.is_empty() && ready.is_empty() && builds_left == 0 {
                break;
            }
            tokio::select! {
                Some((id, i, k, slot, r)) = running.next(), if !running.is_empty() => {
                    free.push(slot);
                    progress.finish(id, &todo[i].name, &r);
                    results[i][k] = Some(r);
                    if results[i].iter().all(Option::is_some) {
                        let g = &todo[i];
                        let (image, _) = images[i].clone().unwrap_or_default();
                        let mut report = GradeReport::new(
                            &base.name,
                            &profile_file,
                            &image,
                            g.profile.nodes,
                            &pool.to_string(),
                            results[i].iter_mut().filter_map(Option::take).collect(),
                        )
                        .cleaned()
                        .with_weights(&g.profile.weights)
                        .with_seconds(first_start[i].map(|t| t.elapsed()).unwrap_or_default());
                        report.image_hash = g.image_hash.clone();
                        report.profile_hash = g.profile_hash.clone();
                        if let Err(e) = write_submission_reports(&req.out, &g.name, &report) {
                            write_errors.push(format!("{}: {e}", g.name));
                        }
                        progress.line(&format!("{}: {} — report written", g.name, verdicts(&report)));
                        finished[i] = Some(report);
                    }
                }
                Some((i, built)) = rx.recv(), if builds_left > 0 => {
                    builds_left -= 1;
                    let g = &todo[i];
                    match built {
                        Ok(imgs) => {
                            images[i] = Some(imgs);
                            ready.extend((0..g.scenarios.len()).map(|k| (i, k)));
                        }
                        Err(reason) => {
                            let r = not_run_report(&g.profile, "(not built)", &reason, &g.image_hash, &g.profile_hash);
                            if let Err(e) = write_submission_reports(&req.out, &g.name, &r) {
                                write_errors.push(format!("{}: {e}", g.name));
                            }
                            progress.skip(g.scenarios.len(), &format!("{}: no image, every scenario is an error: {}", g.name, text_line(&reason)));
                            finished[i] = Some(r);
                        }
                    }
                }
                else => break,
            }
        }
    };
    tokio::join!(builder, queue);
    progress.clear();

    // `finished` follows `todo`, which follows the folders still to grade.
    let mut finished = finished.into_iter();
    let mut rows = Vec::new();
    let mut graded = Vec::new();
    for (name, report, resumed) in reports {
        let report = match report {
            Some(r) => Some(r),
            None => finished.next().flatten(),
        };
        if !resumed {
            graded.push(name.clone());
        }
        match report {
            Some(r) => rows.push(summary_row(&name, &r, resumed)),
            None => rows.push(SummaryRow {
                submission: name,
                status: "error".into(),
                score: 0.0,
                max_score: 0.0,
                seconds: 0.0,
                resumed: false,
                reason: Some("the batch ended before this submission was graded".into()),
                image_hash: String::new(),
                profile_hash: String::new(),
                scenarios: BTreeMap::new(),
            }),
        }
    }
    for r in refused {
        rows.push(SummaryRow {
            submission: r.name.clone(),
            status: "refused".into(),
            score: 0.0,
            max_score: 0.0,
            seconds: 0.0,
            resumed: false,
            reason: Some(format!("folder {:?} {}", r.name, r.reason)),
            image_hash: String::new(),
            profile_hash: String::new(),
            scenarios: BTreeMap::new(),
        });
    }
    let mut names: Vec<String> = Vec::new();
    for s in Scenario::ALL {
        if rows.iter().any(|r| r.scenarios.contains_key(s.name())) {
            names.push(s.name().to_string());
        }
    }
    let summary = Summary {
        profile: clean(&base.name),
        jobs,
        wall_seconds: started.elapsed().as_secs_f64(),
        scenarios: names,
        submissions: rows,
    };
    write_summary(&req.out, &summary).map_err(|source| BatchError::Summary {
        dir: req.out.display().to_string(),
        source,
    })?;
    // The class page and every submission's page, from the reports on disk.
    super::html::write_class_pages(&req.out).map_err(|source| BatchError::Summary {
        dir: req.out.display().to_string(),
        source,
    })?;
    Ok(BatchOutcome {
        summary,
        graded,
        skipped,
        write_errors,
    })
}

impl Folder {
    fn dir_report(&self, out: &Path) -> PathBuf {
        out.join(&self.name).join("report.json")
    }
}

/// The first line of a reason, for a progress line.
fn text_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

/// `startup passed, kill_leader FAILED, …`
fn verdicts(r: &GradeReport) -> String {
    r.scenarios
        .iter()
        .map(|s| {
            let w = match s.status {
                Status::Passed => "passed",
                Status::Failed => "FAILED",
                Status::Error => "error",
            };
            format!("{} {w}", s.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds one submission's image (and its gateway's when the gateway scenario runs).
async fn build(docker: &Docker, images: &ImageOptions, base: &str, g: &Graded) -> Built {
    let context = super::runner::submission_context(&g.dir)
        .map_err(|e| clean(&format!("the grader has no image to run: {e}")))?;
    let image = super::runner::build_dir_image_within(
        docker,
        &g.dir,
        context,
        base,
        &g.slug,
        &g.profile.limits,
    )
    .await
    .map_err(|e| clean(&format!("the grader has no image to run: {e}")))?;
    let gateway = match &g.profile.gateway {
        Some(gw) if g.scenarios.contains(&Scenario::Gateway) => Some(
            super::gateway_image(docker, &g.profile, images, gw, &image)
                .await
                .map_err(|e| clean(&format!("the grader has no gateway image: {e}"))),
        ),
        _ => None,
    };
    Ok((image, gateway))
}

/// The batch's progress: on a terminal a live line per running job and an overall line;
/// otherwise plain timestamped lines.
struct Progress {
    total: usize,
    jobs: usize,
    done: usize,
    counts: [usize; 3],
    spent: Duration,
    measured: usize,
    started: Instant,
    live: Option<(indicatif::MultiProgress, indicatif::ProgressBar)>,
    bars: BTreeMap<usize, (indicatif::ProgressBar, Instant)>,
    starts: BTreeMap<usize, Instant>,
}

/// UTC wall clock as HH:MM:SS.
fn clock() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A duration as `1h02m`, `3m05s` or `42s`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Time left: the mean time of a finished scenario run times the runs left, shared by the
/// jobs; `None` before any run has finished.
pub fn estimate_left(
    spent: Duration,
    measured: usize,
    left: usize,
    jobs: usize,
) -> Option<Duration> {
    if measured == 0 {
        return None;
    }
    let mean = spent.as_secs_f64() / measured as f64;
    let waves = left.div_ceil(jobs.max(1));
    Some(Duration::from_secs_f64(mean * waves as f64))
}

impl Progress {
    fn new(total: usize, jobs: usize) -> Self {
        let live = std::io::IsTerminal::is_terminal(&std::io::stdout()).then(|| {
            let multi =
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stdout());
            let overall = multi.add(indicatif::ProgressBar::new(total as u64));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] {pos}/{len} {wide_msg}",
            ) {
                overall.set_style(style);
            }
            overall.enable_steady_tick(Duration::from_millis(500));
            (multi, overall)
        });
        let p = Progress {
            total,
            jobs,
            done: 0,
            counts: [0; 3],
            spent: Duration::ZERO,
            measured: 0,
            started: Instant::now(),
            live,
            bars: BTreeMap::new(),
            starts: BTreeMap::new(),
        };
        p.overall();
        p
    }

    fn summary(&self) -> String {
        let left = estimate_left(self.spent, self.measured, self.total - self.done, self.jobs)
            .map(|d| format!("about {} left", short_duration(d)))
            .unwrap_or_else(|| "time left not known yet".into());
        format!(
            "{} passed, {} failed, {} error; {left}",
            self.counts[0], self.counts[1], self.counts[2]
        )
    }

    fn overall(&self) {
        if let Some((_, bar)) = &self.live {
            bar.set_position(self.done as u64);
            bar.set_message(self.summary());
        }
    }

    fn line(&self, s: &str) {
        match &self.live {
            Some((multi, _)) => {
                let _ = multi.println(s);
            }
            None => println!("[{}] {s}", clock()),
        }
    }

    fn start(&mut self, id: usize, sub: &str, scenario: &str) {
        let now = Instant::now();
        match &self.live {
            Some((multi, _)) => {
                let bar = multi.add(indicatif::ProgressBar::new_spinner());
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
                {
                    bar.set_style(style);
                }
                bar.set_message(format!("{sub} {scenario}"));
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bars.insert(id, (bar, now));
            }
            None => {
                println!("[{}] start {sub} {scenario}", clock());
                self.starts.insert(id, now);
            }
        }
    }

    fn finish(&mut self, id: usize, sub: &str, r: &ScenarioReport) {
        let since = match self.bars.remove(&id) {
            Some((bar, t)) => {
                bar.finish_and_clear();
                if let Some((multi, _)) = &self.live {
                    multi.remove(&bar);
                }
                t
            }
            None => self.starts.remove(&id).unwrap_or(self.started),
        };
        self.spent += since.elapsed();
        self.measured += 1;
        self.done += 1;
        let k = match r.status {
            Status::Passed => 0,
            Status::Failed => 1,
            Status::Error => 2,
        };
        self.counts[k] += 1;
        let word = ["passed", "FAILED", "error"][k];
        self.line(&format!(
            "{sub} {} {word} in {:.0} s [{}/{}: {}]",
            r.name,
            since.elapsed().as_secs_f64(),
            self.done,
            self.total,
            self.summary()
        ));
        self.overall();
    }

    /// Scenarios that will not run (no image): counted as errors, not timed.
    fn skip(&mut self, n: usize, why: &str) {
        self.done += n;
        self.counts[2] += n;
        self.line(why);
        self.overall();
    }

    fn clear(&self) {
        if let Some((_, bar)) = &self.live {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Profile {
        let path = crate::images::default_workspace().join("fixtures/good/profile.toml");
        Profile::load(&path).unwrap()
    }

    fn merge(text: &str) -> Result<Profile, OverrideError> {
        merge_override(&base(), Some(text), Path::new("/batch/alice"), &[])
    }

    fn refused_key(text: &str) -> String {
        match merge(text) {
            Err(OverrideError::Refused { key, .. }) => key,
            other => panic!("expected a refusal for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn how_a_submission_runs_may_be_overridden() {
        let p = merge(
            "name = \"mine\"\n[network]\nsubnet = \"10.1.2.0/24\"\n[submission]\nbuild = \".\"\n\
             [node]\ncommand = [\"/opt/run\", \"{ip}\"]\n[node.env]\nX = \"1\"\n\
             [judge]\nservice_port = 9000\n[gateway]\ncommand = [\"/opt/gw\"]\nport = 9090\n",
        )
        .unwrap();
        let b = base();
        assert_eq!(p.node.command, ["/opt/run", "{ip}"]);
        assert_eq!(p.node.env.get("X").map(String::as_str), Some("1"));
        assert_eq!(p.judge.service_port, 9000);
        assert_eq!(p.gateway.as_ref().unwrap().port, 9090);
        assert_eq!(p.name, b.name, "the name stays the batch profile's");
        assert_eq!(
            p.network.subnet, b.network.subnet,
            "the batch places clusters"
        );
        assert_eq!(
            p.submission.build.as_deref(),
            Some(Path::new("/batch/alice"))
        );
        assert_eq!(p.limits, b.limits);
    }

    #[test]
    fn keys_that_decide_verdicts_or_confinement_are_refused_by_name() {
        assert_eq!(refused_key("[limits]\nstart_s = 600\n"), "limits.start_s");
        assert_eq!(
            refused_key("[limits]\nmemory_mb = 4096\n"),
            "limits.memory_mb"
        );
        assert_eq!(refused_key("[limits]\nsteady_s = 1\n"), "limits.steady_s");
        assert_eq!(refused_key("[limits]\npoll_ms = 10\n"), "limits.poll_ms");
        assert_eq!(
            refused_key("[judge]\nssh_expect = \"x\"\n"),
            "judge.ssh_expect"
        );
        assert_eq!(
            refused_key("[judge]\nhosts_file = \"/tmp/h\"\n"),
            "judge.hosts_file"
        );
        assert_eq!(refused_key("[weights]\nstartup = 100\n"), "weights.startup");
        assert_eq!(
            refused_key("[scenarios]\nkill_leader = false\n"),
            "scenarios.kill_leader"
        );
        assert_eq!(refused_key("nodes = 5\n"), "nodes");
        assert_eq!(
            refused_key("[submission]\nimage = \"clusterlab-node\"\n"),
            "submission.image"
        );
        assert_eq!(
            refused_key("[submission]\nbuild = \"../bob\"\n"),
            "submission.build"
        );
        assert_eq!(refused_key("[gateway]\npath = \"/x\"\n"), "gateway.path");
        assert_eq!(
            refused_key("[gateway]\nbuild = \"/elsewhere\"\n"),
            "gateway.build"
        );
        // The message names the key and both values.
        let msg = merge("[limits]\nstart_s = 600\n").unwrap_err().to_string();
        assert!(
            msg.contains("`limits.start_s`") && msg.contains("600") && msg.contains("60"),
            "{msg}"
        );
    }

    #[test]
    fn a_tighter_limit_or_the_same_value_is_accepted() {
        // fixtures/faulty's profile.toml: its own name and subnet, a tighter ssh_s, no
        // gateway section (the batch's stays).
        let text = std::fs::read_to_string(
            crate::images::default_workspace().join("fixtures/faulty/profile.toml"),
        )
        .unwrap();
        let p = merge(&text).unwrap();
        assert_eq!(p.limits.ssh_s, 20);
        assert!(p.gateway.is_some());
        // Every fixture's own profile.toml passes as an override of the good one's.
        for f in [
            "good",
            "sticky-service",
            "no-rejoin",
            "forwarder-exits",
            "last-digit",
            "no-shared-table",
        ] {
            let text = std::fs::read_to_string(
                crate::images::default_workspace().join(format!("fixtures/{f}/profile.toml")),
            )
            .unwrap();
            merge(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn a_gateway_cannot_be_added_and_caps_stay_within_what_is_allowed() {
        let mut b = base();
        b.gateway = None;
        b.scenarios.gateway = true;
        let r = merge_override(
            &b,
            Some("[gateway]\ncommand = [\"x\"]\n"),
            Path::new("/b/a"),
            &[],
        );
        assert!(
            matches!(r, Err(OverrideError::Refused { ref key, .. }) if key == "gateway"),
            "{r:?}"
        );
        let r = merge("[node]\ncap_add = [\"NET_ADMIN\"]\n");
        assert!(matches!(r, Err(OverrideError::Cap(_))), "{r:?}");
        assert!(r.unwrap_err().to_string().contains("node.cap_add"));
        let ok = merge_override(
            &base(),
            Some("[node]\ncap_add = [\"NET_ADMIN\"]\n"),
            Path::new("/b/a"),
            &["NET_ADMIN".into()],
        );
        assert!(ok.is_ok(), "{ok:?}");
        // Unknown keys are refused by the profile's own checks.
        assert!(matches!(
            merge("[node]\nprivileged = true\n"),
            Err(OverrideError::Profile(_))
        ));
    }

    #[test]
    fn labels_and_docker_names() {
        for ok in ["alice", "Bob_Smith", "s01.v2", "x"] {
            assert!(check_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-rm",
            "a b",
            "a/b",
            "é",
            "=cmd",
            &"a".repeat(65),
        ] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert_eq!(docker_slug("alice"), "alice");
        let long = docker_slug("Bob_Smith_The_Second");
        assert!(long.starts_with("bob-smith-") && long.len() <= 17, "{long}");
        assert_ne!(docker_slug("Bob.Smith"), docker_slug("bob-smith"));
        for label in ["Bob.Smith", "A__B", "x", "0123456789012345678901234567"] {
            let cluster = format!("grade-{}-restart-follower", docker_slug(label));
            crate::names::validate_cluster_name(&cluster).unwrap();
        }
    }

    #[test]
    fn folders_are_listed_in_order_and_links_refused() {
        let d = tempfile::tempdir().unwrap();
        for n in ["bob", "alice", "bad name", "out"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        std::fs::write(d.path().join("README"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("evil")).unwrap();
        let (folders, refused) = list_folders(d.path(), Some(&d.path().join("out"))).unwrap();
        let names: Vec<&str> = folders.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        let r: Vec<&str> = refused.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(r, ["bad name", "evil"]);
        assert!(refused[1].reason.contains("symbolic link"));
    }

    fn report(image_hash: &str, profile_hash: &str) -> GradeReport {
        let mut r = GradeReport::new("p", "p.toml", "img", 3, "10.79.1.0/24", vec![]);
        r.image_hash = image_hash.into();
        r.profile_hash = profile_hash.into();
        r
    }

    #[test]
    fn resume_skips_only_the_same_image_and_profile() {
        let json = serde_json::to_string(&report("i1", "p1")).unwrap();
        assert!(matches!(
            resume_decision(Some(&json), "i1", "p1"),
            Resume::Skip(_)
        ));
        assert_eq!(
            resume_decision(Some(&json), "i2", "p1"),
            Resume::Grade("the image changed")
        );
        assert_eq!(
            resume_decision(Some(&json), "i1", "p2"),
            Resume::Grade("the profile changed")
        );
        assert_eq!(
            resume_decision(None, "i1", "p1"),
            Resume::Grade("no report yet")
        );
        assert_eq!(
            resume_decision(Some("{"), "i1", "p1"),
            Resume::Grade("its report.json does not read")
        );
        // An older report (no hashes) is graded again.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("image_hash");
        old.as_object_mut().unwrap().remove("profile_hash");
        let old = old.to_string();
        assert_eq!(
            resume_decision(Some(&old), "i1", "p1"),
            Resume::Grade("the image changed")
        );
        assert_eq!(
            resume_decision(Some(&old), "", ""),
            Resume::Grade("the image changed")
        );
    }

    #[test]
    fn the_profile_hash_follows_what_decides_a_grading() {
        let b = base();
        let all = [Scenario::Startup];
        let h = profile_hash(&b, &all, &[]);
        let mut renamed = b.clone();
        renamed.name = "other".into();
        renamed.network.subnet = "10.9.9.0/24".into();
        assert_eq!(profile_hash(&renamed, &all, &[]), h);
        let mut tighter = b.clone();
        tighter.limits.ssh_s = 5;
        assert_ne!(profile_hash(&tighter, &all, &[]), h);
        assert_ne!(
            profile_hash(&b, &[Scenario::Startup, Scenario::Scale], &[]),
            h
        );
        assert_ne!(profile_hash(&b, &all, &["NET_ADMIN".into()]), h);
    }

    #[test]
    fn csv_cells_are_cleaned_quoted_and_never_formulas() {
        assert_eq!(csv_text("alice"), "\"alice\"");
        assert_eq!(csv_text("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for bad in ["+1", "-1+2", "@SUM(A1)", "\tx"] {
            let c = csv_text(bad);
            assert!(c.starts_with("\"'"), "{bad:?} → {c}");
        }
        assert_eq!(csv_text("a\u{1b}[31mred"), "\"ared\"");
        assert!(!csv_text("a\u{1b}]0;title\u{7}b").contains('\u{1b}'));
        let mut r = GradeReport::new(
            "p",
            "p.toml",
            "img",
            3,
            "10.79.1.0/24",
            vec![ScenarioReport {
                name: "startup".into(),
                description: String::new(),
                status: Status::Failed,
                passed: false,
                reason: Some("=cmd|' /C calc'!A0, \"quoted\"\nnext line".into()),
                seconds: 12.0,
                figures: BTreeMap::from([("hosts_correct_s".into(), 3.25)]),
                notes: vec![],
                checks: vec![],
                logs: None,
                timeline: None,
            }],
        );
        r = r.with_weights(&BTreeMap::from([("startup".to_string(), 2.0)]));
        let s = Summary {
            profile: "p".into(),
            jobs: 2,
            wall_seconds: 1.0,
            scenarios: vec!["startup".into(), "scale".into()],
            submissions: vec![summary_row("alice", &r, false)],
        };
        let csv = summary_csv(&s);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "submission,status,score,max_score,seconds,startup,startup_s,scale,scale_s,reason"
        );
        assert!(
            lines[1].starts_with("\"alice\",\"failed\",0,2,0,failed,3.25,,,\"startup: =cmd|' /C calc'!A0, \"\"quoted\"\"\nnext line\""),
            "{}",
            lines[1]
        );
        // A reason that starts a cell with '=' is defused.
        let row = SummaryRow {
            reason: Some("=1+1".into()),
            ..s.submissions[0].clone()
        };
        let csv = summary_csv(&Summary {
            submissions: vec![row],
            ..s.clone()
        });
        assert!(csv.contains(",\"'=1+1\"\r\n"), "{csv}");
    }

    #[test]
    fn time_left_shares_the_runs_among_the_jobs() {
        assert_eq!(estimate_left(Duration::ZERO, 0, 10, 2), None);
        let left = estimate_left(Duration::from_secs(60), 2, 5, 2).unwrap();
        assert_eq!(left, Duration::from_secs(90));
        assert_eq!(short_duration(Duration::from_secs(3725)), "1h02m");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m05s");
    }

    #[test]
    fn a_comparison_names_every_changed_verdict() {
        let mk = |v: Status, wall: f64, jobs: usize| {
            let r = GradeReport::new(
                "p",
                "p.toml",
                "img",
                3,
                "10.79.1.0/24",
                vec![ScenarioReport {
                    status: v,
                    ..ScenarioReport::not_run(Scenario::Startup, "")
                }],
            );
            Summary {
                profile: "p".into(),
                jobs,
                wall_seconds: wall,
                scenarios: vec!["startup".into()],
                submissions: vec![summary_row("alice", &r, false)],
            }
        };
        let c = compare(&mk(Status::Passed, 300.0, 1), &mk(Status::Passed, 120.0, 3));
        assert!(c.differences.is_empty());
        assert!((c.ratio() - 2.5).abs() < 1e-9);
        assert!(c.to_string().contains("2.50x faster"), "{c}");
        let c = compare(&mk(Status::Passed, 300.0, 1), &mk(Status::Failed, 120.0, 3));
        assert_eq!(c.differences, ["alice startup: passed -> failed"]);
        let table = summary_table(&mk(Status::Failed, 1.0, 1));
        assert!(
            table.contains("alice") && table.contains("FAILED"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn a_report_is_written_whole_with_report_json_last() {
        let d = tempfile::tempdir().unwrap();
        let r = report("i", "p");
        write_submission_reports(d.path(), "alice", &r).unwrap();
        let back: GradeReport = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("alice/report.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, r);
        assert!(d.path().join("alice/junit.xml").is_file());
        assert!(d.path().join("alice/results.json").is_file());
        let left: Vec<_> = std::fs::read_dir(d.path().join("alice"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        // A link in place of the submission's folder is not written through.
        std::os::unix::fs::symlink(d.path().join("alice"), d.path().join("bob")).unwrap();
        assert!(write_submission_reports(d.path(), "bob", &r).is_err());
    }
}
