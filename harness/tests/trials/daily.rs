//! Daily use, on one 3-node cluster with a gateway: `harness ssh` (direct and `--via`, exit
//! codes passed through), `harness logs` (and `--plugin`), `harness events`, both `/metrics`
//! endpoints parsed by a strict Prometheus text check, and the live page: requests without
//! the token or from a foreign Origin are refused, and headless Chromium (driven over the
//! DevTools protocol) shows the new leader within 2 s of `harness kill leader` being seen.

use anyhow::{bail, ensure, Context};
use futures::{SinkExt, StreamExt};
use harness::events::{self, Change};
use harness::probe::http::Http;
use harness::trial::{cluster_trial, Environment};
use harness::{Cluster, ClusterSpec};
use libtest_mimic::Trial;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The live page must show a new leader within 2 s of `harness kill leader`. With etcd's
/// default raft timing (election timeout 1000 ms, randomised by raft to 1–2 s) the election
/// alone can take the whole 2 s, so this cluster runs a 500 ms election timeout (0.5–1 s):
/// the page then has the rest of the 2 s, and its own lag after etcd's election is printed.
fn daily_spec(s: &mut ClusterSpec) {
    s.gateway = true;
    s.gateway_port = 0;
    s.env
        .push(("CLUSTERLAB_ETCD__ELECTION_MS".into(), "500".into()));
}

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![cluster_trial(
        env,
        "daily_use",
        3,
        daily_spec,
        Arc::new(|c| Box::pin(daily_use(c))),
    )]
}

