//! `harness bench failover`, and the HTTP probes that the proxy trials and `harness bench
//! proxy` share with it.
//!
//! - **failover**: a steady, open-loop stream of GETs through the gateway (one every
//!   `interval`, each on its own, so a held request does not slow the stream down), a leader
//!   kill per run, and per run: seconds from the kill to the first response served by the new
//!   leader, GETs that failed, GETs slower than 1 s.
//!
//! Which node served a response is read from the proxy's `x-clusterlab-upstream` header and,
//! failing that, from the `name` in the leader service's JSON.

use crate::cluster::{Cluster, ClusterSpec};
use crate::docker::HarnessError;
use crate::names::Subnet;
use crate::wait::{wait_for, WaitError};
use bollard::Docker;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Port of the leader service on every node.
pub const SERVICE_PORT: u16 = 8888;
/// The proxy's status page.
pub const PROXY_STATUS: &str = "/__proxy/status";
/// A GET slower than this counts as slow.
pub const SLOW: Duration = Duration::from_secs(1);

/// Failures of the proxy checks and benchmarks.
pub type ProxyCheckError = crate::wait::CheckError;

/// One HTTP answer, reduced to what the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// The node that served it, from the proxy's header or the service's JSON.
    pub served_by: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

/// The `name` field of the leader service's `/api/status` JSON.
pub fn name_in_status(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("name")?.as_str().map(String::from)
}

/// A keep-alive HTTP/1.1 client; one per benchmark so both paths share its behaviour.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(conn);
        Http { client }
    }

    /// GETs `url`, giving up after `timeout`; transport errors and timeouts are `Err`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Reply, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let fut = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = resp.status().as_u16();
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let upstream = header("x-clusterlab-upstream");
            let retry_after = header("retry-after");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading {url}: {e}"))?
                .to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            let served_by = upstream.or_else(|| name_in_status(&body));
            Ok(Reply {
                status,
                served_by,
                retry_after,
                body,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "GET {url}: no answer within {:.1} s",
                timeout.as_secs_f64()
            )),
        }
    }
}

/// URL of a node's leader service.
pub fn service_url(ip: Ipv4Addr, path: &str) -> String {
    format!("http://{ip}:{SERVICE_PORT}{path}")
}

/// Which nodes answer `/api/status` on the service port right now (probed in parallel),
/// with the name each one gives.
pub async fn answering(
    http: &Http,
    c: &Cluster,
    timeout: Duration,
) -> Result<Vec<(String, String)>, HarnessError> {
    let mut probes = Vec::new();
    for n in c.node_names() {
        let url = service_url(c.node_ip(&n)?, "/api/status");
        probes.push(async move {
            match http.get(&url, timeout).await {
                Ok(r) if r.status == 200 => Some((n, r.served_by.unwrap_or_default())),
                _ => None,
            }
        });
    }
    Ok(futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect())
}

/// Waits until a GET of `/api/status` through the gateway is served by etcd's current
/// leader and that leader passes `accept`. Returns the leader and the time it took.
pub async fn wait_proxy_serves_leader(
    http: &Http,
    c: &Cluster,
    gateway: &str,
    accept: impl Fn(&str) -> bool,
    what: &str,
    timeout: Duration,
) -> Result<(String, Duration), WaitError> {
    let url = format!("{gateway}/api/status");
    wait_for(what, timeout, Duration::from_millis(100), || async {
        let r = http.get(&url, Duration::from_secs(8)).await?;
        let by = r.served_by.clone().unwrap_or_default();
        if r.status != 200 || !accept(&by) {
            return Err(format!("gateway answered {} from {by:?}", r.status));
        }
        let leader = c.etcd_leader().await.map_err(|e| e.to_string())?;
        if leader.as_deref() == Some(by.as_str()) {
            Ok(by)
        } else {
            Err(format!(
                "gateway served by {by} but etcd's leader is {leader:?}"
            ))
        }
    })
    .await
}

/// One GET of a stream.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent and answered, from the stream's start.
    pub sent: Duration,
    pub done: Duration,
    /// The serving node on a 200; otherwise what went wrong.
    pub result: Result<String, String>,
}

