//! `harness bench hosts`: how fast every node's /etc/hosts follows a dead follower and a dead
//! leader, and the hosts-file probes that the hosts trials share with it.
//!
//! The probes read each node's /etc/hosts with `docker exec cat` and compare its clusterlab
//! block with the block computed here from the harness's own knowledge (node IPs from the
//! IP plan, the leader from etcd's Status), not with anything hostsgen wrote elsewhere, so a
//! wrong rule in hostsgen cannot agree with itself.

use crate::cluster::{Cluster, ClusterSpec};
use crate::docker::HarnessError;
use crate::names::Subnet;
use crate::wait::wait_for;
use bollard::Docker;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

// The block as hostsgen renders it (markers from agent::schema): the harness reads what hostsgen writes.
pub use hostsgen::render::{extract_block as block_of, BEGIN, END};

/// How often the probes look while waiting. A round reads every node in parallel and takes
/// roughly one `docker exec`, so measured times are late by at most about one round.
pub const PROBE_POLL: Duration = Duration::from_millis(50);

/// Failures of the hosts checks and the benchmark.
pub type HostsCheckError = crate::wait::CheckError;

/// The lines of a hosts file outside the clusterlab block.
pub fn lines_outside_block(hosts: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in hosts.lines() {
        match line.trim() {
            BEGIN => inside = true,
            END if inside => inside = false,
            _ if !inside => out.push(line.to_string()),
            _ => {}
        }
    }
    out
}

/// `host0=node2 host1=node0 …` for a block, or a note when there is none.
pub fn describe(block: Option<&str>) -> String {
    let Some(b) = block else {
        return "(no clusterlab block)".into();
    };
    let entries: Vec<String> = b
        .lines()
        .filter(|l| l.trim() != BEGIN && l.trim() != END)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, alias, name] => format!("{alias}={name}"),
                _ => format!("MALFORMED({l:?})"),
            }
        })
        .collect();
    if entries.is_empty() {
        "(empty block)".into()
    } else {
        entries.join(" ")
    }
}

/// The node name on the block's `host0` line, if there is one.
pub fn host0_of(block: &str) -> Option<String> {
    block.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, "host0", name] => Some(name.to_string()),
            _ => None,
        }
    })
}

/// The block every node should show: `leader` as host0 (when given and live), the other
/// live nodes as host1, host2 … in ascending numeric IP order, node names as aliases.
pub fn expected_block(
    c: &Cluster,
    leader: Option<&str>,
    live: &[String],
) -> Result<String, HarnessError> {
    let mut nodes: Vec<(Ipv4Addr, &str)> = Vec::new();
    for n in live {
        nodes.push((c.node_ip(n)?, n.as_str()));
    }
    nodes.sort();
    let leader = leader.filter(|l| live.iter().any(|n| n == l));
    let mut out = format!("{BEGIN}\n");
    let mut next = 0;
    if let Some(l) = leader {
        out.push_str(&format!("{} host0 {l}\n", c.node_ip(l)?));
    }
    for (ip, name) in nodes.iter().filter(|(_, n)| Some(*n) != leader) {
        next += 1;
        out.push_str(&format!("{ip} host{next} {name}\n"));
    }
    out.push_str(&format!("{END}\n"));
    Ok(out)
}

/// A node's whole /etc/hosts.
pub async fn read_hosts(c: &Cluster, node: &str) -> Result<String, HarnessError> {
    read_file(c, node, "/etc/hosts").await
}

