//! `harness bench proxy`: what the gateway costs, against straight to the leader, with the
//! same client in the same run.
//!
//! For each requested path it measures four ways to the leader's service, in alternating
//! rounds so that drift in the machine's load hits all alike:
//! - **direct**: the client to the leader's container address;
//! - **gateway**: the gateway's published port on 127.0.0.1, which is what users get (the
//!   issue's target: at least 0.9× direct);
//! - **gateway at its IP**: the same proxy without Docker's port forwarder in front;
//! - **relay at the gateway**: a byte relay (`proxy --relay-to`) in the gateway's container,
//!   which copies bytes and does nothing else. No proxy at that place can beat it, so it
//!   tells the cost of the extra network hop apart from the proxy's own work.
//!
//! Besides requests/s and p50/p99 latency, each round reads the CPU time that the gateway
//! and leader containers and the client (this process) used, per request served: on a
//! small machine where all of them share the cores, that is what sets the throughput.

use super::{up_with_gateway, BenchError, BenchSetup};
use crate::cluster::Cluster;
use crate::oracle::percentile;
use crate::probe::http::{service_url, wait_proxy_serves_leader, Http, SERVICE_PORT};
use crate::wait::wait_for;
use bollard::Docker;
use futures::StreamExt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Target: throughput through the gateway at least this share of direct.
pub const PROXY_RATIO_TARGET: f64 = 0.9;
/// Port of the byte relay inside the gateway container.
pub const RELAY_PORT: u16 = 8899;

/// Throughput and latency of one or more load rounds on one way to the leader.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub errors: usize,
    pub secs: f64,
    /// Latencies of successful requests, sorted, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// CPU time used while the rounds ran, in microseconds, where it could be read.
    pub cpu: CpuUse,
}

/// CPU time used during a measurement, by whom, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuUse {
    pub gateway_us: Option<f64>,
    pub leader_us: Option<f64>,
    pub client_us: Option<f64>,
}

impl CpuUse {
    /// Adds another reading; a party unread in either stays unknown.
    fn add(&mut self, o: CpuUse) {
        let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        self.gateway_us = sum(self.gateway_us, o.gateway_us);
        self.leader_us = sum(self.leader_us, o.leader_us);
        self.client_us = sum(self.client_us, o.client_us);
    }
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// Adds another round's numbers.
    pub fn merge(&mut self, other: LoadResult) {
        if *self == LoadResult::default() {
            *self = other;
            return;
        }
        self.ok += other.ok;
        self.errors += other.errors;
        self.secs += other.secs;
        self.latencies_ms.extend(other.latencies_ms);
        self.latencies_ms.sort_by(f64::total_cmp);
        self.cpu.add(other.cpu);
    }

    /// CPU microseconds per successful request of one party, as text.
    fn per_request(&self, us: Option<f64>) -> String {
        match us {
            Some(us) if self.ok > 0 => format!("{:.0}", us / self.ok as f64),
            _ => "?".into(),
        }
    }

    pub fn line(&self, what: &str) -> String {
        format!(
            "{what:<30} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   CPU µs/request: gateway {:>3}, leader {:>3}, client {:>3}   ({} requests, {} errors, {:.1} s)",
            self.rps(),
            percentile(&self.latencies_ms, 50.0),
            percentile(&self.latencies_ms, 99.0),
            self.per_request(self.cpu.gateway_us),
            self.per_request(self.cpu.leader_us),
            self.per_request(self.cpu.client_us),
            self.ok,
            self.errors,
            self.secs
        )
    }
}

/// `concurrency` closed-loop clients GET `url` for `duration`.
pub async fn load(http: &Http, url: &str, concurrency: usize, duration: Duration) -> LoadResult {
    let start = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let (http, url) = (http.clone(), url.to_string());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while start.elapsed() < duration {
                let t = Instant::now();
                match http.get(&url, Duration::from_secs(5)).await {
                    Ok(r) if r.status == 200 => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        })
    });
    let mut result = LoadResult::default();
    for (lat, errors) in futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        result.ok += lat.len();
        result.errors += errors;
        result.latencies_ms.extend(lat);
    }
    result.secs = start.elapsed().as_secs_f64();
    result.latencies_ms.sort_by(f64::total_cmp);
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

