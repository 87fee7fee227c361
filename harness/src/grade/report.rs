//! Grading reports: report.json (everything, for tools), junit.xml (for CI systems that read
//! JUnit), results.json (Gradescope's autograder format, with the profile's weights as
//! points) and the summary table printed at the end of `harness grade`. Writing them is pure
//! text work, tested here; only [`write_reports`] touches the file system.

use super::text::clean;
use super::timeline::Timeline;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    /// The submission did not do what the assignment asks.
    Failed,
    /// The grader could not run the scenario (Docker, image); says nothing about the
    /// submission.
    Error,
}

/// One check inside a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    pub passed: bool,
    pub reason: Option<String>,
    /// Seconds from the check's reference point until it held.
    pub seconds: Option<f64>,
}

/// One scenario's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub description: String,
    pub status: Status,
    pub passed: bool,
    /// Why it failed: every failed check as `check: reason`, joined by ` | `.
    pub reason: Option<String>,
    /// Wall time of the scenario, cluster start and cleanup included.
    pub seconds: f64,
    /// What it measured, in seconds unless the name says otherwise.
    pub figures: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    pub checks: Vec<CheckReport>,
    /// The nodes' last log lines, when the scenario did not pass.
    pub logs: Option<String>,
    /// What the scenario saw over time, for the timeline in report.html.
    #[serde(default)]
    pub timeline: Option<Timeline>,
}

impl ScenarioReport {
    /// A scenario the grader could not run at all, with the reason.
    pub fn not_run(s: super::scenarios::Scenario, reason: &str) -> Self {
        ScenarioReport {
            name: s.name().into(),
            description: s.description().into(),
            status: Status::Error,
            passed: false,
            reason: Some(reason.to_string()),
            seconds: 0.0,
            figures: BTreeMap::new(),
            notes: Vec::new(),
            checks: Vec::new(),
            logs: None,
            timeline: None,
        }
    }
}

/// A whole grading run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradeReport {
    /// The profile's name.
    pub profile: String,
    pub profile_file: String,
    pub image: String,
    pub nodes: usize,
    pub subnet: String,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub scenarios: Vec<ScenarioReport>,
    /// Points of each scenario of the run (the profile's `[weights]`, 1 when not named).
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Wall time of the whole run in seconds; 0 when not measured (then results.json
    /// takes the sum of the scenarios' times).
    #[serde(default)]
    pub seconds: f64,
    /// What was graded, for `--batch --resume`: a hash of the build context and the base
    /// image (empty when not known, e.g. outside a batch or in an older report).
    #[serde(default)]
    pub image_hash: String,
    /// A hash of the effective profile (the batch's profile with the folder's overrides)
    /// and the scenarios asked for; empty when not known.
    #[serde(default)]
    pub profile_hash: String,
}

impl GradeReport {
    pub fn new(
        profile: &str,
        profile_file: &str,
        image: &str,
        nodes: usize,
        subnet: &str,
        scenarios: Vec<ScenarioReport>,
    ) -> Self {
        let count = |s: Status| scenarios.iter().filter(|r| r.status == s).count();
        GradeReport {
            profile: profile.into(),
            profile_file: profile_file.into(),
            image: image.into(),
            nodes,
            subnet: subnet.into(),
            passed: count(Status::Passed),
            failed: count(Status::Failed),
            errors: count(Status::Error),
            scenarios,
            weights: BTreeMap::new(),
            seconds: 0.0,
            image_hash: String::new(),
            profile_hash: String::new(),
        }
    }

    /// The report with each scenario's points taken from `weights` (1 when not named).
    pub fn with_weights(mut self, weights: &BTreeMap<String, f64>) -> Self {
        self.weights = self
            .scenarios
            .iter()
            .map(|s| (s.name.clone(), weights.get(&s.name).copied().unwrap_or(1.0)))
            .collect();
        self
    }

    /// The report with the run's wall time.
    pub fn with_seconds(mut self, elapsed: std::time::Duration) -> Self {
        self.seconds = elapsed.as_secs_f64();
        self
    }

    /// The points scenario `name` is worth (1 when the report carries no weight for it).
    pub fn weight(&self, name: &str) -> f64 {
        self.weights
            .get(name)
            .copied()
            .filter(|w| w.is_finite() && *w >= 0.0)
            .unwrap_or(1.0)
    }

