//! `harness bench proxy`: the gateway's proxy against its peers and against doing nothing,
//! in front of the same leader, measured by the same client (`wrk`) in alternating rounds.
//!
//! Ways to the leader's service measured for every path:
//! - **direct**: the client to the leader's container address;
//! - **gateway**: the gateway's published port on 127.0.0.1, which is what users get;
//! - **gateway at its IP**: the same proxy without Docker's port forwarder in front;
//! - **relay in the gateway**: a byte relay (`proxy --relay-to`) in the gateway's container;
//! - **proxy / relay / nginx / CHP on the host**: clusterlab's proxy (the very binary of the
//!   node image, following the leader through etcd), the byte relay, nginx (1 worker,
//!   keep-alive upstream) and configurable-http-proxy, each started on the host on
//!   127.0.0.1 in front of the leader's container address;
//! - **a second nginx on the host**: another nginx with the same configuration, measured like
//!   the others. It is the run's control: the two nginx differ only by chance, so how far
//!   apart they come out is how large a difference the run cannot tell from noise.
//!
//! The peers are compared **on the host** because that is the one place where all four can
//! run side by side under the same conditions: nginx and configurable-http-proxy are Debian
//! packages that the node image does not carry (the nodes never run them; adding them would
//! grow every node by ~90 MB, and a bench-only image would need a package mirror the
//! containers cannot reach). On the host each of the four has the same network path to the
//! leader (host → bridge → container), the same client on the same loopback, and its CPU is
//! read per process tree. The targets are judged there: clusterlab's proxy ≥ 1.0× nginx's
//! throughput with p99 ≤ nginx's, ≥ 5× configurable-http-proxy, ≥ 0.9× the byte relay.
//! The in-container ways stay for what Docker's port forwarder and the container hop cost.
//!
//! Every figure is the median of the rounds (throughput, p50, p99); CPU per request is the
//! total of the rounds over their requests, for the server (the process tree on the host, or
//! the gateway container), the leader's container and the client (wrk). Against nginx the
//! rounds are also compared one by one ([`Paired`]), so a verdict says whether the run can
//! tell the two apart at all; the second nginx against the first gives the same figures for
//! two servers known to be alike.

use super::{up_with_gateway, BenchError, BenchSetup};
use crate::cluster::Cluster;
use crate::probe::http::{service_url, wait_proxy_serves_leader, Http, SERVICE_PORT};
use crate::wait::wait_for;
use bollard::Docker;
use futures::StreamExt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Port of the byte relay inside the gateway container.
pub const RELAY_PORT: u16 = 8899;
/// Target: clusterlab's proxy throughput against nginx's (and p99 at most nginx's).
pub const NGINX_TARGET: f64 = 1.0;
/// Target: clusterlab's proxy throughput against configurable-http-proxy's.
pub const CHP_TARGET: f64 = 5.0;
/// Target: clusterlab's proxy throughput against the byte relay's at the same place.
pub const RELAY_TARGET: f64 = 0.9;

/// Programs the benchmark runs on the host, and the Debian package of each.
pub const HOST_TOOLS: [(&str, &str); 3] = [
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("configurable-http-proxy", "node-configurable-http-proxy"),
];

/// CPU time used during a round, by whom, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuUse {
    /// The proxy (or relay, nginx, CHP) measured: its process tree or the gateway container.
    pub server_us: Option<f64>,
    pub leader_us: Option<f64>,
    pub client_us: Option<f64>,
}

/// One round of `wrk` on one way.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Round {
    /// Responses with a 2xx or 3xx status.
    pub ok: u64,
    /// Socket errors, timeouts and other statuses.
    pub errors: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu: CpuUse,
}

impl Round {
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Why `wrk`'s output could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable wrk output ({what}): {output}")]
pub struct WrkParseError {
    what: &'static str,
    output: String,
}

/// A latency as wrk prints it (`95.00us`, `1.23ms`, `2.00s`), in milliseconds.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(n * scale)
}

/// Reads the figures of one run of `wrk --latency`.
pub fn parse_wrk(output: &str) -> Result<Round, WrkParseError> {
    let bad = |what| WrkParseError {
        what,
        output: output.chars().take(2000).collect(),
    };
    let mut round = Round::default();
    let mut requests = None;
    let mut non_2xx = 0;
    let (mut p50, mut p99) = (None, None);
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", d] => p50 = wrk_duration_ms(d),
            ["99%", d] => p99 = wrk_duration_ms(d),
            [n, "requests", "in", secs, ..] => {
                requests = n.parse::<u64>().ok();
                round.secs =
                    wrk_duration_ms(secs.trim_end_matches(',')).ok_or(bad("duration"))? / 1000.0;
            }
            ["Socket", "errors:", rest @ ..] => {
                round.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                non_2xx = n.parse().map_err(|_| bad("non-2xx count"))?;
            }
            _ => {}
        }
    }
    let requests = requests.ok_or(bad("no request count"))?;
    round.ok = requests.saturating_sub(non_2xx);
    round.errors += non_2xx;
    round.p50_ms = p50.ok_or(bad("no 50% latency"))?;
    round.p99_ms = p99.ok_or(bad("no 99% latency"))?;
    Ok(round)
}

