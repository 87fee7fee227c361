//! `harness bench scale`: how clusterlab grows. For each cluster size: seconds from the start of
//! `up` until every node key is present and every node's /etc/hosts is identical, the idle
//! CPU of each node's programs, and the follower-kill and leader-kill figures of
//! `bench hosts` (its own runs, reused).
//!
//! Idle CPU is read inside each node from `/proc/<pid>/stat` (utime + stime) at the start and
//! the end of a window, for every process present at both ends, summed per program name.

use super::hosts::{bench_runs, BenchOptions, BenchReport};
use super::BenchError;
use crate::cluster::{Cluster, ClusterSpec, NodeKind};
use crate::names::Subnet;
use crate::oracle::median_max;
use crate::probe::hosts::wait_full_table;
use bollard::Docker;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Target: seconds until the largest cluster (25 nodes) agrees.
pub const AGREE_TARGET_S: f64 = 30.0;
/// Target: a killed follower gone from every table at 25 nodes, seconds (max).
pub const FOLLOWER_TARGET_S: f64 = 3.0;
/// Target: percent of one core that a node's non-etcd programs use together when idle.
pub const IDLE_TARGET_PCT: f64 = 0.5;
/// The cluster size the agreement and follower targets are set for.
pub const TARGET_NODES: usize = 25;

/// Programs counted as clusterlab's own on a node besides etcd.
pub const NON_ETCD: &[&str] = &["agent", "hostsgen", "sshkeys", "sshd"];

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// What `harness bench scale` runs.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Cluster sizes, each on a fresh cluster.
    pub sizes: Vec<usize>,
    /// Follower and leader kills per size (0: none).
    pub runs: usize,
    /// `etcd.voters` of every cluster.
    pub voters: usize,
    pub lease_ttl_s: u64,
    /// Quiet time after the cluster agreed, before the idle window.
    pub settle: Duration,
    /// Length of the idle CPU window.
    pub idle_window: Duration,
    pub name: String,
    pub subnet: Subnet,
    pub image: String,
}

/// One node's idle CPU, percent of one core per program.
#[derive(Debug, Clone)]
pub struct NodeIdle {
    pub node: String,
    pub kind: NodeKind,
    pub by_program: BTreeMap<String, f64>,
}

impl NodeIdle {
    /// Percent of a core of every clusterlab program but etcd.
    pub fn non_etcd(&self) -> f64 {
        NON_ETCD
            .iter()
            .filter_map(|p| self.by_program.get(*p))
            .sum()
    }

    pub fn program(&self, p: &str) -> f64 {
        self.by_program.get(p).copied().unwrap_or(0.0)
    }
}

/// The figures of one cluster size.
#[derive(Debug, Clone)]
pub struct SizeReport {
    pub nodes: usize,
    pub voters: usize,
    /// Seconds from the start of `up` until every key is present and every table identical.
    pub agree_s: f64,
    pub idle: Vec<NodeIdle>,
    pub hosts: Option<BenchReport>,
    /// The machine's load average when the idle window closed.
    pub load: String,
}

impl SizeReport {
    /// Median and maximum over nodes of the non-etcd idle cost.
    pub fn non_etcd_median_max(&self) -> (f64, f64) {
        median_max(&self.idle.iter().map(NodeIdle::non_etcd).collect::<Vec<_>>())
    }

    /// Median and maximum over `kind` nodes of one program's idle cost.
    fn program_median_max(&self, p: &str, kind: Option<NodeKind>) -> Option<(f64, f64)> {
        let v: Vec<f64> = self
            .idle
            .iter()
            .filter(|n| kind.is_none_or(|k| n.kind == k))
            .map(|n| n.program(p))
            .collect();
        (!v.is_empty()).then(|| median_max(&v))
    }

    fn follower_max(&self) -> Option<f64> {
        let h = self.hosts.as_ref()?;
        let v: Vec<f64> = h.runs.iter().map(|r| r.follower_dropped_s).collect();
        (!v.is_empty()).then(|| median_max(&v).1)
    }

    /// The size's lines of the report.
    pub fn summary(&self) -> String {
        let voters = self
            .idle
            .iter()
            .filter(|n| n.kind == NodeKind::Voter)
            .count();
        let mut out = format!(
            "{} nodes ({} voters, {} members): every key and identical tables {:.1} s after up began\n",
            self.nodes,
            voters,
            self.nodes - voters,
            self.agree_s
        );
        let (med, max) = self.non_etcd_median_max();
        out.push_str(&format!(
            "  idle, % of a core per node: non-etcd median {med:.2} max {max:.2}"
        ));
        for p in ["etcd", "agent", "hostsgen", "sshkeys", "sshd"] {
            let kind = (p == "etcd").then_some(NodeKind::Voter);
            if let Some((m, x)) = self.program_median_max(p, kind) {
                out.push_str(&format!("; {p} {m:.2}/{x:.2}"));
            }
        }
        out.push_str(&format!(" (median/max; {})\n", self.load));
        if let Some(h) = &self.hosts {
            for line in h.totals().lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out
    }
}

/// Every size's report and the verdicts against the targets.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub sizes: Vec<SizeReport>,
}