/// A file's text on a node; an error if `cat` fails.
pub async fn read_file(c: &Cluster, node: &str, path: &str) -> Result<String, HarnessError> {
    let out = c.exec(node, &["cat", path]).await?;
    if out.code != 0 {
        return Err(HarnessError::ExecFailed {
            container: c.container_name(node)?,
            command: format!("cat {path}"),
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Every listed node's clusterlab block, read in parallel.
pub async fn read_blocks(
    c: &Cluster,
    nodes: &[String],
) -> Result<Vec<(String, Option<String>)>, HarnessError> {
    let reads = nodes.iter().map(|n| async move {
        let text = read_hosts(c, n).await?;
        Ok::<_, HarnessError>((n.clone(), block_of(&text)))
    });
    futures::future::join_all(reads).await.into_iter().collect()
}

/// One line per node for wait diagnostics: `node0: host0=node2 host1=node0 | node1: …`.
pub fn describe_all(blocks: &[(String, Option<String>)]) -> String {
    blocks
        .iter()
        .map(|(n, b)| format!("{n}: {}", describe(b.as_deref())))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Ok when every block equals `expected`; otherwise what each node shows.
pub fn check_all(blocks: &[(String, Option<String>)], expected: &str) -> Result<(), String> {
    if blocks.iter().all(|(_, b)| b.as_deref() == Some(expected)) {
        Ok(())
    } else {
        Err(format!(
            "want [{}]; have {}",
            describe(Some(expected)),
            describe_all(blocks)
        ))
    }
}

/// Waits until every node in `on` shows the block for `live` with etcd's current raft leader
/// as host0, and returns that leader and the time it took.
pub async fn wait_full_table(
    c: &Cluster,
    on: &[String],
    live: &[String],
    what: &str,
    timeout: Duration,
) -> Result<(String, Duration), HostsCheckError> {
    Ok(wait_for(what, timeout, PROBE_POLL, || async {
        let leader = c
            .etcd_leader()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no etcd leader".to_string())?;
        let expected = expected_block(c, Some(&leader), live).map_err(|e| e.to_string())?;
        let blocks = read_blocks(c, on).await.map_err(|e| e.to_string())?;
        check_all(&blocks, &expected)
            .map(|()| leader.clone())
            .map_err(|e| format!("etcd leader {leader}; {e}"))
    })
    .await?)
}

/// Waits until every node in `on` shows the same block with host0 = etcd's raft leader and
/// that leader is not `old`. Returns the new leader and the time it took.
pub async fn wait_new_host0(
    c: &Cluster,
    on: &[String],
    old: &str,
    timeout: Duration,
) -> Result<(String, Duration), HostsCheckError> {
    Ok(wait_for(
        &format!("every survivor to show etcd's new leader (not {old}) as host0"),
        timeout,
        PROBE_POLL,
        || async {
            let blocks = read_blocks(c, on).await.map_err(|e| e.to_string())?;
            let first = blocks.first().and_then(|(_, b)| b.clone());
            let same = blocks.iter().all(|(_, b)| *b == first);
            let host0 = first.as_deref().and_then(host0_of);
            let fail = |why: &str| format!("{why}; {}", describe_all(&blocks));
            if !same {
                return Err(fail("nodes disagree"));
            }
            match host0 {
                Some(h) if h != old => {
                    // Only now ask etcd, so the answer is at least as new as the blocks.
                    let leader = c.etcd_leader().await.map_err(|e| e.to_string())?;
                    if leader.as_deref() == Some(h.as_str()) {
                        Ok(h)
                    } else {
                        Err(fail(&format!(
                            "host0 is {h} but etcd's leader is {leader:?}"
                        )))
                    }
                }
                _ => Err(fail("host0 not yet a new leader")),
            }
        },
    )
    .await?)
}

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

/// Median and maximum of a non-empty list.
pub fn median_max(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[v.len() - 1])
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
) -> Result<BenchReport, HostsCheckError> {
    if opts.nodes < 3 {
        return Err(HostsCheckError::Check(format!(
            "the hosts benchmark needs at least 3 nodes (got {}): a run kills two of them in turn",
            opts.nodes
        )));
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

async fn bench_runs(
    c: &Cluster,
    opts: &BenchOptions,
    progress: &mut impl FnMut(&str),
) -> Result<BenchReport, HostsCheckError> {
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
        wait_for(
            &format!("every survivor to drop {follower}"),
            Duration::from_secs(ttl + 30),
            PROBE_POLL,
            || async {
                let blocks = read_blocks(c, &survivors)
                    .await
                    .map_err(|e| e.to_string())?;
                check_all(&blocks, &expected)
            },
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
        let old_leader = c.etcd_leader().await?.ok_or_else(|| {
            HostsCheckError::Check("no etcd leader before the leader kill".into())
        })?;
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

/// `harness bench hosts`: kill a follower, then the leader, RUNS times on a cluster of its
/// own, and print per run and as median/max the seconds until every survivor's /etc/hosts
/// dropped the follower and showed the new leader as host0. Exits non-zero if a target is
/// missed (follower: max ≤ lease TTL + 2 s; new host0: median ≤ 2.5 s).
#[derive(clap::Args, Debug)]
pub struct BenchHostsArgs {
    /// Number of runs (each kills a follower and then the leader).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub runs: usize,
    /// Nodes in the benchmark cluster (at least 3).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(3..=50))]
    pub nodes: usize,
    /// TTL in seconds of each node's lease.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Name of the benchmark's own cluster (removed at the end).
    #[arg(long, default_value = "clusterlab-bench")]
    pub name: String,
    /// Subnet of the benchmark cluster, apart from the default cluster's.
    #[arg(long, default_value = "10.77.100.0/24")]
    pub subnet: Subnet,
    #[command(flatten)]
    pub images: crate::cli::ImagesArgs,
}

/// Runs `harness bench hosts` and prints its report.
pub async fn run_cli(a: BenchHostsArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let images = crate::images::ensure_images(&docker, &a.images.options()).await?;
    let opts = BenchOptions {
        runs: a.runs,
        nodes: a.nodes,
        lease_ttl_s: a.lease_ttl,
        name: a.name,
        subnet: a.subnet,
        image: images.node,
    };
    println!(
        "bench hosts: {} runs on {} nodes (cluster {}, lease TTL {} s)",
        opts.runs, opts.nodes, opts.name, opts.lease_ttl_s
    );
    // Run lines are printed as they finish; the totals close the report.
    let report = bench_hosts(&docker, &opts, |line| println!("{line}")).await?;
    print!("{}", report.totals());
    anyhow::ensure!(report.meets_targets(), "hosts benchmark missed a target");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "127.0.0.1\tlocalhost\n10.77.0.11\tnode1\n";
    const BLOCK: &str =
        "# BEGIN clusterlab\n10.77.0.12 host0 node2\n10.77.0.10 host1 node0\n# END clusterlab\n";

    #[test]
    fn block_and_outside_lines() {
        let f = format!("{DOCKER}{BLOCK}");
        assert_eq!(block_of(&f).as_deref(), Some(BLOCK));
        assert_eq!(block_of(DOCKER), None);
        assert_eq!(block_of("# BEGIN clusterlab\n1.1.1.1 host0 a\n"), None);
        assert_eq!(
            lines_outside_block(&f),
            ["127.0.0.1\tlocalhost", "10.77.0.11\tnode1"]
        );
        assert_eq!(describe(Some(BLOCK)), "host0=node2 host1=node0");
        assert_eq!(describe(None), "(no clusterlab block)");
        assert_eq!(host0_of(BLOCK).as_deref(), Some("node2"));
    }

    #[test]
    fn expected_block_orders_by_numeric_ip() {
        // 95 nodes: node89 is at .99 and node90 at .100, where text order would flip them.
        let spec = ClusterSpec::new("x", 95, "img");
        let c = Cluster::attach(Docker::connect_with_local_defaults().unwrap(), spec);
        let live: Vec<String> = ["node90", "node0", "node89", "node5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b = expected_block(&c, Some("node5"), &live).unwrap();
        let ip = |i: usize| c.spec.node_ip(i);
        assert_eq!(
            b,
            format!(
                "{BEGIN}\n{} host0 node5\n{} host1 node0\n{} host2 node89\n{} host3 node90\n{END}\n",
                ip(5),
                ip(0),
                ip(89),
                ip(90)
            )
        );
        assert!(b.contains(".99 host2 node89\n"), "{b}");
        let b = expected_block(&c, Some("node7"), &live).unwrap();
        assert!(b.contains(" host1 node0\n") && !b.contains("host0"), "{b}");
    }

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
        assert_eq!(median_max(&[4.0, 1.0, 3.0, 2.0]), (2.5, 4.0));
    }
}