/// CPU time this process has used, in microseconds (Linux only).
fn own_cpu_us() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some(ticks * 10_000.0)
}

/// A reading of everyone's CPU counters.
async fn cpu_now(docker: &Docker, gateway: &str, leader: &str) -> CpuUse {
    let (g, l) = tokio::join!(
        container_cpu_us(docker, gateway),
        container_cpu_us(docker, leader)
    );
    CpuUse {
        gateway_us: g,
        leader_us: l,
        client_us: own_cpu_us(),
    }
}

fn cpu_between(a: CpuUse, b: CpuUse) -> CpuUse {
    let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    CpuUse {
        gateway_us: d(a.gateway_us, b.gateway_us),
        leader_us: d(a.leader_us, b.leader_us),
        client_us: d(a.client_us, b.client_us),
    }
}

/// The four ways to the leader's service that are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Direct,
    Gateway,
    GatewayIp,
    Relay,
}

impl Way {
    pub const ALL: [Way; 4] = [Way::Direct, Way::Gateway, Way::GatewayIp, Way::Relay];

    fn label(self, leader: &str) -> String {
        match self {
            Way::Direct => format!("direct to {leader}:"),
            Way::Gateway => "through the gateway:".into(),
            Way::GatewayIp => "gateway at its container IP:".into(),
            Way::Relay => "byte relay at the gateway:".into(),
        }
    }
}

/// The figures of one path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathReport {
    pub path: String,
    pub direct: LoadResult,
    /// Through the gateway's published port on 127.0.0.1 (what users get; the target).
    pub gateway: LoadResult,
    /// Through the gateway at its container address: no Docker port forwarder in front.
    pub gateway_ip: LoadResult,
    /// Through the byte relay in the gateway's container: the extra hop and nothing else.
    pub relay: LoadResult,
}

impl PathReport {
    fn new(path: &str) -> PathReport {
        PathReport {
            path: path.to_string(),
            direct: LoadResult::default(),
            gateway: LoadResult::default(),
            gateway_ip: LoadResult::default(),
            relay: LoadResult::default(),
        }
    }

    fn get_mut(&mut self, way: Way) -> &mut LoadResult {
        match way {
            Way::Direct => &mut self.direct,
            Way::Gateway => &mut self.gateway,
            Way::GatewayIp => &mut self.gateway_ip,
            Way::Relay => &mut self.relay,
        }
    }

    /// Throughput through the gateway as a share of direct: the figure.
    pub fn ratio(&self) -> f64 {
        self.gateway.rps() / self.direct.rps()
    }

    pub fn meets_target(&self) -> bool {
        self.ratio() >= PROXY_RATIO_TARGET && self.gateway.errors == 0
    }

