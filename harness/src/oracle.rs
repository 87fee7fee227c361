//! The oracle: what the harness believes about a cluster from what it observed, as pure
//! functions with no Docker and no network. `status`, the trials, the benchmarks and the
//! grader all decide through this module, so there is one rule for each question:
//!
//! - [`ContainerState`]: a container's state, typed (never compared as a string).
//! - [`MemberStatus`] and [`raft_leader`]: who etcd's raft leader is, from members' own reports;
//!   [`unanimous_leader`] when every member must answer and agree.
//! - The hosts table: [`judge_hosts`] is the rule any correct table obeys (every live node
//!   listed once with its IP, etcd's leader as host0, a dead node absent, host0…host(k-1) with
//!   no gaps); [`expected_block`] is clusterlab's exact rendering of that rule (followers in
//!   ascending IP order, node names as aliases), which [`check_blocks`] compares node by node.
//! - [`median_max`] and [`percentile`]: the statistics every benchmark reports.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

pub use clusterlab_core::schema::Role;

/// A container's state as Docker reports it, plus `Missing` for a container that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// No container of that name exists.
    Missing,
    /// A state this harness does not know (a newer engine); kept as Docker spelled it.
    Other(String),
}

impl ContainerState {
    /// From Docker's spelling (`running`, `exited`, …).
    pub fn parse(s: &str) -> ContainerState {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            "" | "missing" => ContainerState::Missing,
            other => ContainerState::Other(other.to_string()),
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running)
    }

    pub fn as_str(&self) -> &str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Missing => "missing",
            ContainerState::Other(s) => s,
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ContainerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ContainerState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ContainerState::parse(&s))
    }
}

/// What one etcd member said about itself (its Status call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// The leader this member knows of; 0 when it knows none.
    pub leader_id: u64,
    pub term: u64,
}

impl MemberStatus {
    /// The member's own view of its role; `None` while it knows no leader.
    pub fn role(&self) -> Option<Role> {
        if self.leader_id == 0 {
            None
        } else if self.leader_id == self.member_id {
            Some(Role::Leader)
        } else {
            Some(Role::Follower)
        }
    }
}

/// Why [`raft_leader`] or [`unanimous_leader`] found no leader; its text says what each
/// member reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoLeader {
    #[error("no etcd member reports itself as raft leader: {0}")]
    NoneClaims(String),
    #[error("etcd members disagree on the leader: {0}")]
    Disagree(String),
    #[error("{count} etcd members report themselves as raft leader: {seen}")]
    Several { count: usize, seen: String },
}

/// etcd's raft leader as the reachable members report it: the member that calls itself
/// leader in the highest term, provided no reachable member of that term names another
/// leader (an isolated old leader of a lower term that still believes it leads is outvoted
/// by the term). A member that knows no leader (a follower cut off from the leader, which
/// with pre-vote stays in the leader's term) does not dissent, and unreachable members
/// (`Err`) neither help nor hinder. [`unanimous_leader`] is the stricter rule for "the group
/// has settled".
pub fn raft_leader<N: fmt::Display, E: fmt::Display>(
    probes: &[(N, Result<MemberStatus, E>)],
) -> Result<&N, NoLeader> {
    let ok: Vec<(&N, &MemberStatus)> = probes
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().map(|s| (n, s)))
        .collect();
    let Some(&(leader, st)) = ok
        .iter()
        .filter(|(_, s)| s.role() == Some(Role::Leader))
        .max_by_key(|(_, s)| s.term)
    else {
        return Err(NoLeader::NoneClaims(describe(probes)));
    };
    let dissent = ok
        .iter()
        .any(|(_, s)| s.term == st.term && s.leader_id != 0 && s.leader_id != st.member_id);
    if dissent {
        return Err(NoLeader::Disagree(describe(probes)));
    }
    Ok(leader)
}

