//! `harness bench hosts`: how fast every node's /etc/hosts follows a dead follower and a dead
//! leader. The tables are read and waited for by [`crate::probe::hosts`] and compared with
//! the oracle's expected block, so the benchmark and the hosts trials check the same thing.
//!
//! With `cpu_hog` the kills happen while busy threads of the benchmark's own saturate every
//! core, and the agents' logs are searched for false removals (a live node whose key was
//! deleted: the agent logs "false removal" when it sees its own key go).

use super::BenchError;
use crate::cluster::{Cluster, ClusterSpec};
use crate::names::Subnet;
use crate::oracle::median_max;
use crate::probe::hosts::{expected_block, wait_blocks, wait_full_table, wait_new_host0};
use bollard::Docker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Targets (seconds): follower dropped everywhere, median and max; new leader as host0,
/// median. Under `--cpu-hog` each is doubled.
pub const FOLLOWER_MEDIAN_S: f64 = 2.0;
pub const FOLLOWER_MAX_S: f64 = 3.0;
pub const HOST0_MEDIAN_S: f64 = 2.5;
/// The line an agent logs when its own key was deleted while it ran.
pub const FALSE_REMOVAL_LOG: &str = "false removal";
/// The line it logs instead when it had seen itself cut off from the quorum shortly before
/// (a partition). The benchmarks never cut a node off, so there it is a false removal too:
/// an election after a kill also leaves the survivors without a leader for a moment.
pub const CUT_OFF_REMOVAL_LOG: &str = "removed while cut off from the quorum";
/// The line the leader's agent logs when its failure detector removed a node.
pub const DETECTOR_REMOVAL_LOG: &str = "removed an unreachable node";

/// What `harness bench hosts` runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub runs: usize,
    pub nodes: usize,
    pub lease_ttl_s: u64,
    /// Name of the cluster the benchmark brings up (and removes at the end).
    pub name: String,
    pub subnet: Subnet,
    /// The node image.
    pub image: String,
    /// Saturate every core with busy threads of the benchmark's own during the runs.
    pub cpu_hog: bool,
}

/// One run: a follower killed, then the leader.
///
/// Each time is taken from the nodes' own logs where they have it: hostsgen logs every table
/// it writes, with the time, so "every survivor dropped the follower" is the latest of the
/// survivors' first such lines after the kill. The benchmark also waits by reading every
/// survivor's /etc/hosts (`*_polled_s`), which confirms the files but adds the reading's own
/// delay: at 25 nodes one round of 24 `docker exec`s takes about a second on 2 cores.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub follower: String,
    /// Seconds from the kill request until every survivor's table no longer listed the follower.
    pub follower_dropped_s: f64,
    /// The same, as the harness's reading of the hosts files first saw it.
    pub follower_dropped_polled_s: f64,
    pub old_leader: String,
    pub new_leader: String,
    /// Seconds from the kill request until every survivor showed the new leader as host0.
    pub new_host0_s: f64,
    /// The same, as the harness's reading of the hosts files first saw it.
    pub new_host0_polled_s: f64,
}

/// All runs with their summary.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub lease_ttl_s: u64,
    pub runs: Vec<RunResult>,
    /// Whether busy threads saturated the cores during the runs.
    pub cpu_hog: bool,
    /// "false removal" lines in the agents' logs (live nodes whose key was deleted).
    pub false_removals: usize,
    /// Removals by the failure detector (its log lines), the killed nodes' included.
    pub detector_removals: usize,
}

/// The targets of one report, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    pub follower_median: f64,
    pub follower_max: f64,
    pub host0_median: f64,
}

impl BenchReport {
    /// Follower dropped: median ≤ 2 s, max ≤ 3 s; new host0: median ≤ 2.5 s; all doubled
    /// under the CPU hog. Whatever the lease TTL: the failure detector, not the lease, drops
    /// a dead node.
    pub fn targets(&self) -> Targets {
        let f = if self.cpu_hog { 2.0 } else { 1.0 };
        Targets {
            follower_median: FOLLOWER_MEDIAN_S * f,
            follower_max: FOLLOWER_MAX_S * f,
            host0_median: HOST0_MEDIAN_S * f,
        }
    }

    /// Whether the runs meet every target, with no false removal.
    pub fn meets_targets(&self) -> bool {
        let t = self.targets();
        let (fmed, fmax) = median_max(&self.follower_times());
        let (lmed, _) = median_max(&self.leader_times());
        !self.runs.is_empty()
            && fmed <= t.follower_median
            && fmax <= t.follower_max
            && lmed <= t.host0_median
            && self.false_removals == 0
    }