    pub fn summary(&self, leader: &str) -> String {
        let mut out = format!("GET {}\n", self.path);
        for way in Way::ALL {
            let r = match way {
                Way::Direct => &self.direct,
                Way::Gateway => &self.gateway,
                Way::GatewayIp => &self.gateway_ip,
                Way::Relay => &self.relay,
            };
            out.push_str(&format!("  {}\n", r.line(&way.label(leader))));
        }
        let d = self.direct.rps();
        out.push_str(&format!(
            "  through the gateway / direct: {:.2}× (target ≥ {PROXY_RATIO_TARGET}×: {}); \
             without Docker's port forwarder {:.2}×; a byte relay at the same place {:.2}×; \
             the proxy against that relay {:.2}×\n",
            self.ratio(),
            if self.meets_target() { "met" } else { "MISSED" },
            self.gateway_ip.rps() / d,
            self.relay.rps() / d,
            self.gateway_ip.rps() / self.relay.rps(),
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
    pub concurrency: usize,
    /// Length of each round; there are `rounds` rounds per way and path, alternating.
    pub round: Duration,
    pub rounds: usize,
}

/// Brings up a cluster with a gateway and measures every path on every [`Way`], alternating
/// rounds. The cluster is removed at the end.
pub async fn bench_proxy(
    docker: &Docker,
    opts: &ProxyOptions,
    mut progress: impl FnMut(&str),
) -> Result<ProxyReport, BenchError> {
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

/// Starts the byte relay in the gateway container, to the leader's service, and waits until
/// it answers.
async fn start_relay(
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
    start_relay(c, &http, leader_ip, gateway_ip).await?;
    let gateway_container = c.names.gateway();
    let leader_container = c.container_name(&leader)?;
    let url = |way: Way, path: &str| match way {
        Way::Direct => service_url(leader_ip, path),
        Way::Gateway => format!("{gateway}{path}"),
        Way::GatewayIp => service_url(gateway_ip, path),
        Way::Relay => format!("http://{gateway_ip}:{RELAY_PORT}{path}"),
    };
    let mut reports = Vec::new();
    for path in &opts.paths {
        // Warm every way (connections, caches) before measuring.
        for way in Way::ALL {
            load(
                &http,
                &url(way, path),
                opts.concurrency,
                Duration::from_millis(500),
            )
            .await;
        }
        let mut report = PathReport::new(path);
        for i in 0..opts.rounds.max(1) {
            let mut line = format!("GET {path} round {}/{}:", i + 1, opts.rounds.max(1));
            for way in Way::ALL {
                let before = cpu_now(docker, &gateway_container, &leader_container).await;
                let mut r = load(&http, &url(way, path), opts.concurrency, opts.round).await;
                let after = cpu_now(docker, &gateway_container, &leader_container).await;
                r.cpu = cpu_between(before, after);
                line.push_str(&format!(" {:?} {:.0} req/s", way, r.rps()));
                report.get_mut(way).merge(r);
            }
            progress(&line);
        }
        reports.push(report);
    }
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

    fn r(ok: usize, gateway_us: f64) -> LoadResult {
        LoadResult {
            ok,
            errors: 0,
            secs: 1.0,
            latencies_ms: vec![1.0],
            cpu: CpuUse {
                gateway_us: Some(gateway_us),
                leader_us: Some(ok as f64 * 20.0),
                client_us: None,
            },
        }
    }

    #[test]
    fn proxy_ratio_target_and_summary() {
        let p = PathReport {
            path: "/api/status".into(),
            direct: r(1000, 0.0),
            gateway: r(950, 40_000.0),
            gateway_ip: r(990, 40_000.0),
            relay: r(1100, 10_000.0),
        };
        let rep = ProxyReport {
            leader: "node0".into(),
            concurrency: 4,
            paths: vec![p.clone()],
        };
        assert!(rep.meets_target(), "{}", rep.summary());
        let s = rep.summary();
        assert!(s.contains("gateway  42, leader  20, client   ?"), "{s}");
        assert!(s.contains("relay at the same place 1.10×"), "{s}");
        assert!(s.contains("against that relay 0.90×"), "{s}");
        let missed = ProxyReport {
            paths: vec![
                p.clone(),
                PathReport {
                    gateway: r(850, 0.0),
                    ..p.clone()
                },
            ],
            ..rep.clone()
        };
        assert!(!missed.meets_target());
        assert!(missed.summary().contains("0.85× (target ≥ 0.9×: MISSED)"));
        let errors = ProxyReport {
            paths: vec![PathReport {
                gateway: LoadResult {
                    errors: 1,
                    ..r(1000, 0.0)
                },
                ..p
            }],
            ..rep
        };
        assert!(!errors.meets_target());
    }

    #[test]
    fn merged_rounds_add_cpu_and_keep_latencies_sorted() {
        let mut a = r(10, 100.0);
        a.latencies_ms = vec![3.0];
        let mut b = r(30, 300.0);
        b.latencies_ms = vec![1.0, 2.0];
        b.cpu.client_us = Some(5.0);
        a.merge(b);
        assert_eq!(a.ok, 40);
        assert_eq!(a.latencies_ms, [1.0, 2.0, 3.0]);
        assert_eq!(a.cpu.gateway_us, Some(400.0));
        // Unread in one round: unknown for the whole, not a partial sum.
        assert_eq!(a.cpu.client_us, None);
        let mut empty = LoadResult::default();
        empty.merge(r(10, 100.0));
        assert_eq!(empty.cpu.gateway_us, Some(100.0));
    }

    #[test]
    fn own_cpu_time_is_read() {
        assert!(own_cpu_us().is_some());
    }
}