impl Sample {
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// A steady, open-loop stream of GETs: one is sent every `interval` whatever the others do.
#[derive(Debug)]
pub struct GetStream {
    pub start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    issuer: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl GetStream {
    /// Starts sending GETs of `url` every `interval`, each allowed `timeout`.
    pub fn start(http: Http, url: String, interval: Duration, timeout: Duration) -> GetStream {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s2, samples2) = (stop.clone(), samples.clone());
        let issuer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut tasks = Vec::new();
            while !s2.load(Ordering::SeqCst) {
                tick.tick().await;
                let (http, url, samples) = (http.clone(), url.clone(), samples2.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = start.elapsed();
                    let result = match http.get(&url, timeout).await {
                        Ok(r) if r.status == 200 => Ok(r.served_by.unwrap_or_else(|| "?".into())),
                        Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body.trim())),
                        Err(e) => Err(e),
                    };
                    let s = Sample {
                        sent,
                        done: start.elapsed(),
                        result,
                    };
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }));
            }
            tasks
        });
        GetStream {
            start,
            stop,
            samples,
            issuer,
        }
    }

    /// The samples answered so far.
    pub fn answered(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sending and waits for every GET in flight; returns all samples by send time.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(tasks) = self.issuer.await {
            for t in tasks {
                let _ = t.await;
            }
        }
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by_key(|s| s.sent);
        v
    }
}

/// What one leader kill did to a stream of GETs.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverRun {
    pub old_leader: String,
    pub new_leader: Option<String>,
    /// Seconds from the kill to the first response served by another node.
    pub first_new_s: Option<f64>,
    pub gets: usize,
    pub failed: usize,
    pub slow: usize,
    /// The first few failures, for the report.
    pub failures: Vec<String>,
}

/// Reads a stream's samples around a kill at `kill` (from the stream's start).
pub fn analyse(samples: &[Sample], kill: Duration, old_leader: &str) -> FailoverRun {
    let first_new = samples
        .iter()
        .filter(|s| matches!(&s.result, Ok(by) if by != old_leader))
        .min_by_key(|s| s.done);
    let failures: Vec<&Sample> = samples.iter().filter(|s| s.result.is_err()).collect();
    FailoverRun {
        old_leader: old_leader.to_string(),
        new_leader: first_new.and_then(|s| s.result.clone().ok()),
        first_new_s: first_new.map(|s| s.done.saturating_sub(kill).as_secs_f64()),
        gets: samples.len(),
        failed: failures.len(),
        slow: samples.iter().filter(|s| s.latency() > SLOW).count(),
        failures: failures
            .iter()
            .take(3)
            .map(|s| {
                format!(
                    "sent {:+.2} s: {}",
                    s.sent.as_secs_f64() - kill.as_secs_f64(),
                    s.result.as_ref().err().cloned().unwrap_or_default()
                )
            })
            .collect(),
    }
}

/// Median and maximum (NaN for an empty list).
pub fn median_max(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (f64::NAN, f64::NAN),
        n if n % 2 == 1 => (v[n / 2], v[n - 1]),
        n => ((v[n / 2 - 1] + v[n / 2]) / 2.0, v[n - 1]),
    }
}

/// The failover benchmark's runs and their verdict.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    pub runs: Vec<FailoverRun>,
}

/// Targets: median and max seconds to the first response from the new leader.
pub const FAILOVER_MEDIAN_TARGET_S: f64 = 2.5;
pub const FAILOVER_MAX_TARGET_S: f64 = 4.0;

fn run_line(i: usize, n: usize, r: &FailoverRun) -> String {
    let first = r
        .first_new_s
        .map(|s| format!("{s:.2} s"))
        .unwrap_or_else(|| "never".into());
    let mut line = format!(
        "run {i}/{n}: killed {} → first response from {} after {first}; {} GETs, {} failed, {} slower than 1 s",
        r.old_leader,
        r.new_leader.as_deref().unwrap_or("nobody"),
        r.gets,
        r.failed,
        r.slow
    );
    for f in &r.failures {
        line.push_str(&format!("\n    failed: {f}"));
    }
    line
}

impl FailoverReport {
    fn firsts(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| r.first_new_s.unwrap_or(f64::INFINITY))
            .collect()
    }

    /// Whether every target is met: median and max failover time, and no failed GET.
    pub fn meets_targets(&self) -> bool {
        let (med, max) = median_max(&self.firsts());
        !self.runs.is_empty()
            && med <= FAILOVER_MEDIAN_TARGET_S
            && max <= FAILOVER_MAX_TARGET_S
            && self.runs.iter().all(|r| r.failed == 0)
    }

    /// Per-run lines, as printed while the benchmark runs.
    pub fn run_lines(&self) -> String {
        let n = self.runs.len();
        self.runs
            .iter()
            .enumerate()
            .map(|(i, r)| run_line(i + 1, n, r) + "\n")
            .collect()
    }

    /// The totals and verdicts.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let (med, max) = median_max(&self.firsts());
        let failed: usize = self.runs.iter().map(|r| r.failed).sum();
        let slow: Vec<f64> = self.runs.iter().map(|r| r.slow as f64).collect();
        let gets: usize = self.runs.iter().map(|r| r.gets).sum();
        let (smed, smax) = median_max(&slow);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        out.push_str(&format!(
            "kill → first response from the new leader: median {med:.2} s, max {max:.2} s \
             (targets: median ≤ {FAILOVER_MEDIAN_TARGET_S} s {}, max ≤ {FAILOVER_MAX_TARGET_S} s {})\n",
            verdict(med <= FAILOVER_MEDIAN_TARGET_S),
            verdict(max <= FAILOVER_MAX_TARGET_S),
        ));
        out.push_str(&format!(
            "GETs failed: {failed} of {gets} (target 0: {}); GETs slower than 1 s per run: median {smed:.0}, max {smax:.0}\n",
            verdict(failed == 0)
        ));
        out
    }
}

