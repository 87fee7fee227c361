//! Assembling the trust files from accepted keys: the cluster user's authorized_keys and the
//! system-wide /etc/ssh/ssh_known_hosts.
//!
//! Host names in known_hosts come from three places: the file name in `hosts/` (the node
//! name), the static peer list of the configuration (its IP), and the clusterlab block of the
//! hosts file that hostsgen keeps (its IP and its current `hostN` alias). Reading the hosts
//! block rather than etcd means known_hosts agrees with what `ssh host2` actually resolves
//! on this node, and sshkeys keeps working, with node names and IPs, when hostsgen or etcd is
//! down. Only hostname labels and IPv4 addresses ever reach known_hosts, so no pattern
//! (`*`, `?`, `!`) or list separator can be smuggled in; an alias that the block gives to two
//! different nodes (a rewrite caught half-way) is left out rather than bound to either.

use crate::pubkey::key_line;
use crate::scan::Published;
use clusterlab_core::config::Peer;
use clusterlab_core::hosts::{self, HostsLine};
use clusterlab_core::schema::is_valid_label;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use clusterlab_core::hosts::{BEGIN as BLOCK_BEGIN, END as BLOCK_END};

/// One line of the hosts block as sshkeys uses it: an IPv4 address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNames {
    pub ip: Ipv4Addr,
    pub names: Vec<String>,
}

/// The lines between [`BLOCK_BEGIN`] and [`BLOCK_END`], read by clusterlab-core's
/// [`HostsLine::parse`]. Stricter than that reading, deliberately: a line is kept only when
/// its address is IPv4 and every name is a hostname label, so nothing else can reach
/// known_hosts; other lines are skipped. A missing or unterminated block gives nothing.
pub fn parse_hosts_block(text: &str) -> Vec<HostNames> {
    let Some(block) = hosts::block_lines(text) else {
        return Vec::new();
    };
    block
        .into_iter()
        .filter_map(|line| HostsLine::parse(line).ok().flatten())
        .filter(|l| l.names.iter().all(|n| is_valid_label(n)))
        .filter_map(|l| {
            Some(HostNames {
                ip: l.ipv4()?,
                names: l.names.iter().map(|n| n.to_string()).collect(),
            })
        })
        .collect()
}

/// The lines of a hosts block that agree with the configured peers: a line is kept only when
/// exactly one of its names is a peer and its address is that peer's planned address (the
/// hosts files are on volumes other nodes can write, and hostsgen only ever writes such
/// lines). Returns the kept lines and a description of each dropped one.
pub fn trusted_block(block: Vec<HostNames>, peers: &[Peer]) -> (Vec<HostNames>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for l in block {
        let named: Vec<&Peer> = peers.iter().filter(|p| l.names.contains(&p.name)).collect();
        match named.as_slice() {
            [p] if p.ip == l.ip => kept.push(l),
            [p] => dropped.push(format!(
                "{} {}: {} is planned at {}",
                l.ip,
                l.names.join(" "),
                p.name,
                p.ip
            )),
            [] => dropped.push(format!(
                "{} {}: names no configured peer",
                l.ip,
                l.names.join(" ")
            )),
            _ => dropped.push(format!(
                "{} {}: names more than one peer",
                l.ip,
                l.names.join(" ")
            )),
        }
    }
    (kept, dropped)
}