/// The rounds of one way.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WayResult {
    pub rounds: Vec<Round>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl WayResult {
    fn median_of(&self, f: impl Fn(&Round) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }
    /// Median throughput of the rounds, in requests/s.
    pub fn rps(&self) -> f64 {
        self.median_of(Round::rps)
    }
    pub fn p50_ms(&self) -> f64 {
        self.median_of(|r| r.p50_ms)
    }
    pub fn p99_ms(&self) -> f64 {
        self.median_of(|r| r.p99_ms)
    }
    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.errors).sum()
    }
    fn ok(&self) -> u64 {
        self.rounds.iter().map(|r| r.ok).sum()
    }

    /// CPU microseconds per successful request of one party, as text; unknown if any round
    /// could not read it.
    fn per_request(&self, us: impl Fn(&CpuUse) -> Option<f64>) -> String {
        let total: Option<f64> = self.rounds.iter().map(|r| us(&r.cpu)).sum();
        match total {
            Some(t) if self.ok() > 0 => format!("{:.0}", t / self.ok() as f64),
            _ => "?".into(),
        }
    }

    pub fn line(&self, what: &str) -> String {
        format!(
            "{what:<32} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   CPU µs/request: server {:>3}, leader {:>3}, client {:>3}   ({} rounds, {} requests, {} errors)",
            self.rps(),
            self.p50_ms(),
            self.p99_ms(),
            self.per_request(|c| c.server_us),
            self.per_request(|c| c.leader_us),
            self.per_request(|c| c.client_us),
            self.rounds.len(),
            self.ok(),
            self.errors(),
        )
    }
}

/// The ways to the leader's service that are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Direct,
    Gateway,
    GatewayIp,
    GatewayRelay,
    HostProxy,
    HostRelay,
    Nginx,
    /// A second nginx, configured like the first: the control.
    NginxTwin,
    Chp,
}

impl Way {
    pub const ALL: [Way; 9] = [
        Way::Direct,
        Way::Gateway,
        Way::GatewayIp,
        Way::GatewayRelay,
        Way::HostProxy,
        Way::HostRelay,
        Way::Nginx,
        Way::NginxTwin,
        Way::Chp,
    ];

    fn label(self, leader: &str) -> String {
        match self {
            Way::Direct => format!("direct to {leader}:"),
            Way::Gateway => "through the gateway:".into(),
            Way::GatewayIp => "gateway at its container IP:".into(),
            Way::GatewayRelay => "byte relay in the gateway:".into(),
            Way::HostProxy => "clusterlab proxy on the host:".into(),
            Way::HostRelay => "byte relay on the host:".into(),
            Way::Nginx => "nginx on the host:".into(),
            Way::NginxTwin => "a second nginx (control):".into(),
            Way::Chp => "configurable-http-proxy (host):".into(),
        }
    }

    fn index(self) -> usize {
        Way::ALL.iter().position(|w| *w == self).unwrap_or(0)
    }
}

/// How clusterlab's proxy did against nginx round by round: each round measures every way
/// once, one after the other, so round `i` of the two was run under the same conditions
/// (the same minute of a noisy machine). A median ratio near 1 says little on its own on a
/// machine whose rounds of one way spread by more than the difference; the count of rounds
/// each one won, and how likely that count is if neither were faster (a two-sided sign
/// test), say whether the run can tell the two apart at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paired {
    /// Rounds in which the proxy did better.
    pub better: usize,
    /// Rounds in which it did worse.
    pub worse: usize,
}

/// Below this sign-test probability a paired count is taken as a real difference.
pub const SIGN_TEST_LEVEL: f64 = 0.05;

impl Paired {
    /// Compares round by round; `higher_is_better` for throughput, not for latency. Ties
    /// and rounds missing on either side count for neither.
    fn of(
        proxy: &[Round],
        nginx: &[Round],
        f: impl Fn(&Round) -> f64,
        higher_is_better: bool,
    ) -> Paired {
        let mut p = Paired {
            better: 0,
            worse: 0,
        };
        for (a, b) in proxy.iter().zip(nginx) {
            let (a, b) = (f(a), f(b));
            if a.is_nan() || b.is_nan() || a == b {
                continue;
            }
            if (a > b) == higher_is_better {
                p.better += 1;
            } else {
                p.worse += 1;
            }
        }
        p
    }