/// The leader that every listed member follows, and their common term: stricter than
/// [`raft_leader`], for checks that a group has settled. Every member must answer, exactly one
/// calls itself leader, and every member names it in the same term.
pub fn unanimous_leader<N: fmt::Display, E: fmt::Display>(
    probes: &[(N, Result<MemberStatus, E>)],
) -> Result<(&N, u64), NoLeader> {
    let leaders: Vec<(&N, &MemberStatus)> = probes
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().map(|s| (n, s)))
        .filter(|(_, s)| s.role() == Some(Role::Leader))
        .collect();
    let (leader, st) = match leaders.as_slice() {
        [] => return Err(NoLeader::NoneClaims(describe(probes))),
        [one] => *one,
        many => {
            return Err(NoLeader::Several {
                count: many.len(),
                seen: describe(probes),
            })
        }
    };
    let all_follow = probes.iter().all(|(_, r)| {
        r.as_ref()
            .is_ok_and(|s| s.leader_id == st.member_id && s.term == st.term)
    });
    if all_follow {
        Ok((leader, st.term))
    } else {
        Err(NoLeader::Disagree(describe(probes)))
    }
}

/// One phrase per member: what it reported, or why it could not be asked.
fn describe<N: fmt::Display, E: fmt::Display>(probes: &[(N, Result<MemberStatus, E>)]) -> String {
    probes
        .iter()
        .map(|(n, r)| match r {
            Ok(s) => match s.role() {
                None => format!("{n} sees no leader"),
                Some(Role::Leader) => format!("{n} says it leads (term {})", s.term),
                Some(Role::Follower) => {
                    let who = probes
                        .iter()
                        .find(|(_, o)| o.as_ref().is_ok_and(|o| o.member_id == s.leader_id))
                        .map(|(m, _)| m.to_string())
                        .unwrap_or_else(|| format!("member {:x}", s.leader_id));
                    format!("{n} follows {who} (term {})", s.term)
                }
            },
            Err(e) => format!("{n}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Median and maximum of a sample (NaN for both when it is empty).
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

/// The `p`-th percentile (0–100) of sorted values, nearest rank (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// The hosts table.

/// The clusterlab block's markers and its extraction, as hostsgen writes them: the harness
/// reads what hostsgen wrote and compares it with what it computes here.
pub use clusterlab_core::hosts::{extract_block as block_of, BEGIN, END};
use clusterlab_core::hosts::{parse_alias, HostEntry, HostsLine};

/// A node of a cluster: its name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub name: String,
    pub ip: Ipv4Addr,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.ip)
    }
}

/// One `<address> hostN` mapping found in a hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLine {
    /// N of hostN.
    pub number: u32,
    /// The address as written.
    pub address: String,
}

impl HostLine {
    pub fn alias(&self) -> String {
        format!("host{}", self.number)
    }
}

/// Every `hostN` name in a hosts file with the address of its line. Comments and other
/// names (localhost, Docker's own line) are ignored.
pub fn parse_host_lines(text: &str) -> Vec<HostLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        // A line whose address does not parse names no reachable host: the table is judged
        // as if it were absent (the node then shows up as missing).
        let Ok(Some(entry)) = HostsLine::parse(line) else {
            continue;
        };
        for name in &entry.names {
            if let Some(number) = parse_alias(name) {
                out.push(HostLine {
                    number: number as u32,
                    address: entry.ip.to_string(),
                });
            }
        }
    }
    out
}

/// A node that was killed, and how long ago at the time of the observation.
#[derive(Debug, Clone)]
pub struct DeadNode {
    pub node: NodeRef,
    pub killed_s: f64,
}

/// One thing wrong with what a node's hosts file says.
#[derive(Debug, Clone, PartialEq)]
pub enum HostsProblem {
    Unreadable {
        on: String,
        file: String,
        error: String,
    },
    NoHost0 {
        on: String,
        file: String,
        leader: String,
    },
    WrongHost0 {
        on: String,
        file: String,
        listed: String,
        leader: String,
    },
    AliasTwice {
        on: String,
        file: String,
        alias: String,
        addresses: Vec<String>,
    },
    Missing {
        on: String,
        file: String,
        node: String,
    },
    ListedTwice {
        on: String,
        file: String,
        node: String,
        aliases: Vec<String>,
    },
    DeadListed {
        on: String,
        file: String,
        node: String,
        alias: String,
        killed_s: f64,
    },
    Stranger {
        on: String,
        file: String,
        address: String,
        alias: String,
    },
    Numbering {
        on: String,
        file: String,
        found: Vec<String>,
        expected: String,
    },
}