/// The names under which each node's host key is listed, by node name.
pub fn host_names(
    nodes: &[&str],
    peers: &[Peer],
    block: &[HostNames],
) -> BTreeMap<String, Vec<String>> {
    // An alias is usable only when exactly one line of the block carries it.
    let mut alias_count: BTreeMap<&str, usize> = BTreeMap::new();
    for l in block {
        for n in l.names.iter().collect::<BTreeSet<_>>() {
            *alias_count.entry(n).or_default() += 1;
        }
    }
    let mut out = BTreeMap::new();
    for &node in nodes {
        let mut labels = BTreeSet::new();
        let mut ips = BTreeSet::new();
        if let Some(p) = peers.iter().find(|p| p.name == node) {
            ips.insert(p.ip);
        }
        for l in block.iter().filter(|l| l.names.iter().any(|n| n == node)) {
            ips.insert(l.ip);
            for n in &l.names {
                if n != node
                    && alias_count.get(n.as_str()) == Some(&1)
                    && !nodes.contains(&n.as_str())
                {
                    labels.insert(n.clone());
                }
            }
        }
        let mut names = vec![node.to_string()];
        names.extend(labels);
        names.extend(ips.iter().map(Ipv4Addr::to_string));
        out.insert(node.to_string(), names);
    }
    out
}

/// authorized_keys for the cluster user: one line per distinct key, in node-name order,
/// commented with the node that published it.
pub fn authorized_keys(users: &[Published], source: &str) -> String {
    let mut out =
        format!("# Managed by clusterlab sshkeys from {source}; rewritten on every change.\n");
    let mut seen: Vec<&Published> = Vec::new();
    for p in users {
        if seen.iter().any(|s| crate::pubkey::same_key(&s.key, &p.key)) {
            continue;
        }
        seen.push(p);
        out.push_str(&key_line(&p.key, &format!("clusterlab:{}", p.name)));
        out.push('\n');
    }
    out
}