    /// The two-sided sign test: the probability of a split at least this uneven if each
    /// round were a coin toss.
    pub fn sign_test(&self) -> f64 {
        let n = self.better + self.worse;
        let k = self.better.min(self.worse);
        // P(X ≤ k) for X ~ Binomial(n, 1/2), summed term by term.
        let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let mut tail = 0.0;
        for i in 0..=k {
            tail += term;
            term *= (n - i) as f64 / (i + 1) as f64;
        }
        (2.0 * tail).min(1.0)
    }

    /// What the rounds say, for the verdict line: e.g. "ahead in 7 of 9 paired rounds,
    /// sign test p 0.18: not told apart from nginx's in this run".
    pub fn text(&self) -> String {
        let n = self.better + self.worse;
        let p = self.sign_test();
        let judged = if n == 0 {
            "no rounds to compare"
        } else if p >= SIGN_TEST_LEVEL {
            "not told apart from nginx's in this run"
        } else if self.better > self.worse {
            "better than nginx's in this run"
        } else {
            "worse than nginx's in this run"
        };
        format!(
            "ahead in {} of {n} paired rounds, sign test p {p:.2}: {judged}",
            self.better
        )
    }
}

/// The figures of one path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathReport {
    pub path: String,
    /// Indexed like [`Way::ALL`].
    pub ways: Vec<WayResult>,
}

/// The comparisons the targets are about, all on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    pub vs_nginx: f64,
    pub p99_vs_nginx: f64,
    pub vs_chp: f64,
    pub vs_relay: f64,
}

impl PathReport {
    fn new(path: &str) -> PathReport {
        PathReport {
            path: path.to_string(),
            ways: vec![WayResult::default(); Way::ALL.len()],
        }
    }

    pub fn get(&self, way: Way) -> &WayResult {
        &self.ways[way.index()]
    }

    pub fn ratios(&self) -> Ratios {
        let proxy = self.get(Way::HostProxy);
        let nginx = self.get(Way::Nginx);
        Ratios {
            vs_nginx: proxy.rps() / nginx.rps(),
            p99_vs_nginx: proxy.p99_ms() / nginx.p99_ms(),
            vs_chp: proxy.rps() / self.get(Way::Chp).rps(),
            vs_relay: proxy.rps() / self.get(Way::HostRelay).rps(),
        }
    }

    /// Throughput and p99 of clusterlab's proxy against nginx's, round by round.
    pub fn paired(&self) -> (Paired, Paired) {
        self.paired_with_nginx(Way::HostProxy)
    }

    /// Throughput and p99 of `way` against nginx's, round by round.
    fn paired_with_nginx(&self, way: Way) -> (Paired, Paired) {
        let a = &self.get(way).rounds;
        let nginx = &self.get(Way::Nginx).rounds;
        (
            Paired::of(a, nginx, Round::rps, true),
            Paired::of(a, nginx, |r| r.p99_ms, false),
        )
    }

    /// The control: the second nginx against the first, as throughput and p99 ratios, with
    /// their paired rounds. Two servers alike come out this far apart by chance alone.
    pub fn control(&self) -> (f64, f64, Paired, Paired) {
        let twin = self.get(Way::NginxTwin);
        let nginx = self.get(Way::Nginx);
        let (rps, p99) = self.paired_with_nginx(Way::NginxTwin);
        (
            twin.rps() / nginx.rps(),
            twin.p99_ms() / nginx.p99_ms(),
            rps,
            p99,
        )
    }

    pub fn meets_target(&self) -> bool {
        let r = self.ratios();
        r.vs_nginx >= NGINX_TARGET
            && r.p99_vs_nginx <= 1.0
            && r.vs_chp >= CHP_TARGET
            && r.vs_relay >= RELAY_TARGET
            && self.get(Way::HostProxy).errors() == 0
            && self.get(Way::Gateway).errors() == 0
    }

