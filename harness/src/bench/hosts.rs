//! `harness bench hosts`: how fast every node's /etc/hosts follows a dead follower and a dead
//! leader. The tables are read and waited for by [`crate::probe::hosts`] and compared with
//! the oracle's expected block, so the benchmark and the hosts trials check the same thing.

use super::BenchError;
use crate::cluster::{Cluster, ClusterSpec};
use crate::names::Subnet;
use crate::oracle::median_max;
use crate::probe::hosts::{expected_block, wait_blocks, wait_full_table, wait_new_host0};
use bollard::Docker;
use std::time::{Duration, Instant};

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
}

/// One run: a follower killed, then the leader.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub follower: String,
    /// Seconds from the kill until every survivor's block no longer listed the follower.
    pub follower_dropped_s: f64,
    pub old_leader: String,
    pub new_leader: String,
    /// Seconds from the kill until every survivor showed the new leader as host0.
    pub new_host0_s: f64,
}

/// All runs with their summary.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub lease_ttl_s: u64,
    pub runs: Vec<RunResult>,
}

impl BenchReport {
    /// Seconds: the follower target is lease TTL + 2 s (max), the new-host0 target 2.5 s
    /// (median).
    pub fn targets(&self) -> (f64, f64) {
        (self.lease_ttl_s as f64 + 2.0, 2.5)
    }

    /// Whether the runs meet both targets.
    pub fn meets_targets(&self) -> bool {
        let (ft, lt) = self.targets();
        let (_, fmax) = median_max(&self.follower_times());
        let (lmed, _) = median_max(&self.leader_times());
        !self.runs.is_empty() && fmax <= ft && lmed <= lt
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
        let (ft, lt) = self.targets();
        let (fmed, fmax) = median_max(&self.follower_times());
        let (lmed, lmax) = median_max(&self.leader_times());
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        format!(
            "follower dropped on every survivor: median {fmed:.2} s, max {fmax:.2} s \
             (target max ≤ {ft:.1} s = lease TTL {} s + 2 s: {})\n\
             new leader as host0 on every survivor: median {lmed:.2} s, max {lmax:.2} s \
             (target median ≤ {lt:.1} s: {})\n",
            self.lease_ttl_s,
            verdict(fmax <= ft),
            verdict(lmed <= lt)
        )
    }
}

fn run_line(i: usize, n: usize, r: &RunResult) -> String {
    format!(
        "run {i}/{n}: follower {} dropped everywhere after {:.2} s; leader {} killed, host0 = {} everywhere after {:.2} s",
        r.follower, r.follower_dropped_s, r.old_leader, r.new_leader, r.new_host0_s
    )
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
    let result = bench_runs(&c, opts, &mut progress).await;
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

        // A follower dies: its lease has to run out before anyone may drop it.
        let followers: Vec<&String> = all.iter().filter(|n| **n != leader).collect();
        let follower = followers[i % followers.len()].clone();
        let survivors: Vec<String> = all.iter().filter(|n| **n != follower).cloned().collect();
        let expected = expected_block(c, Some(&leader), &survivors)?;
        c.kill(&follower).await?;
        let killed = Instant::now();
        wait_blocks(
            c,
            &survivors,
            &expected,
            &format!("every survivor to drop {follower}"),
            Duration::from_secs(ttl + 30),
        )
        .await?;
        let follower_dropped_s = killed.elapsed().as_secs_f64();
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
        c.kill(&old_leader).await?;
        let killed = Instant::now();
        let (new_leader, _) =
            wait_new_host0(c, &survivors, &old_leader, Duration::from_secs(30)).await?;
        let new_host0_s = killed.elapsed().as_secs_f64();
        c.start(&old_leader).await?;

        let r = RunResult {
            follower,
            follower_dropped_s,
            old_leader,
            new_leader,
            new_host0_s,
        };
        progress(&run_line(i + 1, opts.runs, &r));
        runs.push(r);
    }
    Ok(BenchReport {
        lease_ttl_s: ttl,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_checks_targets() {
        let r = |f: f64, l: f64| RunResult {
            follower: "node1".into(),
            follower_dropped_s: f,
            old_leader: "node0".into(),
            new_leader: "node2".into(),
            new_host0_s: l,
        };
        let rep = BenchReport {
            lease_ttl_s: 10,
            runs: vec![r(9.0, 1.5), r(10.0, 2.0), r(11.5, 3.0)],
        };
        assert!(rep.meets_targets());
        assert!(
            rep.summary().contains("median 10.00 s, max 11.50 s"),
            "{}",
            rep.summary()
        );
        let slow = BenchReport {
            lease_ttl_s: 10,
            runs: vec![r(12.5, 1.0)],
        };
        assert!(!slow.meets_targets());
        assert!(slow.summary().contains("MISSED"));
    }
}
