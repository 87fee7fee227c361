//! Network partitions: cut traffic both ways between groups of nodes, and heal it.
//!
//! Each node drops, in its own network namespace, every packet to and from the peers on the
//! other side (iptables DROP: silent loss, as Jepsen does, so TCP connections hang instead of
//! failing fast). The rules live in one dedicated chain, [`CHAIN`], jumped to from INPUT and
//! OUTPUT, so [`heal`] removes exactly what [`partition`] added and nothing else. The
//! partition state is the chains themselves: [`cuts`] reads it back, so `heal` works from a
//! fresh process.
//!
//! Only node-to-node traffic is cut. The harness talks to the nodes from the bridge's gateway
//! address (`.1`), which the chain explicitly lets through first, and the plan never contains
//! anything but node addresses.

use crate::cluster::Cluster;
use crate::docker::HarnessError;
use crate::names::ClusterNames;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The iptables chain holding every partition rule of a node.
pub const CHAIN: &str = "CLUSTERLAB-PART";

/// What partitioning and healing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("partition groups: a partition needs at least two groups, got {0}")]
    TooFewGroups(usize),
    /// Group numbers count from 1, as a person reads the command line.
    #[error("partition groups: group {0} is empty")]
    EmptyGroup(usize),
    #[error("partition groups: no node {node:?} in the cluster (nodes: {known})")]
    UnknownNode { node: String, known: String },
    #[error("partition groups: {node} is in group {first} and in group {second}")]
    InTwoGroups {
        node: String,
        first: usize,
        second: usize,
    },
    #[error("partition groups: {0} is the whole cluster: nothing is left for the other side")]
    WholeCluster(String),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A command inside a node failed.
    #[error("{what} on {node} exited {code}: {stderr}")]
    Command {
        what: String,
        node: String,
        code: i64,
        stderr: String,
    },
}

/// Per node: the peer addresses it drops (empty: it reaches everyone).
pub type Cuts = BTreeMap<String, Vec<Ipv4Addr>>;

/// One side of a partition: node names.
pub type Group = Vec<String>;