impl HostsProblem {
    /// True for the problem of a killed node still listed.
    pub fn is_dead_listed(&self) -> bool {
        matches!(self, HostsProblem::DeadListed { .. })
    }
    /// True for a host0 that is missing or not the leader.
    pub fn is_host0(&self) -> bool {
        matches!(
            self,
            HostsProblem::NoHost0 { .. } | HostsProblem::WrongHost0 { .. }
        )
    }
}

impl fmt::Display for HostsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HostsProblem::*;
        match self {
            Unreadable { on, file, error } => write!(f, "cannot read {file} of {on}: {error}"),
            NoHost0 { on, file, leader } => write!(
                f,
                "{file} of {on} has no host0 line; etcd's raft leader is {leader}, so expected `<its ip> host0`"
            ),
            WrongHost0 {
                on,
                file,
                listed,
                leader,
            } => write!(
                f,
                "{file} of {on} names {listed} as host0, but etcd's raft leader is {leader}"
            ),
            AliasTwice {
                on,
                file,
                alias,
                addresses,
            } => write!(
                f,
                "{file} of {on} gives {alias} to {} addresses ({}); each hostN must name one node",
                addresses.len(),
                addresses.join(", ")
            ),
            Missing { on, file, node } => write!(
                f,
                "{node} is alive but has no hostN line in {file} of {on}"
            ),
            ListedTwice {
                on,
                file,
                node,
                aliases,
            } => write!(
                f,
                "{node} appears {} times ({}) in {file} of {on}; each live node must appear once",
                aliases.len(),
                aliases.join(", ")
            ),
            DeadListed {
                on,
                file,
                node,
                alias,
                killed_s,
            } => write!(
                f,
                "{node} still listed as {alias} in {file} of {on} {killed_s:.1} s after it was killed"
            ),
            Stranger {
                on,
                file,
                address,
                alias,
            } => write!(
                f,
                "{file} of {on} lists {address} as {alias}, which is no node of this cluster"
            ),
            Numbering {
                on,
                file,
                found,
                expected,
            } => write!(
                f,
                "{file} of {on} numbers its nodes {}; expected {expected} with no gaps",
                found.join(", ")
            ),
        }
    }
}

/// The rule of a correct hosts table, judged on one node's file: host0 is the leader, every
/// live node appears exactly once, killed nodes and strangers do not appear, and the numbers
/// run host0…host(k-1).
pub fn judge_hosts(
    on: &NodeRef,
    file: &str,
    lines: &[HostLine],
    leader: &NodeRef,
    live: &[NodeRef],
    dead: &[DeadNode],
    all: &[NodeRef],
) -> Vec<HostsProblem> {
    let on_s = on.to_string();
    let file = file.to_string();
    let mut problems = Vec::new();
    // hostN → addresses
    let mut by_alias: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for l in lines {
        by_alias
            .entry(l.number)
            .or_default()
            .push(l.address.clone());
    }
    let node_of = |addr: &str| all.iter().find(|n| n.ip.to_string() == addr);
    match by_alias.get(&0).map(|a| a.as_slice()) {
        None => problems.push(HostsProblem::NoHost0 {
            on: on_s.clone(),
            file: file.clone(),
            leader: leader.to_string(),
        }),
        Some([one]) if *one != leader.ip.to_string() => problems.push(HostsProblem::WrongHost0 {
            on: on_s.clone(),
            file: file.clone(),
            listed: node_of(one)
                .map(|n| n.to_string())
                .unwrap_or_else(|| one.clone()),
            leader: leader.to_string(),
        }),
        _ => {}
    }
    for (number, addrs) in &by_alias {
        if addrs.len() > 1 {
            problems.push(HostsProblem::AliasTwice {
                on: on_s.clone(),
                file: file.clone(),
                alias: format!("host{number}"),
                addresses: addrs.clone(),
            });
        }
    }
    for n in live {
        let aliases: Vec<String> = lines
            .iter()
            .filter(|l| l.address == n.ip.to_string())
            .map(HostLine::alias)
            .collect();
        match aliases.len() {
            0 => problems.push(HostsProblem::Missing {
                on: on_s.clone(),
                file: file.clone(),
                node: n.to_string(),
            }),
            1 => {}
            _ => problems.push(HostsProblem::ListedTwice {
                on: on_s.clone(),
                file: file.clone(),
                node: n.to_string(),
                aliases,
            }),
        }
    }
    for l in lines {
        if let Some(d) = dead.iter().find(|d| d.node.ip.to_string() == l.address) {
            problems.push(HostsProblem::DeadListed {
                on: on_s.clone(),
                file: file.clone(),
                node: d.node.to_string(),
                alias: l.alias(),
                killed_s: d.killed_s,
            });
        } else if !live.iter().any(|n| n.ip.to_string() == l.address) {
            problems.push(HostsProblem::Stranger {
                on: on_s.clone(),
                file: file.clone(),
                address: l.address.clone(),
                alias: l.alias(),
            });
        }
    }
    let numbers: Vec<u32> = by_alias.keys().copied().collect();
    let contiguous = numbers.iter().enumerate().all(|(i, n)| *n == i as u32);
    if !contiguous {
        problems.push(HostsProblem::Numbering {
            on: on_s,
            file,
            found: numbers.iter().map(|n| format!("host{n}")).collect(),
            expected: format!("host0…host{}", numbers.len().max(1).saturating_sub(1)),
        });
    }
    problems
}