    pub fn summary(&self, leader: &str) -> String {
        let mut out = format!("GET {}\n", self.path);
        for way in Way::ALL {
            out.push_str(&format!("  {}\n", self.get(way).line(&way.label(leader))));
        }
        let r = self.ratios();
        let (rps, p99) = self.paired();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        out.push_str(&format!(
            "  on the host, clusterlab's proxy: {:.2}× nginx's throughput (target ≥ {NGINX_TARGET}×: {}; {}), \
             p99 {:.2}× nginx's (target ≤ 1×: {}; {}), {:.2}× configurable-http-proxy (target ≥ {CHP_TARGET}×: {}), \
             {:.2}× the byte relay (target ≥ {RELAY_TARGET}×: {}); nginx against the relay {:.2}×\n",
            r.vs_nginx,
            verdict(r.vs_nginx >= NGINX_TARGET),
            rps.text(),
            r.p99_vs_nginx,
            verdict(r.p99_vs_nginx <= 1.0),
            p99.text(),
            r.vs_chp,
            verdict(r.vs_chp >= CHP_TARGET),
            r.vs_relay,
            verdict(r.vs_relay >= RELAY_TARGET),
            self.get(Way::Nginx).rps() / self.get(Way::HostRelay).rps(),
        ));
        let (twin_rps, twin_p99, twin_rps_paired, twin_p99_paired) = self.control();
        out.push_str(&format!(
            "  control, two identical nginx: the second {:.2}× the first's throughput ({}), p99 {:.2}× ({}); \
             differences this size are this run's noise\n",
            twin_rps,
            twin_rps_paired.text(),
            twin_p99,
            twin_p99_paired.text(),
        ));
        let direct = self.get(Way::Direct).rps();
        out.push_str(&format!(
            "  in the gateway container: the proxy {:.2}× its byte relay; through the published port {:.2}× direct, \
             at the container IP {:.2}× direct\n",
            self.get(Way::GatewayIp).rps() / self.get(Way::GatewayRelay).rps(),
            self.get(Way::Gateway).rps() / direct,
            self.get(Way::GatewayIp).rps() / direct,
        ));
        out
    }
}

/// The proxy benchmark's report: one [`PathReport`] per path.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyReport {
    pub leader: String,
    pub concurrency: usize,
    pub paths: Vec<PathReport>,
}

impl ProxyReport {
    pub fn meets_target(&self) -> bool {
        !self.paths.is_empty() && self.paths.iter().all(PathReport::meets_target)
    }

    pub fn summary(&self) -> String {
        self.paths.iter().map(|p| p.summary(&self.leader)).collect()
    }
}

/// Options of the proxy benchmark.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub setup: BenchSetup,
    /// What is requested, e.g. `/api/status` and `/`; each is measured on every way.
    pub paths: Vec<String>,
    /// wrk's connections (one thread).
    pub concurrency: usize,
    /// Length of each round, whole seconds (wrk's unit); `rounds` per way and path.
    pub round_s: u64,
    pub rounds: usize,
    /// The `proxy` binary of the node image, run on the host.
    pub proxy_bin: PathBuf,
}

/// Fails with the package to install when a program the benchmark runs is missing.
pub fn check_host_tools() -> Result<(), BenchError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in HOST_TOOLS {
        if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            return Err(BenchError::MissingTool { tool, package });
        }
    }
    Ok(())
}

/// Brings up a cluster with a gateway and measures every path on every [`Way`], alternating
/// rounds. The cluster and the host's servers are removed at the end.
pub async fn bench_proxy(
    docker: &Docker,
    opts: &ProxyOptions,
    mut progress: impl FnMut(&str),
) -> Result<ProxyReport, BenchError> {
    check_host_tools()?;
    let (c, gateway) = up_with_gateway(docker, &opts.setup).await?;
    progress(&format!("gateway at {gateway}"));
    let result = proxy_rounds(docker, &c, &gateway, opts, &mut progress).await;
    if let Err(e) = c.down().await {
        progress(&format!(
            "warning: removing cluster {}: {e}",
            opts.setup.name
        ));
    }
    result
}

/// Total CPU time a container has used, in microseconds (`None` if Docker does not say).
async fn container_cpu_us(docker: &Docker, container: &str) -> Option<f64> {
    let opts = bollard::query_parameters::StatsOptionsBuilder::new()
        .stream(false)
        .one_shot(true)
        .build();
    let stats = docker.stats(container, Some(opts)).next().await?.ok()?;
    let ns = stats.cpu_stats?.cpu_usage?.total_usage?;
    Some(ns as f64 / 1000.0)
}

/// The kernel's USER_HZ is 100 on every Linux this runs on.
const US_PER_TICK: f64 = 10_000.0;

/// `(ppid, utime + stime, cutime + cstime)` in ticks from a `/proc/<pid>/stat` text.
fn parse_stat(stat: &str) -> Option<(u32, f64, f64)> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<f64>().ok();
    Some((
        f.get(1)?.parse().ok()?,
        num(11)? + num(12)?,
        num(13)? + num(14)?,
    ))
}

/// CPU time of the children this process has waited for (wrk), in microseconds.
fn waited_children_cpu_us() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(parse_stat(&stat)?.2 * US_PER_TICK)
}

/// CPU time of process `root` and all its descendants, in microseconds.
fn tree_cpu_us(root: u32) -> Option<f64> {
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process may end between the listing and the read: skip it.
        if let Some((ppid, ticks, _)) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            procs.push((pid, ppid, ticks));
        }
    }
    let mut tree = vec![root];
    let mut total = None;
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        for (pid, ppid, ticks) in &procs {
            if *pid == p {
                total = Some(total.unwrap_or(0.0) + ticks);
            }
            if *ppid == p && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    total.map(|t| t * US_PER_TICK)
}