/// What `harness bench failover` and `harness bench proxy` run on.
#[derive(Debug, Clone)]
pub struct BenchSetup {
    pub nodes: usize,
    pub lease_ttl_s: u64,
    /// Name of the benchmark's own cluster (removed at the end).
    pub name: String,
    pub subnet: Subnet,
    pub image: String,
}

pub(crate) async fn up_with_gateway(
    docker: &Docker,
    s: &BenchSetup,
) -> Result<(Cluster, String), ProxyCheckError> {
    let _ = crate::cluster::down(docker, &s.name).await;
    let mut spec = ClusterSpec::new(&s.name, s.nodes, &s.image);
    spec.subnet = s.subnet;
    spec.lease_ttl_s = s.lease_ttl_s;
    spec.gateway = true;
    spec.gateway_port = 0;
    let c = Cluster::up(docker, spec).await?;
    match c.gateway_url().await {
        Ok(url) => Ok((c, url)),
        Err(e) => {
            let _ = c.down().await;
            Err(e.into())
        }
    }
}

/// Options of the failover benchmark.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub setup: BenchSetup,
    pub runs: usize,
    /// One GET is sent every `interval`.
    pub interval: Duration,
}

/// Brings up a cluster with a gateway; `runs` times: waits for a settled cluster, streams
/// GETs through the gateway, kills the leader, measures, restarts the old leader. The
/// cluster is removed at the end, also on failure.
pub async fn bench_failover(
    docker: &Docker,
    opts: &FailoverOptions,
    mut progress: impl FnMut(&str),
) -> Result<FailoverReport, ProxyCheckError> {
    if opts.setup.nodes < 3 {
        return Err(ProxyCheckError::Check(format!(
            "the failover benchmark needs at least 3 nodes (got {}) to keep a quorum after a kill",
            opts.setup.nodes
        )));
    }
    let (c, gateway) = up_with_gateway(docker, &opts.setup).await?;
    progress(&format!("gateway at {gateway}"));
    let result = failover_runs(&c, &gateway, opts, &mut progress).await;
    if let Err(e) = c.down().await {
        progress(&format!(
            "warning: removing cluster {}: {e}",
            opts.setup.name
        ));
    }
    result
}

async fn failover_runs(
    c: &Cluster,
    gateway: &str,
    opts: &FailoverOptions,
    progress: &mut impl FnMut(&str),
) -> Result<FailoverReport, ProxyCheckError> {
    let http = Http::new();
    let settle = Duration::from_secs(60 + 2 * opts.setup.lease_ttl_s);
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        c.wait_ready(settle).await?;
        let (old, _) = wait_proxy_serves_leader(
            &http,
            c,
            gateway,
            |_| true,
            "the gateway to serve etcd's leader",
            settle,
        )
        .await?;
        let stream = GetStream::start(
            http.clone(),
            format!("{gateway}/api/status"),
            opts.interval,
            Duration::from_secs(15),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.kill(&old).await?;
        let kill = stream.start.elapsed();
        // Until the new leader has served, then one more second of traffic.
        let old_ref = old.as_str();
        let seen = wait_for(
            &format!("a GET through the gateway served by a node other than {old}"),
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let samples = stream.answered();
                async move {
                    samples
                        .iter()
                        .find_map(|s| s.result.as_ref().ok().filter(|by| *by != old_ref).cloned())
                        .ok_or_else(|| {
                            format!("{} GETs answered, none by a new leader", samples.len())
                        })
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let samples = stream.finish().await;
        c.start(&old).await?;
        let run = analyse(&samples, kill, &old);
        progress(&run_line(i + 1, opts.runs, &run));
        runs.push(run);
        if let Err(e) = seen {
            // Recorded as a run that never failed over; the report says so.
            progress(&format!("warning: {e}"));
        }
    }
    Ok(FailoverReport { runs })
}

/// Arguments shared by both benchmarks.
#[derive(clap::Args, Debug)]
pub struct BenchClusterArgs {
    /// Nodes in the benchmark cluster (at least 3).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// TTL in seconds of each node's lease.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Name of the benchmark's own cluster (removed at the end).
    #[arg(long, default_value = "clusterlab-bench-proxy")]
    pub name: String,
    /// Subnet of the benchmark cluster, apart from the default cluster's.
    #[arg(long, default_value = "10.77.101.0/24")]
    pub subnet: Subnet,
    #[command(flatten)]
    pub images: crate::cli::ImagesArgs,
}

impl BenchClusterArgs {
    pub(crate) async fn setup(&self, docker: &Docker) -> anyhow::Result<BenchSetup> {
        let images = crate::images::ensure_images(docker, &self.images.options()).await?;
        Ok(BenchSetup {
            nodes: self.nodes,
            lease_ttl_s: self.lease_ttl,
            name: self.name.clone(),
            subnet: self.subnet,
            image: images.node,
        })
    }
}

/// `harness bench failover`: kill the leader RUNS times under a steady stream of GETs through
/// the gateway; print per run and as median/max the seconds from the kill to the first
/// response from the new leader, the failed GETs and the GETs slower than 1 s. Exits non-zero
/// if a target is missed (median ≤ 2.5 s, max ≤ 4 s, no failed GET).
#[derive(clap::Args, Debug)]
pub struct BenchFailoverArgs {
    /// Number of leader kills.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Milliseconds between GETs of the stream.
    #[arg(long, default_value_t = 25)]
    pub interval_ms: u64,
    #[command(flatten)]
    pub cluster: BenchClusterArgs,
}

/// The machine's load average, printed with the figures: client, gateway and nodes share
/// this machine's cores, so the figures depend on what else runs.
pub(crate) fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(s) => format!(
            "load average {}",
            s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ),
        Err(_) => "load average unknown".into(),
    }
}