/// The block every clusterlab node should show: `leader` as host0 (when given and live), the
/// other live nodes as host1, host2 … in ascending numeric IP order, node names as aliases.
/// With a live leader it obeys [`judge_hosts`] (see the tests); it is stricter, fixing the
/// order and the aliases, so every node must show the very same text.
pub fn expected_block(leader: Option<&str>, live: &[NodeRef]) -> String {
    let mut nodes: Vec<&NodeRef> = live.iter().collect();
    nodes.sort_by_key(|n| n.ip);
    let leader = leader.and_then(|l| live.iter().find(|n| n.name == l));
    let mut out = format!("{BEGIN}\n");
    if let Some(l) = leader {
        out.push_str(&format!("{} host0 {}\n", l.ip, l.name));
    }
    let followers = nodes.iter().filter(|n| Some(**n) != leader);
    for (k, n) in followers.enumerate() {
        out.push_str(&format!("{} host{} {}\n", n.ip, k + 1, n.name));
    }
    out.push_str(&format!("{END}\n"));
    out
}

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
pub fn describe_block(block: Option<&str>) -> String {
    let Some(b) = block else {
        return "(no clusterlab block)".into();
    };
    let entries: Vec<String> = b
        .lines()
        .filter(|l| l.trim() != BEGIN && l.trim() != END)
        .map(|l| match HostEntry::parse(l) {
            Ok(e) => format!("{}={}", e.alias(), e.name),
            Err(_) => format!("MALFORMED({l:?})"),
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
    block
        .lines()
        .filter_map(|l| HostEntry::parse(l).ok())
        .find(|e| e.index == 0)
        .map(|e| e.name)
}

/// A node's name and its clusterlab block as read (`None`: the file has none).
pub type NodeBlock = (String, Option<String>);

/// One phrase per node: `node0: host0=node2 host1=node0 | node1: …`.
pub fn describe_blocks(blocks: &[NodeBlock]) -> String {
    blocks
        .iter()
        .map(|(n, b)| format!("{n}: {}", describe_block(b.as_deref())))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Nodes whose block is not the expected one: what was wanted and what every node shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "want [{}]; have {}",
    describe_block(Some(expected)),
    describe_blocks(blocks)
)]
pub struct BlockMismatch {
    pub expected: String,
    /// Every node's block as read (not only the wrong ones), by node name.
    pub blocks: Vec<NodeBlock>,
}

/// Ok when every node's block is exactly `expected`.
pub fn check_blocks(blocks: &[NodeBlock], expected: &str) -> Result<(), BlockMismatch> {
    if blocks.iter().all(|(_, b)| b.as_deref() == Some(expected)) {
        Ok(())
    } else {
        Err(BlockMismatch {
            expected: expected.to_string(),
            blocks: blocks.to_vec(),
        })
    }
}

/// Nodes for unit tests of the rules here and of the grader's judge.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::NodeRef;
    use std::net::Ipv4Addr;

    /// `node<i>` at 10.79.1.(10 + i).
    pub fn node(i: u8) -> NodeRef {
        NodeRef {
            name: format!("node{i}"),
            ip: Ipv4Addr::new(10, 79, 1, 10 + i),
        }
    }

    /// node0 … node2.
    pub fn nodes() -> Vec<NodeRef> {
        (0..3).map(node).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(member: u64, leader: u64, term: u64) -> Result<MemberStatus, &'static str> {
        Ok(MemberStatus {
            member_id: member,
            leader_id: leader,
            term,
        })
    }

    #[test]
    fn raft_leader_needs_agreement() {
        let all_agree = vec![
            ("n0", st(1, 1, 2)),
            ("n1", st(2, 1, 2)),
            ("n2", st(3, 1, 2)),
        ];
        assert_eq!(*raft_leader(&all_agree).unwrap(), "n0");
        let unreachable = vec![
            ("n0", Err("connection refused")),
            ("n1", st(2, 2, 3)),
            ("n2", st(3, 2, 3)),
        ];
        assert_eq!(*raft_leader(&unreachable).unwrap(), "n1");
        // An isolated old leader of a lower term is outvoted by the term.
        let stale = vec![
            ("n0", st(1, 1, 2)),
            ("n1", st(2, 2, 3)),
            ("n2", st(3, 2, 3)),
        ];
        assert_eq!(*raft_leader(&stale).unwrap(), "n1");
        // A follower cut off from the leader knows none but names no other one.
        let cut_off = vec![
            ("n0", st(1, 1, 2)),
            ("n1", st(2, 0, 2)),
            ("n2", st(3, 1, 2)),
        ];
        assert_eq!(*raft_leader(&cut_off).unwrap(), "n0");
        let none = vec![("n0", st(1, 0, 2)), ("n1", st(2, 0, 2))];
        let e = raft_leader(&none).unwrap_err();
        assert!(matches!(e, NoLeader::NoneClaims(_)), "{e}");
        assert!(e.to_string().contains("n0 sees no leader"), "{e}");
        let split = vec![("n0", st(1, 1, 4)), ("n1", st(2, 3, 4))];
        let e = raft_leader(&split).unwrap_err();
        assert!(matches!(e, NoLeader::Disagree(_)), "{e}");
        assert!(
            e.to_string().contains("n1 follows member 3 (term 4)"),
            "{e}"
        );
    }

    #[test]
    fn roles_from_status() {
        assert_eq!(st(1, 1, 1).unwrap().role(), Some(Role::Leader));
        assert_eq!(st(1, 2, 1).unwrap().role(), Some(Role::Follower));
        assert_eq!(st(1, 0, 1).unwrap().role(), None);
    }

    #[test]
    fn container_states_round_trip() {
        for s in [
            "created",
            "running",
            "paused",
            "restarting",
            "removing",
            "exited",
            "dead",
        ] {
            assert_eq!(ContainerState::parse(s).as_str(), s);
        }
        assert_eq!(ContainerState::parse(""), ContainerState::Missing);
        assert!(ContainerState::parse("running").is_running());
        assert_eq!(
            ContainerState::parse("frozen"),
            ContainerState::Other("frozen".into())
        );
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(&[4.0, 1.0, 3.0, 2.0]), (2.5, 4.0));
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert!(median_max(&[]).0.is_nan());
    }

    #[test]
    fn unanimous_leader_needs_every_member() {
        let agreed = vec![
            ("n0", st(1, 2, 3)),
            ("n1", st(2, 2, 3)),
            ("n2", st(3, 2, 3)),
        ];
        assert_eq!(unanimous_leader(&agreed).unwrap(), (&"n1", 3));
        // raft_leader accepts an unreachable member; unanimity does not.
        let unreachable = vec![
            ("n0", st(1, 2, 3)),
            ("n1", st(2, 2, 3)),
            ("n2", Err("connection refused")),
        ];
        assert_eq!(*raft_leader(&unreachable).unwrap(), "n1");
        let e = unanimous_leader(&unreachable).unwrap_err();
        assert!(matches!(e, NoLeader::Disagree(_)), "{e}");
        assert!(e.to_string().contains("n2: connection refused"), "{e}");
        // A stale leader of a lower term: raft_leader outvotes it, unanimity refuses it.
        let stale = vec![
            ("n0", st(1, 1, 2)),
            ("n1", st(2, 2, 3)),
            ("n2", st(3, 2, 3)),
        ];
        let e = unanimous_leader(&stale).unwrap_err();
        assert!(matches!(e, NoLeader::Several { count: 2, .. }), "{e}");
        let lagging = vec![("n0", st(1, 1, 4)), ("n1", st(2, 1, 3))];
        assert!(matches!(
            unanimous_leader(&lagging),
            Err(NoLeader::Disagree(_))
        ));
        let none = vec![("n0", st(1, 0, 4))];
        assert!(matches!(
            unanimous_leader(&none),
            Err(NoLeader::NoneClaims(_))
        ));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    use super::fixtures::{node, nodes};

    fn judge(text: &str, leader: u8, live: &[u8], dead: &[u8]) -> Vec<String> {
        let live: Vec<NodeRef> = live.iter().map(|i| node(*i)).collect();
        let dead: Vec<DeadNode> = dead
            .iter()
            .map(|i| DeadNode {
                node: node(*i),
                killed_s: 45.0,
            })
            .collect();
        judge_hosts(
            &node(0),
            "/etc/hosts",
            &parse_host_lines(text),
            &node(leader),
            &live,
            &dead,
            &nodes(),
        )
        .iter()
        .map(|p| p.to_string())
        .collect()
    }

    #[test]
    fn parses_host_lines_and_ignores_the_rest() {
        let text = "127.0.0.1 localhost\n# 10.0.0.9 host7\n10.79.1.12\thost0 node2\n\
                    10.79.1.10 host1\n10.79.1.11 node1 host2 # x\n10.79.1.13 host01 hostx\n";
        let lines = parse_host_lines(text);
        let want = [(0, "10.79.1.12"), (1, "10.79.1.10"), (2, "10.79.1.11")];
        assert_eq!(
            lines,
            want.map(|(number, a)| HostLine {
                number,
                address: a.into()
            })
        );
    }

    #[test]
    fn a_correct_table_has_no_problem_whatever_the_follower_order() {
        let ok = "127.0.0.1 localhost\n10.79.1.11 host0\n10.79.1.12 host1\n10.79.1.10 host2\n";
        assert!(judge(ok, 1, &[0, 1, 2], &[]).is_empty());
        let clusterlab = "127.0.0.1 localhost\n10.79.1.10 node0\n# BEGIN clusterlab\n\
                          10.79.1.11 host0 node1\n10.79.1.10 host1 node0\n10.79.1.12 host2 node2\n# END clusterlab\n";
        assert!(judge(clusterlab, 1, &[0, 1, 2], &[]).is_empty());
    }

    #[test]
    fn host0_must_be_the_leader() {
        let p = judge(
            "10.79.1.10 host0\n10.79.1.11 host1\n10.79.1.12 host2\n",
            2,
            &[0, 1, 2],
            &[],
        );
        assert_eq!(
            p,
            ["/etc/hosts of node0 (10.79.1.10) names node0 (10.79.1.10) as host0, but etcd's raft leader is node2 (10.79.1.12)"]
        );
        let p = judge(
            "10.79.1.11 host1\n10.79.1.12 host2\n10.79.1.10 host3\n",
            0,
            &[0, 1, 2],
            &[],
        );
        assert!(p[0].contains("has no host0 line"), "{p:?}");
        assert!(
            p.iter()
                .any(|s| s.contains("numbers its nodes host1, host2, host3; expected host0…host2")),
            "{p:?}"
        );
    }

    #[test]
    fn a_dead_node_still_listed_says_how_long_after_the_kill() {
        let p = judge(
            "10.79.1.10 host0\n10.79.1.11 host1\n10.79.1.12 host2\n",
            0,
            &[0, 1],
            &[2],
        );
        assert_eq!(
            p,
            ["node2 (10.79.1.12) still listed as host2 in /etc/hosts of node0 (10.79.1.10) 45.0 s after it was killed"]
        );
    }

    #[test]
    fn missing_duplicate_and_stranger_lines_are_named() {
        let p = judge(
            "10.79.1.10 host0\n10.79.1.10 host1\n10.9.9.9 host2\n",
            0,
            &[0, 1, 2],
            &[],
        );
        let all = p.join("\n");
        assert!(
            all.contains("node1 (10.79.1.11) is alive but has no hostN line"),
            "{all}"
        );
        assert!(
            all.contains("node2 (10.79.1.12) is alive but has no hostN line"),
            "{all}"
        );
        assert!(
            all.contains("node0 (10.79.1.10) appears 2 times (host0, host1)"),
            "{all}"
        );
        assert!(
            all.contains("lists 10.9.9.9 as host2, which is no node"),
            "{all}"
        );
        let p = judge(
            "10.79.1.10 host0\n10.79.1.11 host1\n10.79.1.12 host1\n",
            0,
            &[0, 1, 2],
            &[],
        );
        assert!(p.join("\n").contains("gives host1 to 2 addresses"), "{p:?}");
    }

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
        assert_eq!(describe_block(Some(BLOCK)), "host0=node2 host1=node0");
        assert_eq!(describe_block(None), "(no clusterlab block)");
        assert_eq!(host0_of(BLOCK).as_deref(), Some("node2"));
    }

    fn plan(i: u32) -> NodeRef {
        // The IP plan of a /16 cluster: node i at host address 10+i.
        let ip = u32::from(Ipv4Addr::new(10, 77, 0, 0)) + 10 + i;
        NodeRef {
            name: format!("node{i}"),
            ip: Ipv4Addr::from(ip),
        }
    }

    #[test]
    fn expected_block_orders_by_numeric_ip() {
        // node89 is at .99 and node90 at .100, where text order would flip them.
        let live: Vec<NodeRef> = [90, 0, 89, 5].map(plan).to_vec();
        let b = expected_block(Some("node5"), &live);
        assert_eq!(
            b,
            "# BEGIN clusterlab\n10.77.0.15 host0 node5\n10.77.0.10 host1 node0\n\
             10.77.0.99 host2 node89\n10.77.0.100 host3 node90\n# END clusterlab\n"
        );
        // A leader that is not live is not listed, and nobody is host0.
        let b = expected_block(Some("node7"), &live);
        assert!(b.contains(" host1 node0\n") && !b.contains("host0"), "{b}");
    }

    #[test]
    fn the_expected_block_obeys_the_rule() {
        // Every live set and leader: what clusterlab must show is a correct table.
        let all: Vec<NodeRef> = (0..6).map(plan).collect();
        for mask in 1u32..64 {
            let live: Vec<NodeRef> = all
                .iter()
                .filter(|n| mask & (1 << (n.ip.octets()[3] - 10)) != 0)
                .cloned()
                .collect();
            let dead: Vec<DeadNode> = all
                .iter()
                .filter(|n| !live.contains(n))
                .map(|n| DeadNode {
                    node: n.clone(),
                    killed_s: 1.0,
                })
                .collect();
            for leader in &live {
                let text = format!("{DOCKER}{}", expected_block(Some(&leader.name), &live));
                let problems = judge_hosts(
                    &live[0],
                    "/etc/hosts",
                    &parse_host_lines(&text),
                    leader,
                    &live,
                    &dead,
                    &all,
                );
                assert!(problems.is_empty(), "{text}: {problems:?}");
            }
        }
    }

    #[test]
    fn block_checks_name_every_node() {
        let blocks = vec![
            ("node0".to_string(), Some(BLOCK.to_string())),
            ("node1".to_string(), None),
        ];
        assert_eq!(check_blocks(&blocks[..1], BLOCK), Ok(()));
        let e = check_blocks(&blocks, BLOCK).unwrap_err();
        assert_eq!(
            e.to_string(),
            "want [host0=node2 host1=node0]; have node0: host0=node2 host1=node0 | node1: (no clusterlab block)"
        );
    }
}
