//! The reports a person reads: report.html for one submission (per scenario the verdict,
//! the reasons, the checks, the figures, the timeline as inline SVG and the nodes' last log
//! lines) and, for a batch, index.html (the class table). Static files that open from
//! disk: inline CSS, a few lines of inline JS to sort the table, nothing fetched.
//!
//! Everything that came from a report (names, reasons, logs, even numbers) is hostile:
//! text passes [`clean`] and is escaped ([`esc`]); numbers are clamped before they become
//! coordinates.

use super::report::{gradescope_results, GradeReport, ScenarioReport, Status};
use super::text::clean;
use super::timeline::{Host0, Obs, Role, Timeline, MAX_SAMPLES};
use std::fmt::Write as _;
use std::path::Path;

/// Text made safe for HTML and SVG character data and attribute values: [`clean`]ed, then
/// `& < > " '` escaped. `]]>` and `<script>` come out as plain text.
pub fn esc(s: &str) -> String {
    clusterlab_core::html_escape(&clean(s))
}

/// At most `max` characters of `s`, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

/// A path segment for an href: everything but `[A-Za-z0-9._-]` percent-encoded.
fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A number from a report as it is shown: finite, rounded.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let r = (v * 100.0).round() / 100.0;
    format!("{r}")
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
th[data-col]{cursor:pointer}th[data-col]:after{content:" \2195";color:#999}
.passed{background:#e3f4e6}.failed{background:#fbe0e0}.error{background:#fff1c9}
.verdict{font-weight:bold}
.reason{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.9em}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.6em;overflow:auto;max-height:30em;font-size:.85em}
svg.timeline{border:1px solid #ddd;background:#fff;max-width:100%;height:auto}
.muted{color:#666}
"#;

/// Sorts the table `#class` by the clicked column; a second click reverses.
const SORT_JS: &str = r#"
document.querySelectorAll('#class th[data-col]').forEach(function(th){
  th.addEventListener('click',function(){
    var col=+th.dataset.col, body=document.querySelector('#class tbody');
    var dir=th.dataset.dir==='asc'?'desc':'asc'; th.dataset.dir=dir;
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[col].dataset.sort, y=b.cells[col].dataset.sort;
      var nx=parseFloat(x), ny=parseFloat(y);
      var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
      return dir==='asc'?c:-c;
    });
    rows.forEach(function(r){body.appendChild(r);});
  });
});
"#;

fn page(title: &str, body: &str, script: Option<&str>) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}\n{}</body></html>\n",
        esc(title),
        script
            .map(|s| format!("<script>{s}</script>\n"))
            .unwrap_or_default()
    )
}

fn verdict(s: Status) -> (&'static str, &'static str) {
    match s {
        Status::Passed => ("passed", "passed"),
        Status::Failed => ("failed", "FAILED"),
        Status::Error => ("error", "NOT RUN"),
    }
}

/// One submission's report.html.
pub fn submission_page(r: &GradeReport) -> String {
    let mut b = String::new();
    let results = gradescope_results(r);
    let max: f64 = results.tests.iter().map(|t| t.max_score).sum();
    let _ = writeln!(
        b,
        "<h1>Grading report: {}</h1>\n<p>profile <b>{}</b> ({}), image <code>{}</code>, {} nodes, subnet {}</p>",
        esc(&r.profile),
        esc(&r.profile),
        esc(&r.profile_file),
        esc(&r.image),
        r.nodes,
        esc(&r.subnet)
    );
    let _ = writeln!(
        b,
        "<p class=\"verdict\">score {} of {}: {} passed, {} failed, {} could not be run</p>",
        num(results.score),
        num(max),
        r.passed,
        r.failed,
        r.errors
    );
    let _ = writeln!(
        b,
        "<table id=\"scenarios\"><thead><tr><th>scenario</th><th>result</th><th>time (s)</th><th>first reason</th></tr></thead><tbody>"
    );
    for (i, s) in r.scenarios.iter().enumerate() {
        let (class, text) = verdict(s.status);
        let first = s
            .reason
            .as_deref()
            .map(|x| cut(x.split(" | ").next().unwrap_or(""), 200))
            .unwrap_or_default();
        let _ = writeln!(
            b,
            "<tr class=\"{class}\"><td><a href=\"#s{i}\">{}</a></td><td class=\"verdict\">{text}</td><td>{}</td><td class=\"reason\">{}</td></tr>",
            esc(&s.name),
            num(s.seconds),
            esc(&first)
        );
    }
    b.push_str("</tbody></table>\n");
    for (i, s) in r.scenarios.iter().enumerate() {
        scenario_section(&mut b, i, s);
    }
    page(&format!("grading report: {}", r.profile), &b, None)
}