    /// The report with every text passed through [`clean`]: whatever a submission printed
    /// reaches report.json, junit.xml and the terminal without escape sequences or control
    /// characters.
    pub fn cleaned(mut self) -> Self {
        self.profile = clean(&self.profile);
        self.profile_file = clean(&self.profile_file);
        self.image = clean(&self.image);
        for s in &mut self.scenarios {
            s.reason = s.reason.as_deref().map(clean);
            s.logs = s.logs.as_deref().map(clean);
            for n in &mut s.notes {
                *n = clean(n);
            }
            for c in &mut s.checks {
                c.reason = c.reason.as_deref().map(clean);
            }
            if let Some(t) = &mut s.timeline {
                t.clean_texts();
            }
        }
        self
    }

    /// The scenario named `name`.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// Escapes text for XML attribute values and character data. Characters XML 1.0 cannot
/// carry at all (most control characters) become U+FFFD, so the file always parses.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn figures_text(figures: &BTreeMap<String, f64>) -> String {
    figures
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The report as JUnit XML: one test suite for the profile, one test case per scenario.
/// A failed scenario carries `<failure>`, one the grader could not run `<error>`.
pub fn junit_xml(r: &GradeReport) -> String {
    let total_time: f64 = r.scenarios.iter().map(|s| s.seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let suite = xml_escape(&format!("grade.{}", r.profile));
    let _ = writeln!(
        x,
        "<testsuites name=\"clusterlab grade\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{total_time:.2}\">",
        r.scenarios.len(),
        r.failed,
        r.errors
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{total_time:.2}\">",
        r.scenarios.len(),
        r.failed,
        r.errors
    );
    let _ = writeln!(x, "    <properties>");
    for (k, v) in [
        ("profile_file", r.profile_file.as_str()),
        ("image", r.image.as_str()),
        ("subnet", r.subnet.as_str()),
    ] {
        let _ = writeln!(
            x,
            "      <property name=\"{k}\" value=\"{}\"/>",
            xml_escape(v)
        );
    }
    let _ = writeln!(x, "    </properties>");
    for s in &r.scenarios {
        let _ = writeln!(
            x,
            "    <testcase classname=\"{suite}\" name=\"{}\" time=\"{:.2}\">",
            xml_escape(&s.name),
            s.seconds
        );
        let reason = s.reason.clone().unwrap_or_default();
        let first_line = reason.lines().next().unwrap_or("");
        match s.status {
            Status::Passed => {}
            Status::Failed => {
                let _ = writeln!(
                    x,
                    "      <failure message=\"{}\" type=\"failed\">{}</failure>",
                    xml_escape(first_line),
                    xml_escape(&reason)
                );
            }
            Status::Error => {
                let _ = writeln!(
                    x,
                    "      <error message=\"{}\" type=\"error\">{}</error>",
                    xml_escape(first_line),
                    xml_escape(&reason)
                );
            }
        }
        let mut out = format!("{}\n", s.description);
        if !s.figures.is_empty() {
            let _ = writeln!(out, "figures: {}", figures_text(&s.figures));
        }
        for n in &s.notes {
            let _ = writeln!(out, "note: {n}");
        }
        for c in &s.checks {
            let _ = writeln!(
                out,
                "check {}: {}{}",
                c.name,
                if c.passed { "passed" } else { "FAILED" },
                c.reason
                    .as_ref()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(x, "      <system-out>{}</system-out>", xml_escape(&out));
        if let Some(logs) = &s.logs {
            let _ = writeln!(x, "      <system-err>{}</system-err>", xml_escape(logs));
        }
        let _ = writeln!(x, "    </testcase>");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// The table printed at the end of a run: one line per scenario, then the reasons.
pub fn summary_table(r: &GradeReport) -> String {
    let mut t = format!(
        "grading {} ({} nodes, image {})\n{:<15} {:<7} {:>8}  {}\n",
        r.profile, r.nodes, r.image, "SCENARIO", "RESULT", "TIME", "FIGURES"
    );
    for s in &r.scenarios {
        let result = match s.status {
            Status::Passed => "passed",
            Status::Failed => "FAILED",
            Status::Error => "ERROR",
        };
        let _ = writeln!(
            t,
            "{:<15} {:<7} {:>6.1} s  {}",
            s.name,
            result,
            s.seconds,
            figures_text(&s.figures)
        );
    }
    for s in r.scenarios.iter().filter(|s| s.status != Status::Passed) {
        let reason = |text: Option<&str>| printable(text.unwrap_or(""));
        let _ = writeln!(
            t,
            "\n{} {}:",
            s.name,
            if s.status == Status::Error {
                "could not be run"
            } else {
                "failed"
            }
        );
        for c in s.checks.iter().filter(|c| !c.passed) {
            let _ = writeln!(t, "  - {}: {}", c.name, reason(c.reason.as_deref()));
        }
        if s.status == Status::Error {
            let _ = writeln!(t, "  - {}", reason(s.reason.as_deref()));
        }
    }
    let _ = writeln!(
        t,
        "\n{} passed, {} failed, {} could not be run",
        r.passed, r.failed, r.errors
    );
    t
}

/// Text from a submission made safe for a terminal.
fn printable(s: &str) -> String {
    clean(s)
}

/// Gradescope's autograder results (results.json): the total, the run's time, and one
/// test per scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradescopeResults {
    /// Sum of the tests' scores.
    pub score: f64,
    /// Whole seconds the grading took.
    pub execution_time: u64,
    /// One line for the student: how many scenarios passed.
    pub output: String,
    pub tests: Vec<GradescopeTest>,
}

/// One scenario as a Gradescope test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradescopeTest {
    pub name: String,
    /// `max_score` when the scenario passed, else 0.
    pub score: f64,
    /// The scenario's weight.
    pub max_score: f64,
    /// `passed` or `failed` (a scenario the grader could not run counts as failed; its
    /// output says so).
    pub status: String,
    pub output: String,
}

/// Longest `output` of one test in results.json; the rest is cut with a note.
pub const MAX_TEST_OUTPUT: usize = 16 * 1024;

fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEST_OUTPUT {
        let mut end = MAX_TEST_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n[cut: the whole text is in report.json]");
    }
    text
}

/// The report in Gradescope's autograder format.
pub fn gradescope_results(r: &GradeReport) -> GradescopeResults {
    let tests: Vec<GradescopeTest> = r
        .scenarios
        .iter()
        .map(|s| {
            let max_score = r.weight(&s.name);
            let passed = s.status == Status::Passed;
            let reason = clean(s.reason.as_deref().unwrap_or("no reason recorded"));
            let mut output = match s.status {
                Status::Passed => format!("passed in {:.1} s", s.seconds),
                Status::Failed => format!("failed: {reason}"),
                Status::Error => format!(
                    "not graded: the grader could not run this scenario (ask for a re-run): {reason}"
                ),
            };
            if !s.figures.is_empty() {
                let _ = write!(output, "\nfigures: {}", figures_text(&s.figures));
            }
            for n in &s.notes {
                let _ = write!(output, "\nnote: {}", clean(n));
            }
            GradescopeTest {
                name: clean(&s.name),
                score: if passed { max_score } else { 0.0 },
                max_score,
                status: if passed { "passed" } else { "failed" }.into(),
                output: bounded(output),
            }
        })
        .collect();
    let seconds = if r.seconds > 0.0 {
        r.seconds
    } else {
        r.scenarios.iter().map(|s| s.seconds).sum()
    };
    GradescopeResults {
        score: tests.iter().map(|t| t.score).sum(),
        execution_time: seconds.max(0.0).ceil() as u64,
        output: format!(
            "{}: {} passed, {} failed, {} could not be run",
            clean(&r.profile),
            r.passed,
            r.failed,
            r.errors
        ),
        tests,
    }
}

/// Writes DIR/report.json, DIR/junit.xml, DIR/results.json and DIR/report.html (the page
/// a person reads, [`super::html`]), creating DIR.
pub fn write_reports(dir: &Path, r: &GradeReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(dir.join("junit.xml"), junit_xml(r))?;
    let results =
        serde_json::to_string_pretty(&gradescope_results(r)).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), results + "\n")?;
    super::html::write_submission_page(dir, r)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::Reader;

    fn sample() -> GradeReport {
        let passed = ScenarioReport {
            name: "startup".into(),
            description: "a fresh cluster".into(),
            status: Status::Passed,
            passed: true,
            reason: None,
            seconds: 12.5,
            figures: BTreeMap::from([("hosts_correct_s".into(), 3.25)]),
            notes: vec![],
            checks: vec![CheckReport {
                name: "hosts".into(),
                passed: true,
                reason: None,
                seconds: Some(3.25),
            }],
            logs: None,
            timeline: None,
        };
        let reason = "hosts: node2 (10.79.1.12) still listed as host2 in /etc/hosts of node0 (10.79.1.10) 20.1 s after it was killed; allowed 20 s (limits.dead_node_s) | ssh: <x> & \"y\" 'z' \u{1b}[31m";
        let failed = ScenarioReport {
            name: "kill_follower".into(),
            description: "after a follower is killed".into(),
            status: Status::Failed,
            passed: false,
            reason: Some(reason.into()),
            seconds: 40.0,
            figures: BTreeMap::new(),
            notes: vec!["killed node2 (10.79.1.12), the follower".into()],
            checks: vec![CheckReport {
                name: "hosts".into(),
                passed: false,
                reason: Some(reason.trim_start_matches("hosts: ").into()),
                seconds: None,
            }],
            logs: Some("[g-node0]\ndaemon: <started> & \u{0}\n".into()),
            timeline: None,
        };
        let error = ScenarioReport {
            name: "kill_leader".into(),
            description: "after the leader is killed".into(),
            status: Status::Error,
            passed: false,
            reason: Some("the grader could not run this scenario: creating network".into()),
            seconds: 0.5,
            figures: BTreeMap::new(),
            notes: vec![],
            checks: vec![],
            logs: None,
            timeline: None,
        };
        GradeReport::new(
            "good",
            "fixtures/good/profile.toml",
            "img:1",
            3,
            "10.79.1.0/24",
            vec![passed, failed, error],
        )
    }

    #[test]
    fn escapes_markup_and_drops_what_xml_cannot_carry() {
        assert_eq!(
            xml_escape("a<b>&\"c\"'d'"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(xml_escape("x\u{1b}y\u{0}z\n"), "x\u{FFFD}y\u{FFFD}z\n");
    }

    type Elements = Vec<(String, BTreeMap<String, String>)>;

    /// Parses the XML fully and returns (element name, attributes) of every start tag and
    /// the concatenated text of <failure> elements.
    fn parse(xml: &str) -> (Elements, String) {
        let mut reader = Reader::from_str(xml);
        let mut elements = Vec::new();
        let mut failure_text = String::new();
        let mut in_failure = false;
        loop {
            match reader.read_event().expect("junit.xml must parse") {
                Event::Start(e) | Event::Empty(e) => {
                    let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                    in_failure = name == "failure";
                    let attrs = e
                        .attributes()
                        .map(|a| {
                            let a = a.expect("attribute must parse");
                            (
                                String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                                a.unescape_value()
                                    .expect("attribute must unescape")
                                    .to_string(),
                            )
                        })
                        .collect();
                    elements.push((name, attrs));
                }
                Event::Text(t) if in_failure => {
                    failure_text.push_str(&t.unescape().expect("text must unescape"))
                }
                Event::End(_) => in_failure = false,
                Event::Eof => break,
                _ => {}
            }
        }
        (elements, failure_text)
    }

    #[test]
    fn junit_parses_and_carries_every_scenario() {
        let r = sample();
        let (elements, failure_text) = parse(&junit_xml(&r));
        let get = |name: &str| -> Vec<&BTreeMap<String, String>> {
            elements
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, a)| a)
                .collect()
        };
        let suites = get("testsuite");
        assert_eq!(suites.len(), 1);
        assert_eq!(suites[0]["tests"], "3");
        assert_eq!(suites[0]["failures"], "1");
        assert_eq!(suites[0]["errors"], "1");
        let cases: Vec<&str> = get("testcase").iter().map(|a| a["name"].as_str()).collect();
        assert_eq!(cases, ["startup", "kill_follower", "kill_leader"]);
        let failures = get("failure");
        assert_eq!(failures.len(), 1);
        assert!(failures[0]["message"].contains("node2 (10.79.1.12) still listed"));
        assert!(failure_text.contains("<x> & \"y\" 'z'"), "{failure_text}");
        assert_eq!(get("error").len(), 1);
    }

    #[test]
    fn json_round_trips_with_lowercase_status() {
        let r = sample();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"status\":\"failed\""));
        let back: GradeReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!((r.passed, r.failed, r.errors), (1, 1, 1));
    }

    #[test]
    fn measured_seconds_read_back_exactly() {
        // Figures are elapsed times in seconds; without serde_json's exact float parsing
        // about one in eight such values read back one unit in the last place off (this
        // one among them), and a report.json would then differ from the report it holds.
        let mut r = sample();
        let awkward = 3843.4616876470004_f64;
        r.scenarios[0].seconds = awkward;
        r.scenarios[0]
            .figures
            .insert("hosts_correct_s".into(), awkward / 1000.0);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % 10_000_000) as f64 / 1000.0 * 1.000_123;
            r.scenarios[1].figures.insert(format!("f{i}"), v);
        }
        let back: GradeReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.scenarios[0].seconds.to_bits(), awkward.to_bits());
        assert_eq!(back, r);
    }

    #[test]
    fn summary_names_each_scenario_and_the_failed_checks() {
        let t = summary_table(&sample());
        assert!(t.contains("startup         passed"), "{t}");
        assert!(t.contains("kill_follower   FAILED"), "{t}");
        assert!(t.contains("hosts_correct_s=3.25"), "{t}");
        assert!(
            t.contains("  - hosts: node2 (10.79.1.12) still listed"),
            "{t}"
        );
        assert!(t.contains("1 passed, 1 failed, 1 could not be run"), "{t}");
        assert!(
            !t.contains('\u{1b}'),
            "control characters reach the terminal: {t}"
        );
    }

    #[test]
    fn a_cleaned_report_holds_no_control_character() {
        let mut r = sample();
        r.scenarios.push(ScenarioReport::not_run(
            crate::grade::scenarios::Scenario::KillLeader,
            "no image: \u{1b}]0;title\u{7}build \u{1b}[31mfailed\u{1b}[0m",
        ));
        r.scenarios[1].notes.push("\u{1b}[2Jnote".into());
        let c = r.cleaned();
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            !json.contains("\\u001b") && !json.contains("\\u0007"),
            "{json}"
        );
        let last = c.scenarios.last().unwrap();
        assert_eq!(last.status, Status::Error);
        assert_eq!(last.reason.as_deref(), Some("no image: build failed"));
        assert_eq!(c.scenarios[1].notes.last().unwrap(), "note");
        assert!(c.scenarios[1]
            .logs
            .as_deref()
            .unwrap()
            .contains("daemon: <started> & \u{FFFD}"));
    }

    #[test]
    fn reports_are_written() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("out");
        write_reports(&dir, &sample()).unwrap();
        let json = std::fs::read_to_string(dir.join("report.json")).unwrap();
        let back: GradeReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.scenarios.len(), 3);
        parse(&std::fs::read_to_string(dir.join("junit.xml")).unwrap());
        let results = std::fs::read_to_string(dir.join("results.json")).unwrap();
        validate_gradescope(&serde_json::from_str(&results).unwrap()).unwrap();
    }

    /// Checks a results.json against Gradescope's autograder format: `score` a number,
    /// `execution_time` a non-negative integer, `tests` an array of objects with a string
    /// `name`, numbers `score` ≤ `max_score` (both ≥ 0), `status` `passed` or `failed` and
    /// a string `output`; optional top-level `output` a string; the total the tests' sum.
    fn validate_gradescope(v: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value;
        let top = v.as_object().ok_or("results.json is not an object")?;
        let known_top = ["score", "execution_time", "output", "tests"];
        if let Some(k) = top.keys().find(|k| !known_top.contains(&k.as_str())) {
            return Err(format!("unexpected top-level key {k:?}"));
        }
        let score = top
            .get("score")
            .and_then(Value::as_f64)
            .ok_or("`score` missing or not a number")?;
        top.get("execution_time")
            .and_then(Value::as_u64)
            .ok_or("`execution_time` missing or not a non-negative integer")?;
        if let Some(o) = top.get("output") {
            o.as_str().ok_or("top-level `output` is not a string")?;
        }
        let tests = top
            .get("tests")
            .and_then(Value::as_array)
            .ok_or("`tests` missing or not an array")?;
        let mut sum = 0.0;
        for (i, t) in tests.iter().enumerate() {
            let t = t
                .as_object()
                .ok_or(format!("tests[{i}] is not an object"))?;
            let known = ["name", "score", "max_score", "status", "output"];
            if let Some(k) = t.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(format!("tests[{i}]: unexpected key {k:?}"));
            }
            t.get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or(format!("tests[{i}].name missing or not a string"))?;
            let s = t
                .get("score")
                .and_then(Value::as_f64)
                .ok_or(format!("tests[{i}].score missing or not a number"))?;
            let m = t
                .get("max_score")
                .and_then(Value::as_f64)
                .ok_or(format!("tests[{i}].max_score missing or not a number"))?;
            if !(0.0..=m).contains(&s) {
                return Err(format!("tests[{i}]: score {s} not within 0..={m}"));
            }
            match t.get("status").and_then(Value::as_str) {
                Some("passed" | "failed") => {}
                other => return Err(format!("tests[{i}].status is {other:?}")),
            }
            t.get("output")
                .and_then(Value::as_str)
                .ok_or(format!("tests[{i}].output missing or not a string"))?;
            sum += s;
        }
        if (sum - score).abs() > 1e-9 {
            return Err(format!("score {score} is not the tests' sum {sum}"));
        }
        Ok(())
    }

    #[test]
    fn results_json_follows_the_autograder_format_with_weights() {
        let weights = BTreeMap::from([("startup".to_string(), 2.5), ("kill_leader".into(), 4.0)]);
        let r = sample()
            .with_weights(&weights)
            .with_seconds(std::time::Duration::from_millis(61_200));
        let g = gradescope_results(&r);
        let v = serde_json::to_value(&g).unwrap();
        validate_gradescope(&v).unwrap();
        assert_eq!(v["score"], 2.5);
        assert_eq!(v["execution_time"], 62);
        let tests = v["tests"].as_array().unwrap();
        let names: Vec<&str> = tests.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["startup", "kill_follower", "kill_leader"]);
        // Passed: full points and the figures.
        assert_eq!(
            (tests[0]["score"].as_f64(), tests[0]["max_score"].as_f64()),
            (Some(2.5), Some(2.5))
        );
        assert_eq!(tests[0]["status"], "passed");
        assert!(tests[0]["output"]
            .as_str()
            .unwrap()
            .contains("hosts_correct_s=3.25"));
        // Not named in the weights: worth 1; failed: 0 points and the cleaned reason.
        assert_eq!(
            (tests[1]["score"].as_f64(), tests[1]["max_score"].as_f64()),
            (Some(0.0), Some(1.0))
        );
        assert_eq!(tests[1]["status"], "failed");
        let out = tests[1]["output"].as_str().unwrap();
        assert!(out.contains("node2 (10.79.1.12) still listed"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        // Could not be run: failed for the autograder, and the output says why.
        assert_eq!(
            (tests[2]["score"].as_f64(), tests[2]["max_score"].as_f64()),
            (Some(0.0), Some(4.0))
        );
        assert!(tests[2]["output"]
            .as_str()
            .unwrap()
            .contains("could not run"));
        // Without weights or a measured time: 1 point each and the scenarios' time summed.
        let plain = serde_json::to_value(gradescope_results(&sample())).unwrap();
        validate_gradescope(&plain).unwrap();
        assert_eq!(plain["score"], 1.0);
        assert_eq!(plain["execution_time"], 53);
    }

    #[test]
    fn the_validator_rejects_what_the_autograder_would() {
        let good = serde_json::to_value(gradescope_results(&sample())).unwrap();
        type Breaks = fn(&mut serde_json::Value);
        let broken: [(&str, Breaks); 6] = [
            ("score", |v| v["score"] = 7.0.into()),
            ("execution_time", |v| v["execution_time"] = 1.5.into()),
            ("tests[0].score", |v| v["tests"][0]["score"] = 9.0.into()),
            ("tests[1].status", |v| {
                v["tests"][1]["status"] = "error".into()
            }),
            ("tests[2].output", |v| {
                v["tests"][2].as_object_mut().unwrap().remove("output");
            }),
            ("tests[0].name", |v| v["tests"][0]["name"] = 3.into()),
        ];
        for (what, breaks) in broken {
            let mut v = good.clone();
            breaks(&mut v);
            let e = validate_gradescope(&v).expect_err(what);
            assert!(
                e.contains(what.split('.').next_back().unwrap()),
                "{what}: {e}"
            );
        }
    }

    #[test]
    fn a_long_output_is_cut_on_a_character_boundary() {
        let mut r = sample();
        r.scenarios[1].reason = Some("é".repeat(MAX_TEST_OUTPUT));
        let g = gradescope_results(&r);
        let out = &g.tests[1].output;
        assert!(out.len() <= MAX_TEST_OUTPUT + 64, "{}", out.len());
        assert!(out.ends_with("[cut: the whole text is in report.json]"));
    }
}
