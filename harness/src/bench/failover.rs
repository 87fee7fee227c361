//! `harness bench failover`: a steady, open-loop stream of GETs through the gateway (one
//! every `interval`, each on its own, so a held request does not slow the stream down), a
//! leader kill per run, and per run: seconds from the kill to the first response served by
//! the new leader, GETs that failed, GETs slower than 1 s. The stream and its reading are
//! [`crate::probe::http`]'s, shared with the proxy trials.

use super::{up_with_gateway, BenchError, BenchSetup};
use crate::cluster::Cluster;
use crate::oracle::median_max;
use crate::probe::http::{analyse, wait_proxy_serves_leader, FailoverRun, GetStream, Http};
use crate::wait::wait_for;
use bollard::Docker;
use std::time::Duration;

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
) -> Result<FailoverReport, BenchError> {
    if opts.setup.nodes < 3 {
        return Err(BenchError::TooFewNodes {
            bench: "failover",
            got: opts.setup.nodes,
            why: " to keep a quorum after a kill",
        });
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
) -> Result<FailoverReport, BenchError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