/// Runs the `harness` binary with `args` (and `--name` of the cluster after the first word).
async fn harness(c: &Cluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut all: Vec<&str> = vec![args[0], "--name", &c.spec.name];
    all.extend(&args[1..]);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(&all)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .with_context(|| format!("harness {all:?} did not finish within 60 s"))??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn daily_use(c: Cluster) -> anyhow::Result<()> {
    let t0 = Instant::now();
    check_ssh(&c).await?;
    println!("ssh checked at {:.1} s", t0.elapsed().as_secs_f64());
    check_logs(&c).await?;
    check_events_command(&c).await?;
    check_metrics(&c).await?;
    println!(
        "logs, events, metrics checked at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    check_view(&c).await?;
    println!("live view checked at {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

async fn check_ssh(c: &Cluster) -> anyhow::Result<()> {
    // The mesh first (every node trusts every other), as a user would wait for it after `up`.
    let names = c.node_names();
    let (took, _) = super::ssh::wait_mesh(c, &names, &names, Duration::from_secs(30)).await?;
    println!("ssh mesh ready {:.2} s into the trial", took.as_secs_f64());
    let (code, out, err) =
        harness(c, &["ssh", "node1", "--", "echo $(whoami)@$(hostname)"]).await?;
    ensure!(
        code == 0 && out.trim() == "admin@node1",
        "harness ssh node1: exit {code}, stdout {out:?}, stderr {err:?}"
    );
    // Over the mesh: node0's admin logs in to node1 with the cluster's keys.
    let (code, out, err) = harness(
        c,
        &[
            "ssh",
            "node1",
            "--via",
            "node0",
            "--",
            "echo $(whoami)@$(hostname)",
        ],
    )
    .await?;
    ensure!(
        code == 0 && out.trim() == "admin@node1",
        "harness ssh node1 --via node0: exit {code}, stdout {out:?}, stderr {err:?}"
    );
    let (code, _, err) = harness(c, &["ssh", "node2", "--via", "node1", "--", "exit 3"]).await?;
    ensure!(
        code == 3,
        "exit code not passed through --via: {code}, stderr {err:?}"
    );
    let (code, _, err) = harness(c, &["ssh", "node7", "--", "true"]).await?;
    ensure!(
        code != 0 && err.contains("node0, node1, node2"),
        "an unknown node: exit {code}, stderr {err:?}"
    );
    Ok(())
}

async fn check_logs(c: &Cluster) -> anyhow::Result<()> {
    let (code, out, err) = harness(c, &["logs", "node0"]).await?;
    ensure!(
        code == 0 && out.contains("etcd is answering") && out.contains("plugin=hostsgen"),
        "harness logs node0: exit {code}, stderr {err:?}, {} bytes of stdout",
        out.len()
    );
    let (code, out, err) = harness(c, &["logs", "node0", "--plugin", "hostsgen"]).await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        code == 0 && !lines.is_empty(),
        "harness logs --plugin hostsgen: exit {code}, stderr {err:?}, no lines"
    );
    for l in &lines {
        ensure!(
            harness::cli::line_plugin(l) == Some("hostsgen"),
            "a line not tagged plugin=hostsgen: {l:?}"
        );
    }
    Ok(())
}

async fn check_events_command(c: &Cluster) -> anyhow::Result<()> {
    let (code, out, err) = harness(c, &["events"]).await?;
    let leader = c.etcd_leader().await?.context("no etcd leader")?;
    for want in [
        "node0 running".to_string(),
        "node2's key: ".to_string(),
        format!("/clusterlab/leader → {leader}"),
        format!(": {leader} leader"),
    ] {
        ensure!(
            code == 0 && out.contains(&want),
            "harness events: no {want:?} in exit {code}, stdout:\n{out}\nstderr {err:?}"
        );
    }
    // A hostile key: refused with a reason, shown without its escape sequence.
    let key = "/clusterlab/nodes/evil\x1b[2J\x1b]0;owned\x07";
    let put = c
        .exec("node0", &["etcdctl", "put", key, "{\"name\":\"evil\"}"])
        .await?;
    ensure!(put.code == 0, "etcdctl put: {}", put.stderr);
    let (code, hostile, err) = harness(c, &["events"]).await?;
    let del = c.exec("node0", &["etcdctl", "del", key]).await?;
    ensure!(del.code == 0, "etcdctl del: {}", del.stderr);
    ensure!(
        code == 0
            && hostile.contains("refused /clusterlab/nodes/evil")
            && !hostile.contains('\x1b')
            && !hostile.contains('\x07'),
        "harness events with a hostile key: exit {code}, stdout:\n{hostile:?}\nstderr {err:?}"
    );
    // Every line starts with a time of day.
    for l in out.lines() {
        let clock = l.split(' ').next().unwrap_or("");
        ensure!(
            clock.len() == 12 && clock.as_bytes()[2] == b':' && clock.as_bytes()[8] == b'.',
            "a line without a time stamp: {l:?}"
        );
    }
    Ok(())
}

/// A strict check of Prometheus/OpenMetrics text: every sample line is `name{labels} value`
/// of a family declared by a `# TYPE` line before it (with the suffixes its type allows),
/// HELP and TYPE at most once per family, label values quoted, `# EOF` last if present.
/// Returns each sample's value by `name{labels}`.
pub fn check_prometheus(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    fn valid_name(n: &str) -> bool {
        let mut ch = n.chars();
        matches!(ch.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && ch.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    ensure!(!lines.is_empty(), "empty metrics text");
    for (i, line) in lines.iter().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if *line == "# EOF" {
            ensure!(
                i == lines.len() - 1,
                "# EOF is not the last line ({})",
                at()
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            ensure!(valid_name(name), "bad metric name in {}", at());
            match kw {
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    ensure!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "untyped",
                            "info",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&ty),
                        "unknown type in {}",
                        at()
                    );
                    ensure!(
                        types.insert(name.to_string(), ty.to_string()).is_none(),
                        "second TYPE for {name} ({})",
                        at()
                    );
                }
                "HELP" => ensure!(
                    helps.insert(name.to_string(), ()).is_none(),
                    "second HELP for {name} ({})",
                    at()
                ),
                "UNIT" => {}
                _ => bail!("unknown comment keyword in {}", at()),
            }
            continue;
        }
        ensure!(!line.starts_with('#'), "malformed comment {}", at());
        // name{labels} value [timestamp]
        let (series, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .with_context(|| format!("no closing brace, {}", at()))?;
                ensure!(close > open, "braces out of order, {}", at());
                let labels = &line[open + 1..close];
                check_labels(labels).with_context(at)?;
                (&line[..close + 1], &line[close + 1..])
            }
            None => {
                let sp = line
                    .find(' ')
                    .with_context(|| format!("no value, {}", at()))?;
                (&line[..sp], &line[sp..])
            }
        };
        let name = series.split('{').next().unwrap_or("");
        ensure!(valid_name(name), "bad sample name in {}", at());
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value = fields.next().unwrap_or("");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .with_context(|| format!("value {v:?} is not a number, {}", at()))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .with_context(|| format!("bad timestamp, {}", at()))?;
        }
        ensure!(fields.next().is_none(), "extra fields, {}", at());
        // The family it belongs to, declared before it, with a suffix its type allows.
        let family = types.iter().find(|(fam, ty)| {
            let allowed: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => {
                    &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"]
                }
                "summary" => &["", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            allowed.iter().any(|s| name == format!("{fam}{s}"))
        });
        let (fam, ty) =
            family.with_context(|| format!("sample of no declared family, {}", at()))?;
        if ty == "histogram" && name.ends_with("_bucket") {
            ensure!(series.contains("le=\""), "bucket without le, {}", at());
        }
        if ty == "counter" || name.ends_with("_count") {
            ensure!(v >= 0.0, "negative {fam}, {}", at());
        }
        ensure!(
            samples.insert(series.to_string(), v).is_none(),
            "the same series twice, {}",
            at()
        );
    }
    ensure!(!samples.is_empty(), "no samples");
    Ok(samples)
}

/// `k="v",k2="v2"` with Prometheus' escapes in values.
fn check_labels(labels: &str) -> anyhow::Result<()> {
    let mut rest = labels;
    while !rest.is_empty() {
        let eq = rest.find("=\"").context("label without =\"")?;
        let key = &rest[..eq];
        ensure!(
            !key.is_empty()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !key.starts_with(|c: char| c.is_ascii_digit()),
            "bad label name {key:?}"
        );
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    let (_, e) = chars.next().context("dangling escape")?;
                    ensure!(matches!(e, '\\' | '"' | 'n'), "bad escape \\{e}");
                }
                '"' => {
                    end = Some(eq + 2 + i);
                    break;
                }
                '\n' => bail!("newline in a label value"),
                _ => {}
            }
        }
        let end = end.context("unterminated label value")?;
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            ensure!(rest.is_empty(), "labels not separated by commas: {rest:?}");
        }
    }
    Ok(())
}