fn scenario_section(b: &mut String, i: usize, s: &ScenarioReport) {
    let (class, text) = verdict(s.status);
    let _ = writeln!(
        b,
        "<section class=\"scenario\" data-scenario=\"{}\"><h2 id=\"s{i}\">{} <span class=\"{class} verdict\">{text}</span></h2>\n<p class=\"muted\">{}</p>",
        esc(&s.name),
        esc(&s.name),
        esc(&s.description)
    );
    if let Some(reason) = &s.reason {
        let _ = writeln!(b, "<h3>Why</h3>\n<ul>");
        for part in reason.split(" | ") {
            let _ = writeln!(b, "<li class=\"reason\">{}</li>", esc(part));
        }
        b.push_str("</ul>\n");
    }
    if !s.notes.is_empty() {
        b.push_str("<h3>What the grader did</h3>\n<ul>");
        for n in &s.notes {
            let _ = writeln!(b, "<li>{}</li>", esc(n));
        }
        b.push_str("</ul>\n");
    }
    b.push_str("<h3>Timeline</h3>\n");
    match &s.timeline {
        Some(t) => {
            b.push_str(&timeline_svg(&s.name, t));
            b.push('\n');
        }
        None => b.push_str("<p class=\"muted\">no timeline was recorded for this scenario</p>\n"),
    }
    if !s.checks.is_empty() {
        b.push_str("<h3>Checks</h3>\n<table class=\"checks\"><thead><tr><th>check</th><th>result</th><th>took (s)</th><th>reason</th></tr></thead><tbody>\n");
        for c in &s.checks {
            let (class, text) = if c.passed {
                ("passed", "passed")
            } else {
                ("failed", "FAILED")
            };
            let _ = writeln!(
                b,
                "<tr class=\"{class}\"><td>{}</td><td class=\"verdict\">{text}</td><td>{}</td><td class=\"reason\">{}</td></tr>",
                esc(&c.name),
                c.seconds.map(num).unwrap_or_default(),
                esc(c.reason.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</tbody></table>\n");
    }
    if !s.figures.is_empty() {
        b.push_str("<h3>Figures</h3>\n<table class=\"figures\"><tbody>\n");
        for (k, v) in &s.figures {
            let _ = writeln!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(k), num(*v));
        }
        b.push_str("</tbody></table>\n");
    }
    if let Some(logs) = &s.logs {
        let _ = writeln!(
            b,
            "<h3>The nodes' last log lines</h3>\n<pre class=\"logs\">{}</pre>",
            esc(logs)
        );
    }
    b.push_str("</section>\n");
}

// ---- the timeline -------------------------------------------------------------------

/// Most lanes drawn; a larger report (only a hand-edited one) is cut.
const MAX_LANES: usize = 64;
const WIDTH: f64 = 1100.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 20.0;
const ROW: f64 = 16.0;
const ROW_GAP: f64 = 3.0;
const LANE_GAP: f64 = 12.0;
const LABEL_ROW: f64 = 14.0;
/// Rows of each lane: (name, kind slot).
const ROWS: [&str; 3] = ["etcd", "host0", "service"];

/// How a state is drawn: fill, pattern (or none), text colour, label, short label.
struct Look {
    fill: &'static str,
    pattern: Option<&'static str>,
    ink: &'static str,
    label: &'static str,
    short: &'static str,
}

const fn look(
    fill: &'static str,
    pattern: Option<&'static str>,
    ink: &'static str,
    label: &'static str,
    short: &'static str,
) -> Look {
    Look {
        fill,
        pattern,
        ink,
        label,
        short,
    }
}

const DOWN: Look = look("#555", Some("cross"), "#fff", "node down", "✕");

fn role_look(r: Role) -> Look {
    match r {
        Role::Leader => look("#1f5fa8", None, "#fff", "leader", "L"),
        Role::Follower => look("#b9d3f0", None, "#123", "follower", "F"),
        Role::NoLeader => look("#f3d36b", Some("dots"), "#222", "no leader", "?"),
        Role::Unreachable => look("#e8a0a0", Some("hatch"), "#222", "unreachable", "U"),
    }
}

fn host0_look(h: Host0) -> Look {
    match h {
        Host0::Leader => look("#2e8b57", None, "#fff", "host0 = leader", "="),
        Host0::Other => look("#f0a868", Some("hatch"), "#222", "host0 ≠ leader", "≠"),
        Host0::Missing => look("#f0a868", Some("dots"), "#222", "no host0", "–"),
        Host0::Unreadable => look("#e8a0a0", Some("hatch"), "#222", "table unreadable", "U"),
    }
}

fn service_look(up: bool) -> Look {
    if up {
        look("#2e8b57", None, "#fff", "serving", "S")
    } else {
        look("#eeeeee", None, "#555", "not serving", "–")
    }
}

/// The state a row shows after `o`, if `o` concerns it.
fn row_state(row: usize, o: Obs) -> Option<Look> {
    match (row, o) {
        (_, Obs::Down) => Some(DOWN),
        (0, Obs::Role(r)) => Some(role_look(r)),
        (1, Obs::Host0(h)) => Some(host0_look(h)),
        (2, Obs::Service(up)) => Some(service_look(up)),
        _ => None,
    }
}

/// A time from a report, bounded (a hand-edited report.json cannot make huge coordinates).
fn t_of(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(-36_000.0, 36_000.0)
    } else {
        0.0
    }
}

/// A step for the axis ticks so that there are at most about 12.
fn tick_step(span: f64) -> f64 {
    for s in [
        0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ] {
        if span / s <= 12.0 {
            return s;
        }
    }
    1800.0
}

/// Labels at the top, each placed in the first row where it does not overlap another.
struct LabelRows {
    rows: Vec<Vec<(f64, f64)>>,
}

impl LabelRows {
    fn place(&mut self, x: f64, chars: usize) -> (usize, f64) {
        let w = chars as f64 * 6.2 + 8.0;
        // Labels right of the line, unless that runs off the picture.
        let x0 = if x + w > WIDTH - 4.0 { x - w } else { x + 3.0 };
        for (i, row) in self.rows.iter_mut().enumerate() {
            if row.iter().all(|(a, b)| x0 + w < *a || x0 > *b) {
                row.push((x0, x0 + w));
                return (i, x0);
            }
        }
        self.rows.push(vec![(x0, x0 + w)]);
        (self.rows.len() - 1, x0)
    }
}

/// The timeline as an inline SVG: one lane per node (rows etcd role, host0, service), the
/// fault at t = 0, events, limits, the first failure, the moments the dead node left each
/// table, an axis in seconds and a legend.
pub fn timeline_svg(scenario: &str, t: &Timeline) -> String {
    let nodes: Vec<&String> = t.nodes.iter().take(MAX_LANES).collect();
    let samples = &t.samples[..t.samples.len().min(MAX_SAMPLES)];
    let end = t_of(t.end_s);
    let mut lo = t_of(t.start_s).min(0.0);
    let mut hi = end.max(0.0);
    for m in t.limits.iter().chain(&t.events) {
        hi = hi.max(t_of(m.t));
        lo = lo.min(t_of(m.t));
    }
    if let Some(f) = &t.failure {
        hi = hi.max(t_of(f.t));
        lo = lo.min(t_of(f.t));
    }
    for s in samples {
        lo = lo.min(t_of(s.t));
    }
    let span = (hi - lo).max(1.0);
    hi = lo + span * 1.03;
    let plot = WIDTH - LEFT - RIGHT;
    let x = |v: f64| LEFT + (t_of(v) - lo) / (hi - lo) * plot;

    // Marker labels at the top.
    let mut labels = LabelRows { rows: Vec::new() };
    struct Line {
        x: f64,
        class: &'static str,
        stroke: &'static str,
        dash: &'static str,
        label: String,
        title: String,
        row: usize,
        lx: f64,
    }
    let mut lines: Vec<Line> = Vec::new();
    let mut add = |v: f64, class, stroke, dash, label: String, title: String| {
        let label = cut(&label, 70);
        let (row, lx) = labels.place(x(v), label.chars().count());
        lines.push(Line {
            x: x(v),
            class,
            stroke,
            dash,
            label,
            title,
            row,
            lx,
        });
    };
    if let Some(f) = &t.failure {
        add(
            f.t,
            "failure",
            "#c00",
            "",
            format!(
                "✕ first failure at {} s: {}: {}",
                num(f.t),
                f.check,
                f.reason
            ),
            format!("{}: {}", f.check, f.reason),
        );
    }
    add(
        0.0,
        "fault",
        "#000",
        "",
        match &t.fault {
            Some(f) => format!("t = 0: {f}"),
            None => "t = 0: the containers started".into(),
        },
        t.fault.clone().unwrap_or_default(),
    );
    for e in &t.events {
        add(
            e.t,
            "event",
            "#000",
            "6 3",
            format!("{} s: {}", num(e.t), e.label),
            e.label.clone(),
        );
    }
    for l in &t.limits {
        add(
            l.t,
            "limit",
            "#6a3d9a",
            "3 3",
            l.label.clone(),
            format!("{} ends at {} s", l.label, num(l.t)),
        );
    }
    let top = 8.0 + labels.rows.len().max(1) as f64 * LABEL_ROW + 6.0;
    let lane_h = ROWS.len() as f64 * ROW + (ROWS.len() - 1) as f64 * ROW_GAP;
    let lanes_bottom = top + nodes.len() as f64 * (lane_h + LANE_GAP);
    let axis_y = lanes_bottom + 4.0;
    let legend_y = axis_y + 34.0;
    let height = legend_y + 5.0 * 20.0 + 10.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg class=\"timeline\" data-scenario=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">",
        esc(scenario)
    );
    let _ = writeln!(
        s,
        "<title>{}: timeline, one lane per node</title>",
        esc(scenario)
    );
    let _ = writeln!(
        s,
        "<defs>\
<pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#000\" stroke-opacity=\"0.35\" stroke-width=\"2\"/></pattern>\
<pattern id=\"cross\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\"><path d=\"M0 0L6 6M6 0L0 6\" stroke=\"#fff\" stroke-opacity=\"0.5\" stroke-width=\"1\"/></pattern>\
<pattern id=\"dots\" width=\"5\" height=\"5\" patternUnits=\"userSpaceOnUse\"><circle cx=\"2.5\" cy=\"2.5\" r=\"1\" fill=\"#000\" fill-opacity=\"0.4\"/></pattern>\
</defs>"
    );
    // Grid and axis.
    let step = tick_step(hi - lo);
    let mut tick = (lo / step).ceil() * step;
    let _ = writeln!(s, "<g class=\"axis\">");
    while tick <= hi {
        let tx = x(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{tx:.1}\" y1=\"{top:.1}\" x2=\"{tx:.1}\" y2=\"{axis_y:.1}\" stroke=\"#eee\"/>\
<line x1=\"{tx:.1}\" y1=\"{axis_y:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>\
<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            axis_y + 5.0,
            axis_y + 16.0,
            num(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#444\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">seconds from t = 0 →</text></g>",
        WIDTH - RIGHT,
        WIDTH - RIGHT,
        axis_y + 29.0
    );
    // Lanes.
    for (i, node) in nodes.iter().enumerate() {
        let y0 = top + i as f64 * (lane_h + LANE_GAP);
        let mine: Vec<_> = samples.iter().filter(|x| &x.node == *node).collect();
        let _ = writeln!(
            s,
            "<g class=\"lane\" data-node=\"{}\" data-samples=\"{}\">",
            esc(node),
            mine.len()
        );
        let _ = writeln!(
            s,
            "<text x=\"6\" y=\"{:.1}\" font-weight=\"bold\" font-size=\"12\">{}</text>",
            y0 + ROW - 3.0,
            esc(&cut(node, 16))
        );
        for (r, name) in ROWS.iter().enumerate() {
            let ry = y0 + r as f64 * (ROW + ROW_GAP);
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{name}</text>\
<rect x=\"{LEFT}\" y=\"{ry:.1}\" width=\"{plot:.1}\" height=\"{ROW}\" fill=\"none\" stroke=\"#ddd\"/>",
                LEFT - 6.0,
                ry + ROW - 4.0
            );
            // Segments: from each change of this row to the next, the last to the end.
            let changes: Vec<(f64, Look)> = mine
                .iter()
                .filter_map(|x| row_state(r, x.obs).map(|l| (t_of(x.t), l)))
                .collect();
            for (k, (from, l)) in changes.iter().enumerate() {
                let to = changes.get(k + 1).map(|c| c.0).unwrap_or(end).max(*from);
                let (x0, x1) = (x(*from), x(to).max(x(*from) + 1.5));
                let w = x1 - x0;
                let _ = write!(
                    s,
                    "<rect class=\"seg\" x=\"{x0:.1}\" y=\"{ry:.1}\" width=\"{w:.1}\" height=\"{ROW}\" fill=\"{}\"><title>{} {name}: {} from {} s to {} s</title></rect>",
                    l.fill,
                    esc(node),
                    l.label,
                    num(*from),
                    num(to)
                );
                if let Some(p) = l.pattern {
                    let _ = write!(
                        s,
                        "<rect x=\"{x0:.1}\" y=\"{ry:.1}\" width=\"{w:.1}\" height=\"{ROW}\" fill=\"url(#{p})\" pointer-events=\"none\"/>"
                    );
                }
                let text = if w >= l.label.chars().count() as f64 * 6.2 + 6.0 {
                    Some(l.label)
                } else if w >= 10.0 {
                    Some(l.short)
                } else {
                    None
                };
                if let Some(text) = text {
                    let _ = write!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\" pointer-events=\"none\">{text}</text>",
                        x0 + 3.0,
                        ry + ROW - 4.0,
                        l.ink
                    );
                }
                s.push('\n');
            }
        }
        // The moment the dead node left this node's table: the first look after t = 0
        // that no longer listed it.
        let listed_before = mine
            .iter()
            .any(|x| x.t >= 0.0 && x.obs == Obs::DeadListed(true));
        if let Some(g) = mine
            .iter()
            .find(|x| x.t >= 0.0 && x.obs == Obs::DeadListed(false))
        {
            let gx = x(g.t);
            let gy = y0 + ROW + ROW_GAP + ROW / 2.0;
            let what = if listed_before {
                format!("dead node left this table at {} s", num(g.t))
            } else {
                format!(
                    "dead node not in this table at the first look, {} s",
                    num(g.t)
                )
            };
            let _ = writeln!(
                s,
                "<g class=\"gone\"><path d=\"M{gx:.1} {:.1}l6 7l-6 7l-6 -7z\" fill=\"#fff\" stroke=\"#000\" stroke-width=\"1.5\"><title>{what}</title></path>\
<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">gone {} s</text></g>",
                gy - 7.0,
                gx + 8.0,
                gy + 4.0,
                num(g.t)
            );
        }
        // Still listed at the last look: said at the end of the host0 row.
        let last_listed = mine
            .iter()
            .rev()
            .find(|x| matches!(x.obs, Obs::DeadListed(_)));
        if let Some(l) = last_listed.filter(|l| l.obs == Obs::DeadListed(true) && l.t >= 0.0) {
            let text = "still lists the dead node";
            let w = text.chars().count() as f64 * 6.2 + 8.0;
            let ex = x(end);
            let gy = y0 + ROW + ROW_GAP;
            let _ = writeln!(
                s,
                "<g class=\"still-listed\"><rect x=\"{:.1}\" y=\"{gy:.1}\" width=\"{w:.1}\" height=\"{ROW}\" fill=\"#fff\" stroke=\"#c00\"><title>the last look, at {} s, still found the dead node in this table</title></rect>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c00\" font-weight=\"bold\">{text}</text></g>",
                ex - w,
                num(l.t),
                ex - w + 4.0,
                gy + ROW - 4.0
            );
        }
        s.push_str("</g>\n");
    }
    // Vertical markers with their labels on top.
    for l in &lines {
        let ly = 8.0 + (l.row as f64 + 1.0) * LABEL_ROW - 3.0;
        let width = if l.class == "failure" { 2.5 } else { 1.5 };
        let _ = writeln!(
            s,
            "<g class=\"marker {}\"><line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"{}\" stroke-width=\"{width}\" stroke-dasharray=\"{}\"/>\
<text x=\"{:.1}\" y=\"{ly:.1}\" fill=\"{}\"{}>{}<title>{}</title></text></g>",
            l.class,
            l.x,
            ly - 9.0,
            l.x,
            l.stroke,
            l.dash,
            l.lx,
            l.stroke,
            if l.class == "failure" {
                " font-weight=\"bold\""
            } else {
                ""
            },
            esc(&l.label),
            esc(&l.title)
        );
    }
    // Legend.
    let mut ly = legend_y;
    let _ = writeln!(s, "<g class=\"legend\">");
    let groups: [(&str, Vec<Look>); 4] = [
        (
            "etcd role",
            [
                Role::Leader,
                Role::Follower,
                Role::NoLeader,
                Role::Unreachable,
            ]
            .into_iter()
            .map(role_look)
            .collect(),
        ),
        (
            "host0 in its table",
            [
                Host0::Leader,
                Host0::Other,
                Host0::Missing,
                Host0::Unreadable,
            ]
            .into_iter()
            .map(host0_look)
            .collect(),
        ),
        (
            "leader service",
            vec![service_look(true), service_look(false)],
        ),
        ("every row", vec![DOWN]),
    ];
    for (title, looks) in groups {
        let _ = write!(
            s,
            "<text x=\"6\" y=\"{:.1}\" font-weight=\"bold\">{title}</text>",
            ly + 12.0
        );
        let mut lx = LEFT;
        for l in looks {
            let _ = write!(
                s,
                "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"22\" height=\"{ROW}\" fill=\"{}\" stroke=\"#999\"/>",
                l.fill
            );
            if let Some(p) = l.pattern {
                let _ = write!(
                    s,
                    "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"22\" height=\"{ROW}\" fill=\"url(#{p})\"/>"
                );
            }
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                lx + 4.0,
                ly + ROW - 4.0,
                l.ink,
                l.short,
                lx + 28.0,
                ly + ROW - 4.0,
                l.label
            );
            lx += 28.0 + l.label.chars().count() as f64 * 6.2 + 24.0;
        }
        s.push('\n');
        ly += 20.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"6\" y=\"{:.1}\">lines: <tspan font-weight=\"bold\">black</tspan> t = 0 and later moves of the grader (dashed), <tspan fill=\"#6a3d9a\">purple dashed</tspan> a limit, <tspan fill=\"#c00\" font-weight=\"bold\">red ✕</tspan> the first failed check; ◆ gone: the dead node left that table{}</text></g>",
        ly + 12.0,
        if t.truncated {
            "; samples were cut at the recorder's cap"
        } else {
            ""
        }
    );
    s.push_str("</svg>");
    s
}