    fn follower_times(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.follower_dropped_s).collect()
    }

    fn leader_times(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.new_host0_s).collect()
    }

    /// The per-run lines followed by [`BenchReport::totals`].
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&format!("{}\n", run_line(i + 1, self.runs.len(), r)));
        }
        out.push_str(&self.totals());
        out
    }

    /// Median and maximum of both measurements, each against its target.
    pub fn totals(&self) -> String {
        let t = self.targets();
        let (fmed, fmax) = median_max(&self.follower_times());
        let (lmed, lmax) = median_max(&self.leader_times());
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let hog = if self.cpu_hog {
            ", doubled under the CPU hog"
        } else {
            ""
        };
        format!(
            "follower dropped on every survivor: median {fmed:.2} s, max {fmax:.2} s \
             (target median ≤ {:.1} s, max ≤ {:.1} s at lease TTL {} s{hog}: {})\n\
             new leader as host0 on every survivor: median {lmed:.2} s, max {lmax:.2} s \
             (target median ≤ {:.1} s{hog}: {})\n\
             false removals (live nodes whose key was deleted): {} (target 0: {}); \
             removals by the failure detector: {}\n",
            t.follower_median,
            t.follower_max,
            self.lease_ttl_s,
            verdict(fmed <= t.follower_median && fmax <= t.follower_max),
            t.host0_median,
            verdict(lmed <= t.host0_median),
            self.false_removals,
            verdict(self.false_removals == 0),
            self.detector_removals,
        )
    }
}

fn run_line(i: usize, n: usize, r: &RunResult) -> String {
    format!(
        "run {i}/{n}: follower {} dropped everywhere after {:.2} s (files read: {:.2} s); leader {} killed, host0 = {} everywhere after {:.2} s (files read: {:.2} s)",
        r.follower,
        r.follower_dropped_s,
        r.follower_dropped_polled_s,
        r.old_leader,
        r.new_leader,
        r.new_host0_s,
        r.new_host0_polled_s
    )
}

/// Lines of a node's log kept for [`table_changes`]: a run's few table changes are near the end.
const TABLE_LOG_LINES: usize = 3000;

/// Every hosts table hostsgen logged in `log` (`… hosts table revision=R table=host0=a
/// host1=b …`): the agent's timestamp of the line (Unix ms) and the names in slot order.
pub fn table_changes(log: &str) -> Vec<(u64, Vec<String>)> {
    log.lines()
        .filter(|l| l.contains("hostsgen::watch: hosts table"))
        .filter_map(|l| {
            let at = unix_ms(l.split_whitespace().next()?)?;
            let rest = &l[l.find(" table=")? + " table=".len()..];
            let names = rest
                .split_whitespace()
                .take_while(|w| w.starts_with("host"))
                .filter_map(|w| w.split_once('=').map(|(_, n)| n.to_string()))
                .collect();
            Some((at, names))
        })
        .collect()
}

/// Unix milliseconds of an RFC 3339 UTC time as the nodes log it (`2026-12-02T14:10:46.033353Z`).
pub fn unix_ms(t: &str) -> Option<u64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days since 1970-01-01 of the proleptic Gregorian date (years counted from March, so
    // the leap day is the last day of its year).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + hh) * 60 + mm) * 60 + ss;
    u64::try_from(total * 1000 + ms).ok()
}