async fn check_metrics(c: &Cluster) -> anyhow::Result<()> {
    let http = Http::new();
    let agent_url = format!("http://{}:8008/metrics", c.node_ip("node0")?);
    // The lease has been renewed at least once after a few seconds of life.
    let (samples, text) = harness::wait_for(
        "node0's /metrics with a lease renewal",
        Duration::from_secs(15),
        Duration::from_millis(300),
        || async {
            let r = http
                .get(&agent_url, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            let s = check_prometheus(&r.body).map_err(|e| format!("{e:#}\n{}", r.body))?;
            match s.get("clusterlab_agent_lease_keepalive_seconds_count") {
                Some(n) if *n >= 1.0 => Ok((s, r.body)),
                _ => Err(format!("no renewal counted yet:\n{}", r.body)),
            }
        },
    )
    .await?
    .0;
    for series in [
        "clusterlab_agent_etcd_status_seconds_count",
        "clusterlab_agent_is_leader",
        "clusterlab_agent_plugin_restarts_total{plugin=\"hostsgen\"}",
    ] {
        ensure!(
            samples.contains_key(series),
            "no {series} in node0's /metrics:\n{text}"
        );
    }
    let gw = c.gateway_url().await?;
    let r = http
        .get(&format!("{gw}/__proxy/metrics"), Duration::from_secs(3))
        .await?;
    ensure!(r.status == 200, "proxy metrics: HTTP {}", r.status);
    let proxy = check_prometheus(&r.body).with_context(|| r.body.clone())?;
    ensure!(
        proxy.contains_key("clusterlab_proxy_has_leader")
            && proxy.contains_key("clusterlab_proxy_requests_total{outcome=\"forwarded\"}"),
        "proxy metrics lack has_leader or requests_total:\n{}",
        r.body
    );
    // The strict check refuses what is not Prometheus text.
    for bad in [
        "x 1\n",
        "# TYPE a counter\na_total{l=\"v} 1\n",
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "# TYPE a counter\na_bucket 1\n",
    ] {
        ensure!(check_prometheus(bad).is_err(), "accepted {bad:?}");
    }
    Ok(())
}

/// One raw HTTP/1.1 request to the view; (status, headers and body as text).
async fn raw(addr: std::net::SocketAddr, request: String) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    Ok((code, text))
}

fn request(method: &str, path: &str, host: &str, extra: &[&str], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r
}