/// Splits `node0,node1` into names, dropping blanks around commas.
pub fn parse_group(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The groups for `harness partition GROUP [--from OTHER]`: without `OTHER`, every node not
/// in `group` forms the other side.
pub fn cli_groups(
    all: &[String],
    group: &[String],
    from: Option<&[String]>,
) -> Result<Vec<Group>, FaultError> {
    let other: Vec<String> = match from {
        Some(f) => f.to_vec(),
        None => all.iter().filter(|n| !group.contains(n)).cloned().collect(),
    };
    if other.is_empty() {
        return Err(FaultError::WholeCluster(group.join(",")));
    }
    Ok(vec![group.to_vec(), other])
}

/// Which peer addresses each node must drop so that no two groups can talk.
///
/// `nodes` are every node of the cluster with its address. A node in no group keeps
/// reaching everyone and is reached by everyone (a bridge between the sides); every node
/// still appears in the result, with an empty list, so applying the plan also clears rules
/// left by an earlier partition.
pub fn plan_cuts(nodes: &[(String, Ipv4Addr)], groups: &[Vec<String>]) -> Result<Cuts, FaultError> {
    if groups.len() < 2 {
        return Err(FaultError::TooFewGroups(groups.len()));
    }
    let ip_of: BTreeMap<&str, Ipv4Addr> = nodes.iter().map(|(n, ip)| (n.as_str(), *ip)).collect();
    let mut group_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (g, members) in groups.iter().enumerate() {
        if members.is_empty() {
            return Err(FaultError::EmptyGroup(g + 1));
        }
        for m in members {
            if !ip_of.contains_key(m.as_str()) {
                let known: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
                return Err(FaultError::UnknownNode {
                    node: m.clone(),
                    known: known.join(", "),
                });
            }
            if let Some(prev) = group_of.insert(m.as_str(), g) {
                return Err(FaultError::InTwoGroups {
                    node: m.clone(),
                    first: prev + 1,
                    second: g + 1,
                });
            }
        }
    }
    let mut cuts = Cuts::new();
    for (name, _) in nodes {
        let drops = match group_of.get(name.as_str()) {
            None => Vec::new(),
            Some(mine) => {
                let mut ips: Vec<Ipv4Addr> = group_of
                    .iter()
                    .filter(|(_, g)| *g != mine)
                    .map(|(peer, _)| ip_of[peer])
                    .collect();
                ips.sort();
                ips
            }
        };
        cuts.insert(name.clone(), drops);
    }
    Ok(cuts)
}

/// Input for `iptables-restore --noflush`: declaring the chain replaces its contents in one
/// transaction, so re-partitioning never opens a window with no rules. `keep` (the bridge
/// gateway, where the harness talks from) is returned from first, whatever the drops say.
pub fn chain_rules(keep: Ipv4Addr, drops: &[Ipv4Addr]) -> String {
    let mut r = format!("*filter\n:{CHAIN} - [0:0]\n");
    r.push_str(&format!("-A {CHAIN} -s {keep}/32 -j RETURN\n"));
    r.push_str(&format!("-A {CHAIN} -d {keep}/32 -j RETURN\n"));
    for ip in drops {
        r.push_str(&format!("-A {CHAIN} -s {ip}/32 -j DROP\n"));
        r.push_str(&format!("-A {CHAIN} -d {ip}/32 -j DROP\n"));
    }
    r.push_str("COMMIT\n");
    r
}

/// The shell script that installs a node's rules: the chain's contents, then one jump from
/// INPUT and one from OUTPUT (added only if missing, so applying twice changes nothing).
pub fn apply_script(keep: Ipv4Addr, drops: &[Ipv4Addr]) -> String {
    // The rules hold only addresses, chain names and flags: no quote can occur in them.
    format!(
        "set -e\nprintf '%s' '{rules}' | iptables-restore -w --noflush\n\
         for c in INPUT OUTPUT; do iptables -w -C $c -j {CHAIN} 2>/dev/null || iptables -w -I $c 1 -j {CHAIN}; done\n",
        rules = chain_rules(keep, drops)
    )
}

/// The shell script that removes the jumps and the chain, then fails unless the chain is
/// really gone.
pub fn heal_script() -> String {
    format!(
        "for c in INPUT OUTPUT; do while iptables -w -D $c -j {CHAIN} 2>/dev/null; do :; done; done\n\
         iptables -w -F {CHAIN} 2>/dev/null; iptables -w -X {CHAIN} 2>/dev/null\n\
         if iptables -w -S {CHAIN} >/dev/null 2>&1; then echo '{CHAIN} is still present' >&2; exit 1; fi\n"
    )
}

/// The addresses a node drops, read from `iptables -S CLUSTERLAB-PART` output (both the
/// `-s` and `-d` rule of each peer name it once).
pub fn parse_chain(listing: &str) -> Vec<Ipv4Addr> {
    let mut ips = BTreeSet::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"-A") || f.get(1) != Some(&CHAIN) || f.last() != Some(&"DROP") {
            continue;
        }
        for w in f.windows(2) {
            if w[0] == "-s" || w[0] == "-d" {
                let addr = w[1].strip_suffix("/32").unwrap_or(w[1]);
                if let Ok(ip) = addr.parse() {
                    ips.insert(ip);
                }
            }
        }
    }
    ips.into_iter().collect()
}

/// The groups a set of cuts describes: nodes that drop the same peers are on the same side.
/// Empty when nothing is cut.
pub fn groups_of(cuts: &Cuts) -> Vec<Vec<String>> {
    if cuts.values().all(Vec::is_empty) {
        return Vec::new();
    }
    let mut by_drops: BTreeMap<&Vec<Ipv4Addr>, Vec<String>> = BTreeMap::new();
    for (node, drops) in cuts {
        by_drops.entry(drops).or_default().push(node.clone());
    }
    let mut groups: Vec<Vec<String>> = by_drops.into_values().collect();
    groups.sort();
    groups
}