// ---- the class pages ----------------------------------------------------------------

/// Largest report.json read.
pub const MAX_REPORT_BYTES: u64 = 32 << 20;
/// Most submissions read from one report directory.
pub const MAX_SUBMISSIONS: usize = 5000;

/// What [`write_class_pages`] wrote and skipped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClassPages {
    /// Submissions with a report.html written, in table order.
    pub written: Vec<String>,
    /// Submissions (folder names) skipped, with why.
    pub skipped: Vec<(String, String)>,
}

/// Reads DIR/report.json: a regular file (not a symlink), at most [`MAX_REPORT_BYTES`].
fn read_report(dir: &Path) -> Result<GradeReport, String> {
    let path = dir.join("report.json");
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("report.json: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("report.json is not a regular file".into());
    }
    if meta.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "report.json holds {} bytes, more than {MAX_REPORT_BYTES}",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("report.json: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("report.json does not parse: {e}"))
}

/// Writes `text` to `path`, replacing a symlink there instead of following it.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            std::fs::remove_file(path)?;
        }
    }
    std::fs::write(path, text)
}

/// Writes DIR/report.html for the report.
pub fn write_submission_page(dir: &Path, r: &GradeReport) -> std::io::Result<()> {
    write_file(&dir.join("report.html"), &submission_page(r))
}