/// Seconds from `since_ms` until every one of `nodes` had logged a table that `ok` accepts
/// (each node's first such table after `since_ms`); None if a node's log has none.
async fn logged_after(
    c: &Cluster,
    nodes: &[String],
    since_ms: u64,
    ok: impl Fn(&[String]) -> bool,
) -> Option<f64> {
    let mut latest = since_ms;
    for n in nodes {
        let container = c.container_name(n).ok()?;
        let log = c.objects.logs_tail(&container, TABLE_LOG_LINES).await;
        let at = table_changes(&log)
            .into_iter()
            .find(|(at, names)| *at >= since_ms && ok(names))?
            .0;
        latest = latest.max(at);
    }
    Some((latest - since_ms) as f64 / 1000.0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Brings up a cluster, then `runs` times: kills a follower and measures until every
/// survivor dropped it, restarts it, kills the leader and measures until every survivor
/// shows the new leader as host0, restarts it. Each run starts from a settled cluster (every
/// node showing the full table). `progress` receives each run's line as it finishes. The
/// cluster is removed at the end, also on failure.
pub async fn bench_hosts(
    docker: &Docker,
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    if opts.nodes < 3 {
        return Err(BenchError::TooFewNodes {
            bench: "hosts",
            got: opts.nodes,
            why: ": a run kills two of them in turn",
        });
    }
    let _ = crate::cluster::down(docker, &opts.name).await;
    let mut spec = ClusterSpec::new(&opts.name, opts.nodes, &opts.image);
    spec.subnet = opts.subnet;
    spec.lease_ttl_s = opts.lease_ttl_s;
    spec.gateway = false;
    spec.gateway_port = 0;
    let c = Cluster::up(docker, spec).await?;
    let hog = opts.cpu_hog.then(CpuHog::start);
    if let Some(h) = &hog {
        progress(&format!("CPU hog: {} busy threads", h.threads.len()));
    }
    let result = bench_runs(&c, opts, &mut progress).await;
    drop(hog);
    let result = match result {
        Ok(mut r) => {
            r.cpu_hog = opts.cpu_hog;
            (r.false_removals, r.detector_removals) = count_removals(&c).await;
            Ok(r)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = c.down().await {
        progress(&format!("warning: removing cluster {}: {e}", opts.name));
    }
    result
}

pub async fn bench_runs(
    c: &Cluster,
    opts: &BenchOptions,
    progress: &mut impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let all = c.node_names();
    let ttl = opts.lease_ttl_s;
    let settle = Duration::from_secs(60 + 2 * ttl);
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        let (leader, _) = wait_full_table(c, &all, &all, "a settled cluster", settle).await?;

        // A follower dies: the leader's failure detector confirms it and revokes its lease.
        let followers: Vec<&String> = all.iter().filter(|n| **n != leader).collect();
        let follower = followers[i % followers.len()].clone();
        let survivors: Vec<String> = all.iter().filter(|n| **n != follower).cloned().collect();
        let expected = expected_block(c, Some(&leader), &survivors)?;
        // Timed from the kill request, not from Docker's answer: under load the answer can
        // come late, and the detector may already be at work by then.
        let killed = Instant::now();
        let killed_ms = now_ms();
        c.kill(&follower).await?;
        wait_blocks(
            c,
            &survivors,
            &expected,
            &format!("every survivor to drop {follower}"),
            Duration::from_secs(ttl + 30),
        )
        .await?;
        let follower_dropped_polled_s = killed.elapsed().as_secs_f64();
        let follower_dropped_s =
            logged_after(c, &survivors, killed_ms, |names| !names.contains(&follower))
                .await
                .unwrap_or(follower_dropped_polled_s);
        c.start(&follower).await?;
        wait_full_table(
            c,
            &all,
            &all,
            &format!("{follower} back everywhere"),
            settle,
        )
        .await?;

        // The leader dies: the next leader writes the leader key as soon as it is elected.
        let old_leader = c
            .etcd_leader()
            .await?
            .ok_or(BenchError::NoLeaderBeforeKill)?;
        let survivors: Vec<String> = all.iter().filter(|n| **n != old_leader).cloned().collect();
        let killed = Instant::now();
        let killed_ms = now_ms();
        c.kill(&old_leader).await?;
        let (new_leader, _) =
            wait_new_host0(c, &survivors, &old_leader, Duration::from_secs(30)).await?;
        let new_host0_polled_s = killed.elapsed().as_secs_f64();
        let new_host0_s = logged_after(c, &survivors, killed_ms, |names| {
            names.first() == Some(&new_leader)
        })
        .await
        .unwrap_or(new_host0_polled_s);
        c.start(&old_leader).await?;

        let r = RunResult {
            follower,
            follower_dropped_s,
            follower_dropped_polled_s,
            old_leader,
            new_leader,
            new_host0_s,
            new_host0_polled_s,
        };
        progress(&run_line(i + 1, opts.runs, &r));
        runs.push(r);
    }
    Ok(BenchReport {
        lease_ttl_s: ttl,
        runs,
        cpu_hog: false,
        false_removals: 0,
        detector_removals: 0,
    })
}

/// Busy threads, one per core, spinning until dropped.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start() -> CpuHog {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How many lines of each agent's log are searched for removals.
const LOG_LINES: usize = 100_000;

/// Removals of live nodes (their own "false removal" and "removed while cut off" lines: the
/// benchmarks cut nobody off) and detector-removal lines in every node's log (every start of
/// the container: killed nodes' earlier lives included).
pub(crate) async fn count_removals(c: &Cluster) -> (usize, usize) {
    let (mut false_removals, mut removals) = (0, 0);
    for n in c.node_names() {
        let Ok(container) = c.container_name(&n) else {
            continue;
        };
        let log = c.objects.logs_tail(&container, LOG_LINES).await;
        false_removals +=
            count_lines(&log, FALSE_REMOVAL_LOG) + count_lines(&log, CUT_OFF_REMOVAL_LOG);
        removals += count_lines(&log, DETECTOR_REMOVAL_LOG);
    }
    (false_removals, removals)
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_and_tables_are_read() {
        assert_eq!(unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        // 2024-02-29 (a leap day) and the turn of a year.
        assert_eq!(unix_ms("2024-02-29T12:00:00.000Z"), Some(1_709_208_000_000));
        assert_eq!(
            unix_ms("2026-12-31T23:59:59.999999Z"),
            Some(1_798_761_599_999)
        );
        assert_eq!(unix_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(unix_ms("2026-12-02 14:10:46Z"), None);
        assert_eq!(unix_ms("yesterday"), None);
        let log = "\
2026-12-02T14:10:46.033353Z  INFO plugin: 2026-12-02T14:10:46.033127Z  INFO hostsgen::watch: hosts table revision=9 table=host0=node1 host1=node0 host2=node2 plugin=hostsgen stream=\"stderr\" cut=false
2026-12-02T14:10:46.034191Z  INFO plugin: 2026-12-02T14:10:46.034126Z  INFO hostsgen::watch: updated file=/etc/hosts plugin=hostsgen stream=\"stderr\" cut=false
2026-12-02T14:10:46.985022Z  INFO plugin: 2026-12-02T14:10:46.984929Z  INFO hostsgen::watch: hosts table revision=10 table=host0=node1 host1=node2 plugin=hostsgen stream=\"stderr\" cut=false
garbage hostsgen::watch: hosts table table=host0=x";
        let t = table_changes(log);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0].1, ["node1", "node0", "node2"]);
        assert_eq!(t[1].1, ["node1", "node2"]);
        assert_eq!(t[1].0 - t[0].0, 952);
    }

    #[test]
    fn the_removal_lines_searched_for_are_the_agents_own() {
        let detect = include_str!("../../../agent/src/detect.rs");
        for needle in [FALSE_REMOVAL_LOG, CUT_OFF_REMOVAL_LOG, DETECTOR_REMOVAL_LOG] {
            assert!(
                detect.contains(needle),
                "agent/src/detect.rs never logs {needle:?}"
            );
        }
        let log = "a false removal: …\nb removed while cut off from the quorum; …\nc other";
        assert_eq!(
            count_lines(log, FALSE_REMOVAL_LOG) + count_lines(log, CUT_OFF_REMOVAL_LOG),
            2
        );
    }

    #[test]
    fn summary_checks_targets() {
        let r = |f: f64, l: f64| RunResult {
            follower: "node1".into(),
            follower_dropped_s: f,
            follower_dropped_polled_s: f + 0.3,
            old_leader: "node0".into(),
            new_leader: "node2".into(),
            new_host0_s: l,
            new_host0_polled_s: l + 0.3,
        };
        let rep = |runs, cpu_hog, false_removals| BenchReport {
            lease_ttl_s: 30,
            runs,
            cpu_hog,
            false_removals,
            detector_removals: 2,
        };
        let ok = rep(vec![r(1.2, 1.5), r(1.5, 2.0), r(2.9, 3.0)], false, 0);
        assert!(ok.meets_targets());
        assert!(
            ok.summary().contains("median 1.50 s, max 2.90 s"),
            "{}",
            ok.summary()
        );
        // The lease TTL no longer enters the target: 12.5 s is missed at TTL 30.
        let slow = rep(vec![r(12.5, 1.0)], false, 0);
        assert!(!slow.meets_targets());
        assert!(slow.summary().contains("MISSED"));
        // Max over 3 s is missed without the hog, met with it (doubled).
        assert!(!rep(vec![r(1.0, 1.0), r(3.5, 1.0), r(1.0, 1.0)], false, 0).meets_targets());
        assert!(rep(vec![r(1.0, 1.0), r(3.5, 1.0), r(1.0, 1.0)], true, 0).meets_targets());
        // One false removal misses whatever the times.
        let fr = rep(vec![r(1.0, 1.0)], true, 1);
        assert!(!fr.meets_targets());
        assert!(fr
            .summary()
            .contains("false removals (live nodes whose key was deleted): 1 (target 0: MISSED)"));
    }
}