impl ScaleReport {
    /// The targets, each with what was measured and whether it held. A target whose size
    /// was not run says so.
    pub fn verdicts(&self) -> Vec<(String, Option<bool>)> {
        let at = self.sizes.iter().find(|s| s.nodes == TARGET_NODES);
        let mut v = Vec::new();
        v.push(match at {
            Some(s) => (
                format!(
                    "{TARGET_NODES} nodes agree within {AGREE_TARGET_S:.0} s: {:.1} s",
                    s.agree_s
                ),
                Some(s.agree_s <= AGREE_TARGET_S),
            ),
            None => (
                format!("{TARGET_NODES} nodes agree within {AGREE_TARGET_S:.0} s: not run"),
                None,
            ),
        });
        v.push(match at.and_then(|s| s.follower_max()) {
            Some(x) => (
                format!(
                    "follower dropped at {TARGET_NODES} nodes within {FOLLOWER_TARGET_S:.0} s (max): {x:.2} s"
                ),
                Some(x <= FOLLOWER_TARGET_S),
            ),
            None => (
                format!("follower dropped at {TARGET_NODES} nodes within {FOLLOWER_TARGET_S:.0} s: not run"),
                None,
            ),
        });
        let worst = self
            .sizes
            .iter()
            .map(|s| s.non_etcd_median_max().1)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        v.push(match worst {
            Some(x) => (
                format!(
                    "idle non-etcd cost ≤ {IDLE_TARGET_PCT} % of a core on every node: worst {x:.2} %"
                ),
                Some(x <= IDLE_TARGET_PCT),
            ),
            None => ("idle non-etcd cost: not run".into(), None),
        });
        v
    }

    /// Whether no target that was run was missed.
    pub fn meets_targets(&self) -> bool {
        self.verdicts().iter().all(|(_, ok)| *ok != Some(false))
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.sizes {
            out.push_str(&s.summary());
        }
        out.push_str("targets:\n");
        for (text, ok) in self.verdicts() {
            let verdict = match ok {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            };
            out.push_str(&format!("  {text}: {verdict}\n"));
        }
        out
    }
}

/// CPU ticks (utime + stime) per (pid, program) from the text of every `/proc/<pid>/stat`
/// concatenated. Lines that do not parse are skipped.
pub fn parse_stats(text: &str) -> BTreeMap<(u32, String), u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        // pid (comm) state ppid … ; comm may hold spaces and parentheses: cut at the last ')'.
        let (Some(open), Some(close)) = (line.find('('), line.rfind(')')) else {
            continue;
        };
        if close < open {
            continue;
        }
        let Ok(pid) = line[..open].trim().parse::<u32>() else {
            continue;
        };
        let comm = line[open + 1..close].to_string();
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        // After the comm: state(0) ppid(1) … utime(11) stime(12).
        let (Some(u), Some(s)) = (rest.get(11), rest.get(12)) else {
            continue;
        };
        let (Ok(u), Ok(s)) = (u.parse::<u64>(), s.parse::<u64>()) else {
            continue;
        };
        out.insert((pid, comm), u + s);
    }
    out
}

/// Percent of one core per program between two snapshots `secs` apart, counting only the
/// processes present in both.
pub fn cpu_by_program(
    before: &BTreeMap<(u32, String), u64>,
    after: &BTreeMap<(u32, String), u64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    if secs <= 0.0 {
        return out;
    }
    for (key, t1) in after {
        if let Some(t0) = before.get(key) {
            let pct = t1.saturating_sub(*t0) as f64 / USER_HZ / secs * 100.0;
            *out.entry(key.1.clone()).or_default() += pct;
        }
    }
    out
}

async fn snapshot(c: &Cluster, node: &str) -> Result<BTreeMap<(u32, String), u64>, BenchError> {
    let out = c
        .exec(node, &["sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null"])
        .await?;
    Ok(parse_stats(&out.stdout))
}

/// Every node's idle CPU over `window`, all nodes measured over the same window.
pub async fn measure_idle(c: &Cluster, window: Duration) -> Result<Vec<NodeIdle>, BenchError> {
    let names = c.node_names();
    let take = || {
        futures::future::join_all(names.iter().map(|n| async move {
            let s = snapshot(c, n).await;
            (Instant::now(), s)
        }))
    };
    let before = take().await;
    tokio::time::sleep(window).await;
    let after = take().await;
    let mut out = Vec::new();
    for (i, ((t0, b), (t1, a))) in before.into_iter().zip(after).enumerate() {
        let secs = t1.duration_since(t0).as_secs_f64();
        out.push(NodeIdle {
            node: names[i].clone(),
            kind: if c.spec.is_voter(i) {
                NodeKind::Voter
            } else {
                NodeKind::Member
            },
            by_program: cpu_by_program(&b?, &a?, secs),
        });
    }
    Ok(out)
}