/// Whose CPU counts as the server's for a way.
#[derive(Debug, Clone, Copy)]
enum ServerCpu<'a> {
    None,
    Container(&'a str),
    Process(u32),
}

async fn cpu_now(docker: &Docker, server: ServerCpu<'_>, leader: &str) -> CpuUse {
    let server_us = async {
        match server {
            ServerCpu::None => Some(0.0),
            ServerCpu::Container(c) => container_cpu_us(docker, c).await,
            ServerCpu::Process(pid) => tree_cpu_us(pid),
        }
    };
    let (s, l) = tokio::join!(server_us, container_cpu_us(docker, leader));
    CpuUse {
        server_us: s,
        leader_us: l,
        client_us: waited_children_cpu_us(),
    }
}

fn cpu_between(a: CpuUse, b: CpuUse) -> CpuUse {
    let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    CpuUse {
        server_us: d(a.server_us, b.server_us),
        leader_us: d(a.leader_us, b.leader_us),
        client_us: d(a.client_us, b.client_us),
    }
}

/// One run of wrk (1 thread) against `url`.
async fn wrk(url: &str, connections: usize, secs: u64) -> Result<Round, BenchError> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-c{}", connections.max(1)))
        .arg(format!("-d{}s", secs.max(1)))
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| BenchError::Tool {
            what: format!("running wrk against {url}"),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::Tool {
            what: format!("wrk against {url} ({})", out.status),
            detail: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    parse_wrk(&text).map_err(|e| BenchError::Tool {
        what: format!("wrk against {url}"),
        detail: e.to_string(),
    })
}

/// A server the benchmark started on the host; stopped (SIGTERM, then SIGKILL) on drop.
struct HostServer {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl HostServer {
    fn start(
        name: &'static str,
        mut cmd: tokio::process::Command,
        dir: &Path,
    ) -> Result<HostServer, BenchError> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| BenchError::Tool {
            what: format!("creating {}", log.display()),
            detail: e.to_string(),
        })?;
        let err = file.try_clone().map_err(|e| BenchError::Tool {
            what: format!("opening {}", log.display()),
            detail: e.to_string(),
        })?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Tool {
                what: format!("starting {name}"),
                detail: e.to_string(),
            })?;
        Ok(HostServer { name, child, log })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The end of its log, for errors.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits until `url` answers 200 through it.
    async fn wait_serving(&mut self, http: &Http, url: &str) -> Result<(), BenchError> {
        let name = self.name;
        let r = wait_for(
            &format!("{name} on the host to answer {url}"),
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async {
                match http.get(url, Duration::from_secs(2)).await {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        if r.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Tool {
                    what: format!("{name} exited ({status})"),
                    detail: self.log_tail(),
                });
            }
        }
        r.map(|_| ()).map_err(BenchError::from)
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        // A TERM lets nginx's master take its worker down; kill_on_drop then makes sure.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A free port on 127.0.0.1 (free a moment ago).
fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Tool {
            what: "finding a free port on 127.0.0.1".into(),
            detail: e.to_string(),
        })
}