/// Scans OUT/*/report.json (folders only, no symlink followed, at most
/// [`MAX_SUBMISSIONS`]), writes OUT/<sub>/report.html for each and OUT/index.html, the
/// class table. A report that cannot be read is named in the table and skipped.
pub fn write_class_pages(out: &Path) -> std::io::Result<ClassPages> {
    let mut subs: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(out)? {
        let entry = entry?;
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_symlink() {
            skipped.push((
                entry.file_name().to_string_lossy().into_owned(),
                "a symlink, not followed".to_string(),
            ));
            continue;
        }
        if !ft.is_dir() {
            continue; // index.html, summary files
        }
        subs.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    subs.sort();
    skipped.sort();
    let mut pages = ClassPages {
        written: Vec::new(),
        skipped,
    };
    if subs.len() > MAX_SUBMISSIONS {
        for (name, _) in subs.drain(MAX_SUBMISSIONS..) {
            pages
                .skipped
                .push((name, format!("more than {MAX_SUBMISSIONS} submissions")));
        }
    }
    let mut reports = Vec::new();
    for (name, dir) in subs {
        match read_report(&dir) {
            Ok(r) => {
                let r = r.cleaned();
                write_submission_page(&dir, &r)?;
                reports.push((name, r));
            }
            Err(why) => pages.skipped.push((name, why)),
        }
    }
    let (html, order) = class_page(&reports, &pages.skipped);
    write_file(&out.join("index.html"), &html)?;
    pages.written = order;
    Ok(pages)
}

/// index.html: one row per submission, one column per scenario, failures first. Returns
/// the page and the submissions in its order.
pub fn class_page(
    reports: &[(String, GradeReport)],
    skipped: &[(String, String)],
) -> (String, Vec<String>) {
    let mut scenarios: Vec<&str> = Vec::new();
    for (_, r) in reports {
        for s in &r.scenarios {
            if !scenarios.contains(&s.name.as_str()) && scenarios.len() < 64 {
                scenarios.push(&s.name);
            }
        }
    }
    struct Row<'a> {
        name: &'a str,
        r: &'a GradeReport,
        bad: usize,
        score: f64,
        max: f64,
    }
    let mut rows: Vec<Row> = reports
        .iter()
        .map(|(name, r)| {
            let g = gradescope_results(r);
            Row {
                name,
                r,
                bad: r.failed + r.errors,
                score: g.score,
                max: g.tests.iter().map(|t| t.max_score).sum(),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.bad.cmp(&a.bad).then_with(|| a.name.cmp(b.name)));
    let mut b = String::new();
    let failing = rows.iter().filter(|r| r.bad > 0).count();
    let _ = writeln!(
        b,
        "<h1>Class grading</h1>\n<p>{} submissions, {failing} with a failed or unrun scenario (listed first). Click a column's title to sort by it; click a submission for its report.</p>",
        rows.len()
    );
    b.push_str("<table id=\"class\"><thead><tr><th data-col=\"0\">submission</th><th data-col=\"1\">score</th><th data-col=\"2\">failed</th>");
    for (i, s) in scenarios.iter().enumerate() {
        let _ = write!(b, "<th data-col=\"{}\">{}</th>", i + 3, esc(s));
    }
    b.push_str("</tr></thead><tbody>\n");
    let mut order = Vec::new();
    for row in &rows {
        order.push(row.name.to_string());
        let _ = write!(
            b,
            "<tr class=\"submission {}\" data-submission=\"{}\"><td data-sort=\"{}\"><a href=\"{}/report.html\">{}</a></td><td data-sort=\"{}\">{} / {}</td><td data-sort=\"{}\">{}</td>",
            if row.bad > 0 { "failed" } else { "passed" },
            esc(row.name),
            esc(row.name),
            url_segment(row.name),
            esc(row.name),
            num(row.score),
            num(row.score),
            num(row.max),
            row.bad,
            row.bad
        );
        for name in &scenarios {
            match row.r.scenario(name) {
                Some(s) => {
                    let (class, text) = verdict(s.status);
                    let rank = match s.status {
                        Status::Error => 0,
                        Status::Failed => 1,
                        Status::Passed => 2,
                    };
                    let title = s
                        .reason
                        .as_deref()
                        .map(|x| format!(" title=\"{}\"", esc(&cut(x, 300))))
                        .unwrap_or_default();
                    let _ = write!(
                        b,
                        "<td class=\"{class}\" data-sort=\"{rank}\"{title}>{text}</td>"
                    );
                }
                None => b.push_str("<td data-sort=\"3\" class=\"muted\">not run</td>"),
            }
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</tbody></table>\n");
    if !skipped.is_empty() {
        b.push_str("<h2>Skipped</h2>\n<ul id=\"skipped\">\n");
        for (name, why) in skipped {
            let _ = writeln!(b, "<li><b>{}</b>: {}</li>", esc(name), esc(why));
        }
        b.push_str("</ul>\n");
    }
    (page("class grading", &b, Some(SORT_JS)), order)
}

/// Counts, for tests and trials: `<svg class="timeline"` elements and, per SVG, its lanes.
pub fn count_lanes(html: &str) -> Vec<usize> {
    html.split("<svg class=\"timeline\"")
        .skip(1)
        .map(|svg| {
            let svg = svg.split("</svg>").next().unwrap_or("");
            svg.matches("<g class=\"lane\"").count()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::report::{write_reports, CheckReport};
    use crate::grade::timeline::Live;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    const HOSTILE: &str = "<script>alert(1)</script> \"q\" 'a' ]]> <!-- \u{1b}[31mred\u{1b}]0;title\u{7} \u{9b}2J &amp; <img src=x onerror=alert(2)>";

    /// A timeline as a kill_leader run records it: node0 leads, is killed at t = 0, node1
    /// takes over; node2's table drops node0 late.
    fn timeline(nodes: &[&str], fail: Option<&str>) -> Timeline {
        let mut l = Live::new(nodes.iter().map(|n| n.to_string()).collect());
        let s = l.start();
        let at = |secs: f64| s + Duration::from_secs_f64(secs);
        for (i, n) in nodes.iter().enumerate() {
            let leader = i == 0;
            l.observe_at(
                at(1.0),
                n,
                Obs::Role(if leader { Role::Leader } else { Role::Follower }),
            );
            l.observe_at(at(2.0 + i as f64), n, Obs::Host0(Host0::Leader));
            l.observe_at(at(1.5), n, Obs::Service(leader));
        }
        l.limit(s, Duration::from_secs(60), "limits.start_s");
        l.mark(
            at(8.0),
            &format!("killed {}, the leader", nodes[0]),
            Some(nodes[0]),
        );
        l.limit(at(8.0), Duration::from_secs(10), "limits.leader_change_s");
        l.limit(at(8.0), Duration::from_secs(20), "limits.dead_node_s");
        for (i, n) in nodes.iter().enumerate().skip(1) {
            l.observe_at(at(8.5), n, Obs::Role(Role::NoLeader));
            l.observe_at(at(8.5), n, Obs::Host0(Host0::Other));
            l.observe_at(at(8.5), n, Obs::DeadListed(true));
            l.observe_at(at(8.6), n, Obs::Service(false));
            l.observe_at(
                at(11.0),
                n,
                Obs::Role(if i == 1 { Role::Leader } else { Role::Follower }),
            );
            l.observe_at(at(12.0), n, Obs::Host0(Host0::Leader));
            l.observe_at(at(12.5), n, Obs::Service(i == 1));
            l.observe_at(at(14.0 + 10.0 * i as f64), n, Obs::DeadListed(false));
        }
        if let Some(reason) = fail {
            l.failed(at(28.0), "hosts", reason);
        }
        l.finish_at(at(40.0))
    }

    fn scenario(name: &str, nodes: &[&str], fail: Option<&str>) -> ScenarioReport {
        ScenarioReport {
            name: name.into(),
            description: format!("the {name} scenario"),
            status: if fail.is_some() {
                Status::Failed
            } else {
                Status::Passed
            },
            passed: fail.is_none(),
            reason: fail.map(|r| format!("hosts: {r}")),
            seconds: 40.0,
            figures: BTreeMap::from([("dead_leader_gone_s".into(), 24.0)]),
            notes: vec![format!("killed {}, the leader", nodes[0])],
            checks: vec![CheckReport {
                name: "hosts".into(),
                passed: fail.is_none(),
                reason: fail.map(str::to_string),
                seconds: fail.is_none().then_some(4.0),
            }],
            logs: fail.map(|_| format!("[node0]\n{HOSTILE}\n")),
            timeline: Some(timeline(nodes, fail)),
        }
    }

    fn report(fail: bool) -> GradeReport {
        let nodes = ["node0", "node1", "node2"];
        let why = fail
            .then_some("node0 still listed in node2's table; allowed 20 s (limits.dead_node_s)");
        GradeReport::new(
            "good",
            "fixtures/good/profile.toml",
            "img:1",
            3,
            "10.79.1.0/24",
            vec![
                scenario("startup", &nodes, None),
                scenario("kill_leader", &nodes, why),
            ],
        )
    }

    /// Every tag name in `html` (`<x`, `</x`, `<!x`).
    fn tags(html: &str) -> std::collections::BTreeSet<String> {
        html.split('<')
            .skip(1)
            .map(|t| {
                t.trim_start_matches(['/', '!'])
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect::<String>()
                    .to_ascii_lowercase()
            })
            .collect()
    }

    const OUR_TAGS: &[&str] = &[
        "doctype", "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b",
        "code", "table", "thead", "tbody", "tr", "th", "td", "a", "section", "span", "ul", "li",
        "pre", "svg", "defs", "pattern", "line", "path", "circle", "g", "rect", "text", "tspan",
        "script",
    ];

    #[test]
    fn nothing_from_a_submission_survives_as_markup() {
        let mut r = report(true);
        r.profile = HOSTILE.into();
        let s = &mut r.scenarios[1];
        s.name = format!("kill{HOSTILE}");
        s.reason = Some(format!("hosts: {HOSTILE}"));
        s.checks[0].reason = Some(HOSTILE.into());
        s.notes.push(HOSTILE.into());
        s.figures.insert(HOSTILE.into(), f64::NAN);
        let t = s.timeline.as_mut().unwrap();
        t.nodes[2] = HOSTILE.into();
        t.fault = Some(HOSTILE.into());
        t.failure.as_mut().unwrap().reason = HOSTILE.into();
        t.limits[0].label = HOSTILE.into();
        for x in &mut t.samples {
            if x.node == "node2" {
                x.node = HOSTILE.into();
            }
        }
        let page = submission_page(&r);
        let (index, _) = class_page(
            &[(format!("sub{HOSTILE}"), r.clone())],
            &[(HOSTILE.into(), HOSTILE.into())],
        );
        for (what, html) in [("report.html", &page), ("index.html", &index)] {
            for bad in [
                "<script>alert",
                "<img",
                "<!--",
                "]]>",
                "\u{1b}",
                "\u{7}",
                "\u{9b}",
                "'a'",
                "\"q\"",
            ] {
                assert!(!html.contains(bad), "{what} holds {bad:?}");
            }
            let unknown: Vec<String> = tags(html)
                .into_iter()
                .filter(|t| !OUR_TAGS.contains(&t.as_str()))
                .collect();
            assert!(unknown.is_empty(), "{what} holds tags {unknown:?}");
            assert!(
                html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{what} shows the text"
            );
        }
        assert_eq!(
            page.matches("<script").count(),
            0,
            "report.html runs no script"
        );
        assert_eq!(
            index.matches("<script").count(),
            1,
            "index.html: only the sort script"
        );
        // The lane of the hostile node is still drawn, with its samples.
        assert_eq!(count_lanes(&page), [3, 3]);
        assert!(page.contains("data-node=\"&lt;script&gt;"));
        // The folder name is percent-encoded in the link.
        assert!(index.contains("href=\"sub%3Cscript%3Ealert%281%29"));
    }

    #[test]
    fn timeline_has_a_lane_per_node_the_markers_and_a_legend() {
        let t = timeline(&["node0", "node1", "node2", "node3"], Some("late"));
        let svg = timeline_svg("kill_leader", &t);
        assert_eq!(count_lanes(&svg), [4]);
        for class in [
            "marker fault",
            "marker failure",
            "marker limit",
            "legend",
            "axis",
        ] {
            assert!(svg.contains(&format!("class=\"{class}\"")), "no {class}");
        }
        // Limits after the fault only; leader_change_s and dead_node_s.
        assert_eq!(svg.matches("class=\"marker limit\"").count(), 2);
        assert!(svg.contains(">limits.dead_node_s (20 s)<"));
        assert!(svg.contains("t = 0: killed node0, the leader"));
        assert!(svg.contains("✕ first failure at 20 s: hosts: late"));
        // node1..3 each drop the dead node once; node0 is down.
        assert_eq!(svg.matches("class=\"gone\"").count(), 3);
        assert!(svg.contains("gone 16 s") && svg.contains("gone 36 s"));
        assert!(svg.contains("node0 etcd: node down from 0 s to 32 s"));
        assert!(svg.contains("node1 etcd: leader from 3 s to 32 s"));
        assert!(svg.contains(">seconds from t = 0"));
        // Axis ticks in seconds, across the run (-8 s to 32 s).
        assert!(svg.contains(">-5</text>") && svg.contains(">30</text>"));
        assert!(!svg.contains("still-listed"));
        // A table that never dropped the dead node says so at the end of its lane.
        let mut l = Live::new(vec!["node0".into(), "node1".into()]);
        let at = |secs: f64| l.start() + Duration::from_secs_f64(secs);
        let (a, b, c) = (at(1.0), at(2.0), at(25.0));
        l.mark(a, "killed node0, the follower", Some("node0"));
        l.observe_at(b, "node1", Obs::DeadListed(true));
        let svg = timeline_svg("kill_follower", &l.finish_at(c));
        assert_eq!(svg.matches("class=\"still-listed\"").count(), 1);
        assert!(!svg.contains("class=\"gone\""));
        // A report without a timeline still renders its section.
        let mut r = report(false);
        r.scenarios[0].timeline = None;
        let page = submission_page(&r);
        assert!(page.contains("no timeline was recorded"));
        assert_eq!(count_lanes(&page), [3]);
    }

    #[test]
    fn the_class_table_lists_failures_first() {
        let reports = vec![
            ("alice".to_string(), report(false)),
            ("bob".to_string(), report(true)),
            ("carol".to_string(), report(false)),
        ];
        let (html, order) = class_page(&reports, &[]);
        assert_eq!(order, ["bob", "alice", "carol"]);
        assert_eq!(html.matches("<tr class=\"submission").count(), 3);
        assert!(html.contains("<th data-col=\"3\">startup</th><th data-col=\"4\">kill_leader</th>"));
        assert!(html.contains("href=\"bob/report.html\""));
        assert!(html.contains("<td data-sort=\"1\">1 / 2</td>"));
    }

    /// Where Debian's chromium is, if installed.
    fn chromium() -> Option<std::path::PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    }

    fn dump_dom(chrome: &Path, file: &Path) -> String {
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
            .expect("chromium runs");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn class_pages_load_in_headless_chromium() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for (name, fail) in [("alice", false), ("bob", true), ("carol", false)] {
            write_reports(&out.join(name), &report(fail)).unwrap();
        }
        // A bad report is named and skipped; a symlinked folder is not followed.
        std::fs::create_dir(out.join("dave")).unwrap();
        std::fs::write(out.join("dave/report.json"), "{ not json").unwrap();
        std::os::unix::fs::symlink(out.join("alice"), out.join("eve")).unwrap();
        std::fs::create_dir(out.join("frank")).unwrap();
        std::os::unix::fs::symlink(out.join("alice/report.json"), out.join("frank/report.json"))
            .unwrap();
        let pages = write_class_pages(out).unwrap();
        assert_eq!(pages.written, ["bob", "alice", "carol"]);
        let skipped: Vec<&str> = pages.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["eve", "dave", "frank"], "{:?}", pages.skipped);
        assert!(pages.skipped[2].1.contains("not a regular file"));
        assert!(pages.skipped[0].1.contains("symlink"));
        assert!(
            pages.skipped[1].1.contains("does not parse"),
            "{:?}",
            pages.skipped
        );
        assert!(!out.join("dave/report.html").exists());
        let Some(chrome) = chromium() else {
            assert!(
                std::env::var("CLUSTERLAB_REQUIRE_DOCKER").as_deref() != Ok("1"),
                "chromium is required (CLUSTERLAB_REQUIRE_DOCKER=1) but not on PATH; .ci/run installs it"
            );
            println!("skipped: chromium is not installed (apt-get install chromium)");
            return;
        };
        let index = dump_dom(&chrome, &out.join("index.html"));
        assert!(index.contains("<table id=\"class\">"), "{index}");
        let rows: Vec<&str> = index
            .split("<tr class=\"submission")
            .skip(1)
            .map(|r| r.split("</tr>").next().unwrap())
            .collect();
        assert_eq!(rows.len(), 3, "{index}");
        assert!(rows[0].contains("data-submission=\"bob\""));
        for r in &rows {
            assert_eq!(
                r.matches("<td").count(),
                5,
                "submission, score, failed, 2 scenarios: {r}"
            );
        }
        assert!(index.contains("<th data-col=\"4\">kill_leader</th>"));
        assert!(index.contains("dave"));
        // The sort script: two clicks on "submission" sort by name, descending.
        let index_html = std::fs::read_to_string(out.join("index.html")).unwrap();
        let click = "<script>var h=document.querySelector('th[data-col=\"0\"]');h.click();h.click();</script></body>";
        std::fs::write(
            out.join("sorted.html"),
            index_html.replace("</body>", click),
        )
        .unwrap();
        let sorted = dump_dom(&chrome, &out.join("sorted.html"));
        let order: Vec<&str> = sorted
            .split("data-submission=\"")
            .skip(1)
            .map(|r| r.split('"').next().unwrap())
            .collect();
        assert_eq!(order, ["carol", "bob", "alice"], "sorted by the click");
        let page = dump_dom(&chrome, &out.join("bob/report.html"));
        assert_eq!(
            count_lanes(&page),
            [3, 3],
            "one svg per scenario, a lane per node"
        );
        for n in ["node0", "node1", "node2"] {
            assert!(page.contains(&format!("data-node=\"{n}\"")));
        }
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script>alert"));
    }

    #[test]
    fn write_reports_writes_the_page_too() {
        let dir = tempfile::tempdir().unwrap();
        write_reports(dir.path(), &report(true)).unwrap();
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert_eq!(count_lanes(&html), [3, 3]);
        let _ = Instant::now();
    }
}