/// ssh_known_hosts: one line per published host key, listed under every name in `names`.
pub fn known_hosts(
    hosts: &[Published],
    names: &BTreeMap<String, Vec<String>>,
    source: &str,
) -> String {
    let mut out =
        format!("# Managed by clusterlab sshkeys from {source}; rewritten on every change.\n");
    for p in hosts {
        let list = names
            .get(&p.name)
            .map(|n| n.join(","))
            .unwrap_or_else(|| p.name.clone());
        out.push_str(&format!("{list} {}\n", key_line(&p.key, "")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubkey::parse_key_line;

    const ED1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqSea1WekzyAtsjW+EcfX4VWyqVg9SFf7P2gvDnPAvW";

    fn published(name: &str, line: &str) -> Published {
        Published {
            name: name.into(),
            key: parse_key_line(line).unwrap(),
        }
    }

    fn peers() -> Vec<Peer> {
        clusterlab_core::config::parse_peers("node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12")
            .unwrap()
    }

    const HOSTS: &str = "127.0.0.1\tlocalhost\n10.77.0.11\tnode1\n\
        # BEGIN clusterlab\n10.77.0.12 host0 node2\n10.77.0.10 host1 node0\n\
        10.77.0.11 host2 node1\n# END clusterlab\n";

    #[test]
    fn parses_only_the_block() {
        let block = parse_hosts_block(HOSTS);
        assert_eq!(block.len(), 3);
        assert_eq!(block[0].ip, "10.77.0.12".parse::<Ipv4Addr>().unwrap());
        assert_eq!(block[0].names, ["host0", "node2"]);
    }

    #[test]
    fn hostile_or_broken_blocks_give_nothing_bad() {
        assert!(parse_hosts_block("10.0.0.1 host0 node0\n").is_empty());
        assert!(parse_hosts_block("# BEGIN clusterlab\n10.0.0.1 host0 node0\n").is_empty());
        let evil = "# BEGIN clusterlab\n10.0.0.1 * node0\n10.0.0.2 host1,node0 x\n\
            300.0.0.1 host2 node2\n10.0.0.3 !host3\n10.0.0.4\n10.0.0.5 host5 node5 # note\n\
            # END clusterlab\n";
        let block = parse_hosts_block(evil);
        assert_eq!(
            block,
            [HostNames {
                ip: "10.0.0.5".parse().unwrap(),
                names: vec!["host5".into(), "node5".into()]
            }]
        );
    }

    #[test]
    fn names_join_node_alias_and_ip() {
        let block = parse_hosts_block(HOSTS);
        let names = host_names(&["node0", "node1", "node2", "node7"], &peers(), &block);
        assert_eq!(names["node2"], ["node2", "host0", "10.77.0.12"]);
        assert_eq!(names["node0"], ["node0", "host1", "10.77.0.10"]);
        // Known only from its published file: listed under its name alone.
        assert_eq!(names["node7"], ["node7"]);
        // Without a hosts block, names and IPs still work.
        let bare = host_names(&["node1"], &peers(), &[]);
        assert_eq!(bare["node1"], ["node1", "10.77.0.11"]);
    }

    #[test]
    fn an_alias_claimed_twice_is_dropped() {
        let text = "# BEGIN clusterlab\n10.77.0.12 host0 node2\n10.77.0.10 host0 node0\n\
            10.77.0.11 host1 node1\n# END clusterlab\n";
        let names = host_names(
            &["node0", "node1", "node2"],
            &peers(),
            &parse_hosts_block(text),
        );
        assert_eq!(names["node0"], ["node0", "10.77.0.10"]);
        assert_eq!(names["node2"], ["node2", "10.77.0.12"]);
        assert_eq!(names["node1"], ["node1", "host1", "10.77.0.11"]);
    }

    #[test]
    fn a_node_name_is_never_an_alias_of_another_node() {
        let text = "# BEGIN clusterlab\n10.77.0.12 host0 node2 node1\n# END clusterlab\n";
        let names = host_names(&["node1", "node2"], &peers(), &parse_hosts_block(text));
        assert_eq!(names["node2"], ["node2", "host0", "10.77.0.12"]);
    }

    #[test]
    fn authorized_keys_dedupes_and_comments_with_node() {
        let users = [
            published("node0", &format!("{ED1} whatever")),
            published("node1", ED2),
            published("node2", ED1),
        ];
        let text = authorized_keys(&users, "/shared/ssh/users");
        let lines: Vec<_> = text.lines().collect();
        assert!(lines[0].starts_with('#'));
        assert_eq!(lines[1], format!("{ED1} clusterlab:node0"));
        assert_eq!(lines[2], format!("{ED2} clusterlab:node1"));
        assert_eq!(lines.len(), 3);
        assert!(!text.contains("whatever"));
    }

    #[test]
    fn known_hosts_lines_list_all_names() {
        let hosts = [published("node1", ED1), published("node2", ED2)];
        let names = host_names(&["node1", "node2"], &peers(), &parse_hosts_block(HOSTS));
        let text = known_hosts(&hosts, &names, "/shared/ssh/hosts");
        let lines: Vec<_> = text.lines().skip(1).collect();
        assert_eq!(lines[0], format!("node1,host2,10.77.0.11 {ED1}"));
        assert_eq!(lines[1], format!("node2,host0,10.77.0.12 {ED2}"));
    }

    #[test]
    fn block_lines_must_agree_with_the_peers() {
        let text = "# BEGIN clusterlab\n10.77.0.12 host0 node2\n10.9.9.9 host1 node0\n\
            10.77.0.66 host2 evil\n10.77.0.11 host3 node1 node2\n10.77.0.11 host4 node1\n\
            # END clusterlab\n";
        let (kept, dropped) = trusted_block(parse_hosts_block(text), &peers());
        let ips: Vec<String> = kept.iter().map(|l| l.ip.to_string()).collect();
        assert_eq!(ips, ["10.77.0.12", "10.77.0.11"]);
        assert_eq!(dropped.len(), 3, "{dropped:?}");
        assert!(dropped[0].contains("planned at 10.77.0.10"), "{dropped:?}");
        // Nothing of the dropped lines reaches known_hosts.
        let names = host_names(&["node0", "node1", "node2"], &peers(), &kept);
        assert_eq!(names["node0"], ["node0", "10.77.0.10"]);
        assert_eq!(names["node1"], ["node1", "host4", "10.77.0.11"]);
    }
}