/// nginx as a reverse proxy in front of `leader`: one worker, keep-alive to the upstream,
/// the same forwarding headers as clusterlab's proxy, no access log.
pub fn nginx_config(dir: &Path, port: u16, leader: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream leader {{ server {leader}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://leader;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"
    )
}

/// The four servers on the host and their URLs' bases.
struct HostServers {
    proxy: (HostServer, String),
    relay: (HostServer, String),
    nginx: (HostServer, String),
    nginx_twin: (HostServer, String),
    chp: (HostServer, String),
}

async fn start_host_servers(
    c: &Cluster,
    http: &Http,
    opts: &ProxyOptions,
    leader_ip: Ipv4Addr,
    dir: &Path,
) -> Result<HostServers, BenchError> {
    let leader = format!("{leader_ip}:{SERVICE_PORT}");
    let base = |port: u16| format!("http://127.0.0.1:{port}");

    let port = free_port()?;
    let mut cmd = tokio::process::Command::new(&opts.proxy_bin);
    cmd.arg("--endpoints")
        .arg(c.etcd_endpoints().join(","))
        // Required since leader records are trusted only for the planned peers.
        .arg("--peers")
        .arg(c.spec.peers())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn");
    let proxy = (HostServer::start("proxy", cmd, dir)?, base(port));

    let port = free_port()?;
    let mut cmd = tokio::process::Command::new(&opts.proxy_bin);
    cmd.arg("--relay-to")
        .arg(&leader)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn");
    let relay = (HostServer::start("relay", cmd, dir)?, base(port));

    let nginx = start_nginx("nginx", dir, &leader)?;
    let nginx_twin = start_nginx("nginx-control", dir, &leader)?;

    let port = free_port()?;
    let api_port = free_port()?;
    let mut cmd = tokio::process::Command::new("configurable-http-proxy");
    cmd.args([
        "--ip",
        "127.0.0.1",
        "--api-ip",
        "127.0.0.1",
        "--log-level",
        "warn",
    ])
    .arg("--port")
    .arg(port.to_string())
    .arg("--api-port")
    .arg(api_port.to_string())
    .arg("--default-target")
    .arg(format!("http://{leader}"))
    .env("NODE_PATH", "/usr/share/nodejs")
    .env("CONFIGPROXY_AUTH_TOKEN", "clusterlab-bench");
    let chp = (
        HostServer::start("configurable-http-proxy", cmd, dir)?,
        base(port),
    );

    let mut s = HostServers {
        proxy,
        relay,
        nginx,
        nginx_twin,
        chp,
    };
    for (server, url) in [
        &mut s.proxy,
        &mut s.relay,
        &mut s.nginx,
        &mut s.nginx_twin,
        &mut s.chp,
    ] {
        server
            .wait_serving(http, &format!("{url}/api/status"))
            .await?;
    }
    Ok(s)
}

/// Starts an nginx in front of `leader` on a free port, with its own directory `dir/name`
/// (configuration, pid file, temporary files) and log `dir/name.log`.
fn start_nginx(
    name: &'static str,
    dir: &Path,
    leader: &str,
) -> Result<(HostServer, String), BenchError> {
    let port = free_port()?;
    let own = dir.join(name);
    let conf = own.join("nginx.conf");
    std::fs::create_dir_all(&own)
        .and_then(|()| std::fs::write(&conf, nginx_config(&own, port, leader)))
        .map_err(|e| BenchError::Tool {
            what: format!("writing {}", conf.display()),
            detail: e.to_string(),
        })?;
    let mut cmd = tokio::process::Command::new("nginx");
    cmd.arg("-p")
        .arg(&own)
        .arg("-e")
        .arg(own.join("nginx-error.log"));
    cmd.arg("-c").arg(&conf);
    Ok((
        HostServer::start(name, cmd, dir)?,
        format!("http://127.0.0.1:{port}"),
    ))
}

/// Starts the byte relay in the gateway container, to the leader's service, and waits until
/// it answers.
async fn start_gateway_relay(
    c: &Cluster,
    http: &Http,
    leader_ip: Ipv4Addr,
    gateway_ip: Ipv4Addr,
) -> Result<(), BenchError> {
    c.spawn_in_gateway(
        &format!(
            "/usr/local/bin/proxy --relay-to {leader_ip}:{SERVICE_PORT} --listen 0.0.0.0:{RELAY_PORT}"
        ),
        "/tmp/relay.log",
    )
    .await?;
    let url = format!("http://{gateway_ip}:{RELAY_PORT}/api/status");
    wait_for(
        "the byte relay to answer",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            match http.get(&url, Duration::from_secs(1)).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    Ok(())
}

async fn proxy_rounds(
    docker: &Docker,
    c: &Cluster,
    gateway: &str,
    opts: &ProxyOptions,
    progress: &mut impl FnMut(&str),
) -> Result<ProxyReport, BenchError> {
    let http = Http::new();
    let (leader, _) = wait_proxy_serves_leader(
        &http,
        c,
        gateway,
        |_| true,
        "the gateway to serve etcd's leader",
        Duration::from_secs(60),
    )
    .await?;
    let leader_ip = c.node_ip(&leader)?;
    let gateway_ip = c.spec.subnet.host(crate::names::GATEWAY_OFFSET);
    start_gateway_relay(c, &http, leader_ip, gateway_ip).await?;
    let dir = tempfile::Builder::new()
        .prefix("clusterlab-bench-proxy-")
        .tempdir()
        .map_err(|e| BenchError::Tool {
            what: "creating a temporary directory".into(),
            detail: e.to_string(),
        })?;
    let host = start_host_servers(c, &http, opts, leader_ip, dir.path()).await?;
    progress(&format!(
        "on the host: proxy {}, relay {}, nginx {} and {}, configurable-http-proxy {}",
        host.proxy.1, host.relay.1, host.nginx.1, host.nginx_twin.1, host.chp.1
    ));
    let gateway_container = c.names.gateway();
    let leader_container = c.container_name(&leader)?;
    let target = |way: Way, path: &str| -> (String, ServerCpu<'_>) {
        let host_pid = |s: &(HostServer, String)| {
            (
                format!("{}{path}", s.1),
                s.0.pid().map_or(ServerCpu::None, ServerCpu::Process),
            )
        };
        match way {
            Way::Direct => (service_url(leader_ip, path), ServerCpu::None),
            Way::Gateway => (
                format!("{gateway}{path}"),
                ServerCpu::Container(&gateway_container),
            ),
            Way::GatewayIp => (
                service_url(gateway_ip, path),
                ServerCpu::Container(&gateway_container),
            ),
            Way::GatewayRelay => (
                format!("http://{gateway_ip}:{RELAY_PORT}{path}"),
                ServerCpu::Container(&gateway_container),
            ),
            Way::HostProxy => host_pid(&host.proxy),
            Way::HostRelay => host_pid(&host.relay),
            Way::Nginx => host_pid(&host.nginx),
            Way::NginxTwin => host_pid(&host.nginx_twin),
            Way::Chp => host_pid(&host.chp),
        }
    };
    let mut reports = Vec::new();
    for path in &opts.paths {
        // Warm every way (connections, caches, node's JIT) before measuring.
        for way in Way::ALL {
            wrk(&target(way, path).0, opts.concurrency, 1).await?;
        }
        let mut report = PathReport::new(path);
        let rounds = opts.rounds.max(1);
        for i in 0..rounds {
            let mut line = format!("GET {path} round {}/{rounds}:", i + 1);
            for way in Way::ALL {
                let (url, server) = target(way, path);
                let before = cpu_now(docker, server, &leader_container).await;
                let mut r = wrk(&url, opts.concurrency, opts.round_s).await?;
                let after = cpu_now(docker, server, &leader_container).await;
                r.cpu = cpu_between(before, after);
                line.push_str(&format!(" {:?} {:.0}", way, r.rps()));
                report.ways[way.index()].rounds.push(r);
            }
            progress(&line);
        }
        reports.push(report);
    }
    drop(host);
    let still = c.etcd_leader().await?;
    if still.as_deref() != Some(leader.as_str()) {
        return Err(BenchError::LeaderChanged {
            from: leader,
            to: still,
        });
    }
    Ok(ProxyReport {
        leader,
        concurrency: opts.concurrency,
        paths: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:8080/api/status
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   350.12us  300.00us   8.00ms   95.00%
    Req/Sec    11.90k   500.00    12.50k    70.00%
  Latency Distribution
     50%  281.00us
     75%  350.00us
     90%  500.00us
     99%    2.31ms
  35701 requests in 3.00s, 5.11MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 1
Requests/sec:  11900.33
Transfer/sec:      1.70MB
";

    #[test]
    fn wrk_output_is_read() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.ok, 35700);
        assert_eq!(r.errors, 4);
        assert!((r.secs - 3.0).abs() < 1e-9);
        assert!((r.p50_ms - 0.281).abs() < 1e-9);
        assert!((r.p99_ms - 2.31).abs() < 1e-9);
        assert!((r.rps() - 11900.0).abs() < 1e-6);
        let e = parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").unwrap_err();
        assert!(e.to_string().contains("no request count"), "{e}");
    }

    fn way(rps: &[f64], p99: f64) -> WayResult {
        WayResult {
            rounds: rps
                .iter()
                .map(|&r| Round {
                    ok: r as u64,
                    errors: 0,
                    secs: 1.0,
                    p50_ms: 0.3,
                    p99_ms: p99,
                    cpu: CpuUse {
                        server_us: Some(r * 40.0),
                        leader_us: Some(r * 20.0),
                        client_us: None,
                    },
                })
                .collect(),
        }
    }

    fn report(proxy: &[f64], proxy_p99: f64) -> PathReport {
        let mut p = PathReport::new("/api/status");
        for (w, r) in [
            (Way::Direct, way(&[20000.0, 21000.0, 19000.0], 1.0)),
            (Way::Gateway, way(&[6000.0; 3], 2.0)),
            (Way::GatewayIp, way(&[9000.0; 3], 2.0)),
            (Way::GatewayRelay, way(&[10000.0; 3], 2.0)),
            (Way::HostProxy, way(proxy, proxy_p99)),
            (Way::HostRelay, way(&[13000.0; 3], 1.5)),
            (Way::Nginx, way(&[12000.0; 3], 2.0)),
            (Way::NginxTwin, way(&[12100.0, 11800.0, 12300.0], 2.2)),
            (Way::Chp, way(&[1500.0; 3], 9.0)),
        ] {
            p.ways[w.index()] = r;
        }
        p
    }

    #[test]
    fn medians_ratios_and_targets() {
        // Medians: 12500 of the three; one slow round does not decide.
        let p = report(&[12500.0, 5000.0, 12600.0], 1.9);
        assert_eq!(p.get(Way::HostProxy).rps(), 12500.0);
        let r = p.ratios();
        assert!((r.vs_nginx - 12500.0 / 12000.0).abs() < 1e-9);
        assert!((r.vs_relay - 12500.0 / 13000.0).abs() < 1e-9);
        assert!(p.meets_target(), "{}", p.summary("node0"));
        let s = p.summary("node0");
        assert!(
            s.contains("1.04× nginx's throughput (target ≥ 1×: met; ahead in 2 of 3 paired rounds"),
            "{s}"
        );
        assert!(s.contains("8.33× configurable-http-proxy"), "{s}");
        // The control: the second nginx against the first, whatever the proxy did.
        assert!(
            s.contains(
                "control, two identical nginx: the second 1.01× the first's throughput \
                 (ahead in 2 of 3 paired rounds, sign test p 1.00: not told apart from nginx's in this run), \
                 p99 1.10× (ahead in 0 of 3 paired rounds, sign test p 0.25"
            ),
            "{s}"
        );
        assert!(s.contains("server  40, leader  20, client   ?"), "{s}");

        // Slower than nginx, or a worse p99, misses.
        let slow = report(&[11000.0; 3], 1.9);
        assert!(!slow.meets_target());
        assert!(slow
            .summary("node0")
            .contains("(target ≥ 1×: MISSED; ahead in 0 of 3"));
        let tail = report(&[12500.0; 3], 2.5);
        assert!(!tail.meets_target());
        assert!(tail
            .summary("node0")
            .contains("(target ≤ 1×: MISSED; ahead in 0 of 3"));

        // Errors through the proxy miss whatever the speed.
        let mut errs = report(&[12500.0; 3], 1.9);
        errs.ways[Way::HostProxy.index()].rounds[0].errors = 1;
        assert!(!errs.meets_target());
        let rep = ProxyReport {
            leader: "node0".into(),
            concurrency: 4,
            paths: vec![p, errs],
        };
        assert!(!rep.meets_target());
    }

    #[test]
    fn rounds_are_paired_and_sign_tested() {
        // Throughput 2 rounds ahead, 1 behind; p99 lower in all three. Three rounds can
        // never tell two ways apart (3 of 3 happens one time in four by chance).
        let p = report(&[12500.0, 5000.0, 12600.0], 1.9);
        let (rps, p99) = p.paired();
        assert_eq!(
            rps,
            Paired {
                better: 2,
                worse: 1
            }
        );
        assert_eq!(
            p99,
            Paired {
                better: 3,
                worse: 0
            }
        );
        assert!((p99.sign_test() - 0.25).abs() < 1e-12);
        let s = p.summary("node0");
        assert!(
            s.contains("ahead in 3 of 3 paired rounds, sign test p 0.25: not told apart"),
            "{s}"
        );
        // Ties and missing rounds count for neither.
        let mut tied = report(&[12000.0, 12000.0, 13000.0], 2.0);
        tied.ways[Way::Nginx.index()].rounds.pop();
        assert_eq!(
            tied.paired(),
            (
                Paired {
                    better: 0,
                    worse: 0
                },
                Paired {
                    better: 0,
                    worse: 0
                }
            )
        );
        assert_eq!(tied.paired().0.sign_test(), 1.0);
        assert!(tied.paired().0.text().contains("no rounds to compare"));

        // Exact binomial tails: 10 of 15 is chance (p = 2 × 4944 / 2^15), 8 of 9 is not,
        // in either direction.
        let p = |better, worse| Paired { better, worse };
        assert!((p(10, 5).sign_test() - 2.0 * 4944.0 / 32768.0).abs() < 1e-12);
        assert!((p(8, 1).sign_test() - 20.0 / 512.0).abs() < 1e-12);
        assert_eq!(p(8, 1).sign_test(), p(1, 8).sign_test());
        assert!(p(8, 1).text().ends_with("better than nginx's in this run"));
        assert!(p(1, 8).text().ends_with("worse than nginx's in this run"));
        assert!(p(5, 4)
            .text()
            .ends_with("not told apart from nginx's in this run"));
        assert_eq!(p(0, 0).sign_test(), 1.0);
    }

    #[test]
    fn proc_stat_is_read() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((1, 300.0, 10.0)));
        let me = std::process::id();
        assert!(tree_cpu_us(me).is_some());
        assert!(waited_children_cpu_us().is_some());
    }

    #[test]
    fn nginx_config_names_the_leader_and_keeps_connections() {
        let c = nginx_config(Path::new("/tmp/x"), 8123, "10.77.0.10:8888");
        assert!(c.contains("server 10.77.0.10:8888; keepalive 32;"), "{c}");
        assert!(c.contains("listen 127.0.0.1:8123;"), "{c}");
        assert!(c.contains("worker_processes 1;"), "{c}");
        assert!(c.contains("proxy_set_header Connection \"\";"), "{c}");
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(wrk_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_duration_ms("1.5ms"), Some(1.5));
        assert_eq!(wrk_duration_ms("1m"), Some(60_000.0));
        assert_eq!(wrk_duration_ms("3x"), None);
    }
}