/// Runs `harness bench failover` and prints its report.
pub async fn run_failover_cli(a: BenchFailoverArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let opts = FailoverOptions {
        setup: a.cluster.setup(&docker).await?,
        runs: a.runs,
        interval: Duration::from_millis(a.interval_ms.max(1)),
    };
    println!(
        "bench failover: {} leader kills on {} nodes (cluster {}), one GET through the gateway every {} ms; {}",
        opts.runs,
        opts.setup.nodes,
        opts.setup.name,
        a.interval_ms,
        load_average()
    );
    let report = bench_failover(&docker, &opts, |l| println!("{l}")).await?;
    print!("{}", report.summary());
    anyhow::ensure!(report.meets_targets(), "failover benchmark missed a target");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sent_ms: u64, done_ms: u64, r: Result<&str, &str>) -> Sample {
        Sample {
            sent: Duration::from_millis(sent_ms),
            done: Duration::from_millis(done_ms),
            result: r.map(String::from).map_err(String::from),
        }
    }

    #[test]
    fn analyse_finds_the_first_answer_from_another_node() {
        let kill = Duration::from_millis(1000);
        let samples = vec![
            s(900, 910, Ok("node0")),
            s(950, 3100, Ok("node1")), // held across the gap, answered by the new leader
            s(1000, 1010, Ok("node0")),
            s(2000, 2950, Ok("node1")),
            s(2100, 2200, Err("HTTP 503")),
        ];
        let r = analyse(&samples, kill, "node0");
        assert_eq!(r.new_leader.as_deref(), Some("node1"));
        assert!((r.first_new_s.unwrap() - 1.95).abs() < 1e-9, "{r:?}");
        assert_eq!((r.gets, r.failed, r.slow), (5, 1, 1));
        assert!(
            r.failures[0].contains("+1.10 s: HTTP 503"),
            "{:?}",
            r.failures
        );
        let none = analyse(&samples[..1], kill, "node0");
        assert_eq!(none.first_new_s, None);
    }

    #[test]
    fn failover_targets() {
        let run = |t: f64, failed: usize| FailoverRun {
            old_leader: "node0".into(),
            new_leader: Some("node1".into()),
            first_new_s: Some(t),
            gets: 100,
            failed,
            slow: 3,
            failures: vec![],
        };
        let ok = FailoverReport {
            runs: vec![run(1.8, 0), run(2.2, 0), run(3.9, 0)],
        };
        assert!(ok.meets_targets(), "{}", ok.summary());
        assert!(
            ok.summary().contains("median 2.20 s, max 3.90 s"),
            "{}",
            ok.summary()
        );
        let failed = FailoverReport {
            runs: vec![run(1.8, 1)],
        };
        assert!(!failed.meets_targets());
        let slow = FailoverReport {
            runs: vec![run(1.8, 0), run(4.1, 0)],
        };
        assert!(!slow.meets_targets());
        let never = FailoverReport {
            runs: vec![FailoverRun {
                first_new_s: None,
                ..run(0.0, 0)
            }],
        };
        assert!(!never.meets_targets());
    }

    #[test]
    fn status_json_names_the_node() {
        assert_eq!(
            name_in_status(r#"{"name":"node2","ip":"10.77.0.12","role":"leader"}"#).as_deref(),
            Some("node2")
        );
        assert_eq!(name_in_status("<html>"), None);
    }
}