/// Headless Chromium driven over the DevTools protocol.
struct Browser {
    _child: tokio::process::Child,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(url: &str) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1300,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromium (Debian's package `chromium`)")?;
        let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let browser_ws = loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .with_context(|| format!("chromium printed no DevTools URL: {seen:?}"))??
                .with_context(|| format!("chromium ended: {seen:?}"))?;
            if let Some(at) = line.find("ws://") {
                break line[at..].trim().to_string();
            }
            seen.push(line);
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = browser_ws
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let http = Http::new();
        let page_ws = harness::wait_for(
            "chromium's page target",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let r = http
                    .get(
                        &format!("http://127.0.0.1:{port}/json/list"),
                        Duration::from_secs(2),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let list: serde_json::Value =
                    serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
                list.as_array()
                    .and_then(|a| {
                        a.iter().find(|t| {
                            t["type"] == "page"
                                && t["url"].as_str().is_some_and(|u| u.contains("token="))
                        })
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
                    .ok_or_else(|| r.body.clone())
            },
        )
        .await?
        .0;
        let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str()).await?;
        Ok(Browser {
            _child: child,
            ws,
            id: 0,
            _profile: profile,
        })
    }

    async fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.id += 1;
        let id = self.id;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::Text(msg.to_string().into())).await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .with_context(|| format!("no answer to {method}"))?
                .context("DevTools connection closed")??;
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        bail!("{method}: {e}");
                    }
                    return Ok(v["result"].clone());
                }
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expr: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expr, "returnByValue": true}),
            )
            .await?;
        Ok(r["result"]["value"].clone())
    }

    async fn screenshot(&mut self, path: &str) -> anyhow::Result<()> {
        let r = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({"format": "png"}),
            )
            .await?;
        let data = r["data"].as_str().context("no screenshot data")?;
        std::fs::write(path, base64_decode(data)?)?;
        Ok(())
    }
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes().filter(|b| *b != b'=' && !b.is_ascii_whitespace()) {
        let v = A.iter().position(|a| *a == b).context("not base64")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

async fn page_leader(b: &mut Browser) -> anyhow::Result<String> {
    Ok(
        b.eval("(document.getElementById('leader')||{}).textContent||''")
            .await?
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

async fn check_view(c: &Cluster) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(harness::view::serve(c.clone(), 0, ready_tx, async move {
        let _ = stop_rx.await;
    }));
    let served = ready_rx.await.context("the view did not start")?;
    let result = drive_view(c, &served).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    result
}

async fn drive_view(c: &Cluster, served: &harness::view::Served) -> anyhow::Result<()> {
    let addr = served.addr;
    let host = addr.to_string();
    let tok = format!("token={}", served.token);
    let kill_leader = r#"{"action":"kill","node":"leader"}"#;
    let json = "Content-Type: application/json";
    // Refusals: no token, a wrong token, a foreign Origin, another Host, not JSON.
    for (what, req, want) in [
        (
            "page without token",
            request("GET", "/", &host, &[], ""),
            403,
        ),
        (
            "state without token",
            request("GET", "/api/state", &host, &[], ""),
            403,
        ),
        (
            "action without token",
            request("POST", "/api/action", &host, &[json], kill_leader),
            403,
        ),
        (
            "action with a wrong token",
            request(
                "POST",
                &format!("/api/action?token={}", "0".repeat(32)),
                &host,
                &[json],
                kill_leader,
            ),
            403,
        ),
        (
            "action from a foreign Origin",
            request(
                "POST",
                &format!("/api/action?{tok}"),
                &host,
                &[json, "Origin: http://attacker.example"],
                kill_leader,
            ),
            403,
        ),
        (
            "page under another Host",
            request(
                "GET",
                &format!("/?{tok}"),
                &format!("attacker.example:{}", addr.port()),
                &[],
                "",
            ),
            421,
        ),
        (
            "action that is not JSON",
            request(
                "POST",
                &format!("/api/action?{tok}"),
                &host,
                &["Content-Type: text/plain"],
                kill_leader,
            ),
            415,
        ),
    ] {
        let (code, text) = raw(addr, req).await?;
        ensure!(code == want, "{what}: HTTP {code}, wanted {want}: {text}");
    }
    let st = c.status().await?;
    ensure!(
        st.nodes.iter().all(|n| n.state.is_running()),
        "a refused request changed the cluster: {}",
        st.summary()
    );
    let (code, text) = raw(addr, request("GET", &format!("/?{tok}"), &host, &[], "")).await?;
    ensure!(
        code == 200 && text.contains("frame-ancestors 'none'") && text.contains("id=\"leader\""),
        "the page with its token: HTTP {code}: {text}"
    );

    // The page in Chromium follows a leader kill.
    let mut b = Browser::open(&served.url).await?;
    let leader = c.etcd_leader().await?.context("no etcd leader")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = page_leader(&mut b).await?;
        if shown == leader {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the page shows leader {shown:?}, etcd says {leader}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (snap, cursor) = events::snapshot(c).await?;
    drop(snap);
    let mut stream = events::follow(c, cursor);
    let (code, out, err) = harness(c, &["kill", "leader"]).await?;
    ensure!(
        code == 0 && out.contains(&format!("killed {leader}")),
        "harness kill leader: {code} {out:?} {err:?}"
    );
    // The kill as the harness observes it.
    let observed = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .context("no event for the kill within 10 s")?
            .context("the event stream ended")?;
        if matches!(&e.change, Change::Killed { node, .. } if *node == leader) {
            println!("observed: {e}");
            break Instant::now();
        }
    };
    let mut shown;
    let mut seen = Vec::new();
    loop {
        shown = page_leader(&mut b).await?;
        if !shown.is_empty() && shown != "none" && shown != leader {
            break;
        }
        ensure!(
            observed.elapsed() < Duration::from_secs(2),
            "2 s after the kill of {leader} was observed the page still shows leader {shown:?}; \
             the harness's events since the kill:\n{}",
            seen.iter()
                .map(|e: &events::Event| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Waiting for the next event doubles as the pause between looks at the page.
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
            seen.push(e);
        }
    }
    let lag = observed.elapsed();
    println!(
        "page shows new leader {shown} {:.0} ms after the kill was observed",
        lag.as_secs_f64() * 1000.0
    );
    // The new leader is etcd's, the killed box says so, and the event log has the kill.
    let etcd = c.etcd_leader().await?;
    ensure!(
        etcd.as_deref() == Some(shown.as_str()),
        "page shows {shown}, etcd says {etcd:?}"
    );
    let role = b
        .eval(&format!(
            "document.getElementById('node-{leader}').dataset.role"
        ))
        .await?;
    ensure!(role == "down", "the killed node's box says {role}");
    let log = b
        .eval("document.getElementById('events').textContent")
        .await?;
    let log = log.as_str().unwrap_or("");
    ensure!(
        log.contains(&format!("{leader} killed (SIGKILL)")),
        "no kill line in the page's events: {log}"
    );
    // The survivors' hosts tables, read again while the cluster changes, move the host0
    // badge to the new leader (hostsgen rewrites them within a few seconds of the kill).
    let badge_js = "Array.from(document.querySelectorAll('.node')).filter(d => d.querySelector('.badge')).map(d => d.id).join(',')";
    let want = format!("node-{shown}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let badged = b.eval(badge_js).await?;
        let badged = badged.as_str().unwrap_or("");
        if badged == want {
            println!(
                "page marks {shown} host0 {:.0} ms after the kill was observed",
                observed.elapsed().as_secs_f64() * 1000.0
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "10 s after the page showed leader {shown} it marks {badged:?} host0, not {shown}; its hosts tables: {}",
            b.eval("document.getElementById('hosts').textContent").await?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = format!("/tmp/{}-view.png", c.spec.name);
    b.screenshot(&shot).await?;
    println!("screenshot: {shot}");
    // The stream itself saw the raft term change to the new leader.
    let is_new_term = |e: &events::Event| matches!(&e.change, Change::RaftTerm { leader: Some(l), .. } if *l == shown);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(is_new_term) {
        let e = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .context("no raft term change in the event stream")?
            .context("the event stream ended")?;
        seen.push(e);
    }
    // The start button's request (with the token, same Origin) brings the node back.
    let (code, text) = raw(
        addr,
        request(
            "POST",
            &format!("/api/action?{tok}"),
            &host,
            &[json, &format!("Origin: http://{host}")],
            &format!(r#"{{"action":"start","node":"{leader}"}}"#),
        ),
    )
    .await?;
    ensure!(
        code == 200 && text.contains("started"),
        "start through the view: HTTP {code}: {text}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = b_role(&mut b, &leader).await;
        if st.as_deref() == Some("running") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "20 s after starting {leader} through the view, its box says {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Isolate and heal through the view: the box says what is cut, then no longer.
    let act = |body: String| {
        request(
            "POST",
            &format!("/api/action?{tok}"),
            &host,
            &[json, &format!("Origin: http://{host}")],
            &body,
        )
    };
    let (code, text) = raw(
        addr,
        act(format!(r#"{{"action":"isolate","node":"{shown}"}}"#)),
    )
    .await?;
    ensure!(
        code == 200 && text.contains("partitioned"),
        "isolate through the view: HTTP {code}: {text}"
    );
    let cut_text = format!("(document.getElementById('node-{shown}')||{{}}).textContent||''");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = b.eval(&cut_text).await?;
        if t.as_str().is_some_and(|t| t.contains("cut off from")) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "10 s after isolating {shown}, its box says {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, text) = raw(addr, act(r#"{"action":"heal"}"#.to_string())).await?;
    ensure!(
        code == 200 && text.contains("healed"),
        "heal through the view: HTTP {code}: {text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = b.eval(&cut_text).await?;
        if t.as_str().is_some_and(|t| !t.contains("cut off from")) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "10 s after healing, {shown}'s box says {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn b_role(b: &mut Browser, node: &str) -> Option<String> {
    b.eval(&format!(
        "document.getElementById('node-{node}').dataset.state"
    ))
    .await
    .ok()
    .and_then(|v| v.as_str().map(String::from))
}