/// `node0,node1 | node2,node3,node4`, or `no partition`.
pub fn describe(cuts: &Cuts) -> String {
    let groups = groups_of(cuts);
    if groups.is_empty() {
        "no partition".into()
    } else {
        groups
            .iter()
            .map(|g| g.join(","))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// What a partition or heal did.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    /// Per running node: the peers it drops afterwards (`heal`: dropped before).
    pub cuts: Cuts,
    /// Nodes whose container is not running (left alone: a started container comes up with
    /// fresh network rules, while its peers' rules still cut it off).
    pub skipped: Vec<String>,
}

/// Canonical name (`node3`) of a node given in any form [`Cluster::resolve`] accepts.
fn canonical(c: &Cluster, name: &str) -> Result<String, FaultError> {
    Ok(ClusterNames::node_name(c.resolve(name)?))
}

async fn running(c: &Cluster, node: &str) -> Result<bool, FaultError> {
    let container = c.container_name(node)?;
    let info = crate::docker::ctx(
        format!("inspecting {container}"),
        c.docker.inspect_container(&container, None).await,
    )?;
    Ok(info.state.and_then(|s| s.running).unwrap_or(false))
}

async fn run_script(
    c: &Cluster,
    node: &str,
    what: &str,
    script: &str,
) -> Result<String, FaultError> {
    let out = c.exec(node, &["sh", "-c", script]).await?;
    if out.code != 0 {
        return Err(FaultError::Command {
            what: what.into(),
            node: node.into(),
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Cuts the cluster into `groups` (node names), replacing any earlier partition. Nodes in no
/// group stay connected to everyone. Every node's rules are installed in parallel.
pub async fn partition(c: &Cluster, groups: &[Vec<String>]) -> Result<FaultReport, FaultError> {
    let mut canon = Vec::new();
    for g in groups {
        let mut names = Vec::new();
        for n in g {
            names.push(canonical(c, n)?);
        }
        canon.push(names);
    }
    let nodes: Vec<(String, Ipv4Addr)> = c
        .node_names()
        .into_iter()
        .map(|n| {
            let ip = c.node_ip(&n)?;
            Ok((n, ip))
        })
        .collect::<Result<_, HarnessError>>()?;
    let plan = plan_cuts(&nodes, &canon)?;
    let keep = c.spec.subnet.bridge_gateway();
    let jobs = plan.iter().map(|(node, drops)| async move {
        if !running(c, node).await? {
            return Ok::<_, FaultError>((node.clone(), None));
        }
        let script = if drops.is_empty() {
            heal_script()
        } else {
            apply_script(keep, drops)
        };
        run_script(c, node, "installing partition rules", &script).await?;
        Ok((node.clone(), Some(drops.clone())))
    });
    collect(futures::future::join_all(jobs).await)
}

/// Reads every running node's partition rules.
pub async fn cuts(c: &Cluster) -> Result<FaultReport, FaultError> {
    let names = c.node_names();
    let jobs = names.iter().map(|node| async move {
        if !running(c, node).await? {
            return Ok::<_, FaultError>((node.clone(), None));
        }
        // A missing chain (never partitioned, or healed) makes `iptables -S` fail: no cuts.
        let out = c.exec(node, &["iptables", "-w", "-S", CHAIN]).await?;
        let drops = if out.code == 0 {
            parse_chain(&out.stdout)
        } else {
            Vec::new()
        };
        Ok((node.clone(), Some(drops)))
    });
    collect(futures::future::join_all(jobs).await)
}

/// Removes every partition rule from every running node; reports what was cut before.
pub async fn heal(c: &Cluster) -> Result<FaultReport, FaultError> {
    let before = cuts(c).await?;
    let script = heal_script();
    let jobs = before.cuts.keys().map(|node| {
        let script = &script;
        async move { run_script(c, node, "removing partition rules", script).await }
    });
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    Ok(before)
}

/// One node's outcome: its drops, or None when it was not running.
type NodeOutcome = Result<(String, Option<Vec<Ipv4Addr>>), FaultError>;

fn collect(results: Vec<NodeOutcome>) -> Result<FaultReport, FaultError> {
    let mut report = FaultReport::default();
    for r in results {
        match r? {
            (node, Some(drops)) => {
                report.cuts.insert(node, drops);
            }
            (node, None) => report.skipped.push(node),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<(String, Ipv4Addr)> {
        (0..n)
            .map(|i| (format!("node{i}"), Ipv4Addr::new(10, 77, 0, 10 + i as u8)))
            .collect()
    }

    fn g(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, last)
    }

    #[test]
    fn two_groups_cut_both_ways_and_nothing_inside() {
        let cuts = plan_cuts(
            &nodes(5),
            &[g(&["node0", "node1"]), g(&["node2", "node3", "node4"])],
        )
        .unwrap();
        assert_eq!(cuts["node0"], [ip(12), ip(13), ip(14)]);
        assert_eq!(cuts["node1"], [ip(12), ip(13), ip(14)]);
        for n in ["node2", "node3", "node4"] {
            assert_eq!(cuts[n], [ip(10), ip(11)], "{n}");
        }
        // Symmetric: a drops b exactly when b drops a.
        let all = nodes(5);
        for (a, a_ip) in &all {
            for (b, b_ip) in &all {
                assert_eq!(
                    cuts[a].contains(b_ip),
                    cuts[b].contains(a_ip),
                    "{a} and {b} disagree"
                );
            }
            assert!(!cuts[a].contains(a_ip), "{a} drops itself");
        }
    }

    #[test]
    fn three_groups_and_a_bridge_node() {
        let cuts = plan_cuts(
            &nodes(5),
            &[g(&["node0"]), g(&["node1"]), g(&["node2", "node3"])],
        )
        .unwrap();
        assert_eq!(cuts["node0"], [ip(11), ip(12), ip(13)]);
        assert_eq!(cuts["node1"], [ip(10), ip(12), ip(13)]);
        assert_eq!(cuts["node2"], [ip(10), ip(11)]);
        // node4 is in no group: it reaches everyone and nobody drops it.
        assert!(cuts["node4"].is_empty());
        assert!(cuts.values().all(|d| !d.contains(&ip(14))));
    }

    #[test]
    fn the_bridge_gateway_is_never_dropped() {
        let gw = Ipv4Addr::new(10, 77, 0, 1);
        let cuts = plan_cuts(&nodes(3), &[g(&["node0"]), g(&["node1", "node2"])]).unwrap();
        assert!(cuts.values().all(|d| !d.contains(&gw)));
        let rules = chain_rules(gw, &cuts["node0"]);
        let first = rules.lines().find(|l| l.starts_with("-A")).unwrap();
        assert_eq!(first, "-A CLUSTERLAB-PART -s 10.77.0.1/32 -j RETURN");
        assert!(!rules.contains("10.77.0.1/32 -j DROP"), "{rules}");
    }

    #[test]
    fn bad_groups_are_refused_with_the_reason() {
        let n = nodes(3);
        let err = |groups: &[Vec<String>]| plan_cuts(&n, groups).unwrap_err().to_string();
        assert!(err(&[g(&["node0"])]).contains("at least two groups"));
        assert!(err(&[g(&["node0"]), g(&[])]).contains("group 2 is empty"));
        assert!(matches!(
            plan_cuts(&n, &[g(&["node0"]), g(&["node0"])]),
            Err(FaultError::InTwoGroups {
                first: 1,
                second: 2,
                ..
            })
        ));
        let e = err(&[g(&["node0"]), g(&["node7"])]);
        assert!(
            e.contains("node7") && e.contains("node0, node1, node2"),
            "{e}"
        );
        let e = err(&[g(&["node0", "node1"]), g(&["node1", "node2"])]);
        assert!(e.contains("node1 is in group 1 and in group 2"), "{e}");
    }

    #[test]
    fn cli_groups_take_the_rest_or_the_from_group() {
        let all = g(&["node0", "node1", "node2", "node3"]);
        assert_eq!(
            cli_groups(&all, &g(&["node1"]), None).unwrap(),
            [g(&["node1"]), g(&["node0", "node2", "node3"])]
        );
        assert_eq!(
            cli_groups(&all, &g(&["node1"]), Some(&g(&["node3"]))).unwrap(),
            [g(&["node1"]), g(&["node3"])]
        );
        assert!(cli_groups(&all, &all, None)
            .unwrap_err()
            .to_string()
            .contains("whole cluster"));
        assert_eq!(parse_group(" node0, node2 ,,"), g(&["node0", "node2"]));
    }

    #[test]
    fn scripts_install_and_remove_the_same_chain() {
        let s = apply_script(ip(1), &[ip(12)]);
        assert!(s.contains("iptables-restore -w --noflush"), "{s}");
        assert!(
            s.contains("-A CLUSTERLAB-PART -s 10.77.0.12/32 -j DROP"),
            "{s}"
        );
        assert!(
            s.contains("-A CLUSTERLAB-PART -d 10.77.0.12/32 -j DROP"),
            "{s}"
        );
        assert!(s.contains("iptables -w -C $c -j CLUSTERLAB-PART"), "{s}");
        // The rules are embedded in single quotes: they must not contain one.
        assert!(!chain_rules(ip(1), &[ip(12)]).contains('\''));
        let h = heal_script();
        assert!(h.contains("-D $c -j CLUSTERLAB-PART"), "{h}");
        assert!(h.contains("-X CLUSTERLAB-PART"), "{h}");
    }

    #[test]
    fn chain_listing_round_trips_through_the_parser() {
        let listing = "-N CLUSTERLAB-PART\n\
            -A CLUSTERLAB-PART -s 10.77.0.1/32 -j RETURN\n\
            -A CLUSTERLAB-PART -d 10.77.0.1/32 -j RETURN\n\
            -A CLUSTERLAB-PART -s 10.77.0.13/32 -j DROP\n\
            -A CLUSTERLAB-PART -d 10.77.0.13/32 -j DROP\n\
            -A CLUSTERLAB-PART -s 10.77.0.12/32 -j DROP\n\
            -A CLUSTERLAB-PART -d 10.77.0.12/32 -j DROP\n\
            -A INPUT -s 10.77.0.99/32 -j DROP\n";
        assert_eq!(parse_chain(listing), [ip(12), ip(13)]);
        assert!(parse_chain("").is_empty());
        // What apply_script installs is what parse_chain reads back.
        let rules = chain_rules(ip(1), &[ip(10), ip(14)]);
        assert_eq!(parse_chain(&rules), [ip(10), ip(14)]);
    }

    #[test]
    fn groups_are_recovered_from_the_cuts() {
        let groups = [g(&["node0", "node1"]), g(&["node2", "node3", "node4"])];
        let cuts = plan_cuts(&nodes(5), &groups).unwrap();
        assert_eq!(groups_of(&cuts), groups);
        assert_eq!(describe(&cuts), "node0,node1 | node2,node3,node4");
        let healed: Cuts = nodes(3).into_iter().map(|(n, _)| (n, Vec::new())).collect();
        assert_eq!(describe(&healed), "no partition");
    }

    proptest::proptest! {
        /// Any assignment of nodes to groups (or to none) cuts exactly the pairs in different
        /// groups, both ways, and never a node from itself.
        #[test]
        fn cuts_are_symmetric_and_exact(assign in proptest::collection::vec(0usize..4, 2..9)) {
            let all = nodes(assign.len());
            // Group index 3 means "in no group".
            let mut groups: Vec<Vec<String>> = vec![Vec::new(); 3];
            for (i, a) in assign.iter().enumerate() {
                if *a < 3 {
                    groups[*a].push(format!("node{i}"));
                }
            }
            groups.retain(|g| !g.is_empty());
            let plan = plan_cuts(&all, &groups);
            if groups.len() < 2 {
                proptest::prop_assert!(plan.is_err());
                return Ok(());
            }
            let cuts = plan.unwrap();
            for (i, (a, _)) in all.iter().enumerate() {
                for (j, (b, b_ip)) in all.iter().enumerate() {
                    let apart = assign[i] < 3 && assign[j] < 3 && assign[i] != assign[j];
                    proptest::prop_assert_eq!(cuts[a].contains(b_ip), apart, "{} -> {}", a, b);
                }
            }
        }
    }
}