/// Runs every size in turn on a cluster of its own, removed at the end (also on failure).
pub async fn bench_scale(
    docker: &Docker,
    opts: &ScaleOptions,
    mut progress: impl FnMut(&str),
) -> Result<ScaleReport, BenchError> {
    if let Some(&n) = opts.sizes.iter().find(|&&n| n < 3) {
        return Err(BenchError::TooFewNodes {
            bench: "scale",
            got: n,
            why: ": a run kills a follower and the leader",
        });
    }
    let mut sizes = Vec::new();
    for &nodes in &opts.sizes {
        let _ = crate::cluster::down(docker, &opts.name).await;
        let mut spec = ClusterSpec::new(&opts.name, nodes, &opts.image);
        spec.subnet = opts.subnet;
        spec.lease_ttl_s = opts.lease_ttl_s;
        spec.voters = opts.voters;
        spec.gateway = false;
        spec.gateway_port = 0;
        spec.run_scoped = true;
        spec.ready_timeout = Duration::from_secs(300);
        progress(&format!("{nodes} nodes: bringing up {}", opts.name));
        let began = Instant::now();
        let c = Cluster::up(docker, spec).await?;
        let result = one_size(&c, opts, began, &mut progress).await;
        if let Err(e) = c.down().await {
            progress(&format!("warning: removing cluster {}: {e}", opts.name));
        }
        let r = result?;
        progress(r.summary().trim_end());
        sizes.push(r);
    }
    Ok(ScaleReport { sizes })
}

async fn one_size(
    c: &Cluster,
    opts: &ScaleOptions,
    began: Instant,
    progress: &mut impl FnMut(&str),
) -> Result<SizeReport, BenchError> {
    let all = c.node_names();
    wait_full_table(
        c,
        &all,
        &all,
        "every node to show the full table",
        Duration::from_secs(300),
    )
    .await?;
    let agree_s = began.elapsed().as_secs_f64();
    progress(&format!(
        "{} nodes: agreed {agree_s:.1} s after up began; idle window {} s after {} s quiet",
        all.len(),
        opts.idle_window.as_secs(),
        opts.settle.as_secs()
    ));
    tokio::time::sleep(opts.settle).await;
    let idle = measure_idle(c, opts.idle_window).await?;
    let load = super::load_average();
    let hosts = if opts.runs > 0 {
        let hopts = BenchOptions {
            runs: opts.runs,
            nodes: all.len(),
            lease_ttl_s: opts.lease_ttl_s,
            name: opts.name.clone(),
            subnet: opts.subnet,
            image: opts.image.clone(),
            cpu_hog: false,
        };
        let mut r = bench_runs(c, &hopts, progress).await?;
        (r.false_removals, r.detector_removals) = super::hosts::count_removals(c).await;
        Some(r)
    } else {
        None
    };
    Ok(SizeReport {
        nodes: all.len(),
        voters: c.spec.voter_count(),
        agree_s,
        idle,
        hosts,
        load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1 (docker-init) S 0 1 1 0 -1 4194560 300 0 0 0 2 3 0 0 20 0 1 0 100 1 1\n\
        7 (agent) S 1 7 1 0 -1 4194560 300 0 0 0 120 30 0 0 20 0 9 0 100 1 1\n\
        9 (odd (name)) S 7 9 1 0 -1 4194560 300 0 0 0 5 5 0 0 20 0 1 0 100 1 1\n\
        garbage\n";

    #[test]
    fn stat_lines_give_ticks_per_process_even_with_odd_names() {
        let s = parse_stats(STAT);
        assert_eq!(s.len(), 3);
        assert_eq!(s[&(7, "agent".to_string())], 150);
        assert_eq!(s[&(9, "odd (name)".to_string())], 10);
    }

    #[test]
    fn cpu_counts_processes_present_at_both_ends() {
        let before = parse_stats(STAT);
        let mut after = before.clone();
        *after.get_mut(&(7, "agent".to_string())).unwrap() += 30; // 0.3 s of CPU
        after.insert((50, "cat".into()), 1); // only at the end: ignored
        let pct = cpu_by_program(&before, &after, 60.0);
        assert!((pct["agent"] - 0.5).abs() < 1e-9, "{pct:?}");
        assert_eq!(pct["docker-init"], 0.0);
        assert!(!pct.contains_key("cat"));
    }

    #[test]
    fn verdicts_say_what_was_not_run_and_what_was_missed() {
        let mut by_program = BTreeMap::new();
        by_program.insert("agent".to_string(), 0.2);
        by_program.insert("sshkeys".to_string(), 0.4);
        by_program.insert("etcd".to_string(), 2.0);
        let node = NodeIdle {
            node: "node0".into(),
            kind: NodeKind::Voter,
            by_program,
        };
        assert!((node.non_etcd() - 0.6).abs() < 1e-9);
        let r = ScaleReport {
            sizes: vec![SizeReport {
                nodes: 3,
                voters: 3,
                agree_s: 12.0,
                idle: vec![node],
                hosts: None,
                load: "load average 1 1 1".into(),
            }],
        };
        let v = r.verdicts();
        assert_eq!(v[0].1, None, "25 nodes were not run");
        assert_eq!(v[2].1, Some(false), "0.6 % is above the target");
        assert!(!r.meets_targets());
        assert!(r.summary().contains("MISSED"), "{}", r.summary());
    }
}
