//! What the grader judges, as plain functions over what it observed: the `<ip> hostN` lines
//! of a hosts file, etcd's raft leader from the members' own status, and who answers on the
//! leader service's port. Every problem renders as a sentence a student can act on.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// A node of the graded cluster.
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

/// N when `word` is `hostN` (no sign, no leading zeros).
fn host_number(word: &str) -> Option<u32> {
    let digits = word.strip_prefix("host")?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Every `hostN` name in a hosts file with the address of its line. Comments and other
/// names (localhost, Docker's own line) are ignored.
pub fn parse_host_lines(text: &str) -> Vec<HostLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(address) = words.next() else {
            continue;
        };
        for w in words {
            if let Some(number) = host_number(w) {
                out.push(HostLine {
                    number,
                    address: address.to_string(),
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

/// Judges one node's hosts file: host0 is the leader, every live node appears exactly once,
/// killed nodes and strangers do not appear, and the numbers run host0…host(k-1).
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

/// What one member's etcd said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    pub leader_id: u64,
    pub term: u64,
}

/// etcd's raft leader as the reachable members report it: the member that calls itself
/// leader in the highest term, provided every reachable member of that term names it.
/// On failure, says what each member reported.
pub fn raft_leader(probes: &[(NodeRef, Result<MemberStatus, String>)]) -> Result<NodeRef, String> {
    let ok: Vec<(&NodeRef, &MemberStatus)> = probes
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().map(|s| (n, s)))
        .collect();
    let describe = || {
        probes
            .iter()
            .map(|(n, r)| match r {
                Ok(s) if s.leader_id == 0 => format!("{} sees no leader", n.name),
                Ok(s) if s.leader_id == s.member_id => {
                    format!("{} says it leads (term {})", n.name, s.term)
                }
                Ok(s) => {
                    let who = ok
                        .iter()
                        .find(|(_, o)| o.member_id == s.leader_id)
                        .map(|(m, _)| m.name.clone())
                        .unwrap_or_else(|| format!("member {:x}", s.leader_id));
                    format!("{} follows {who} (term {})", n.name, s.term)
                }
                Err(e) => format!("{}: {e}", n.name),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let Some(&(leader, st)) = ok
        .iter()
        .filter(|(_, s)| s.leader_id != 0 && s.leader_id == s.member_id)
        .max_by_key(|(_, s)| s.term)
    else {
        return Err(format!(
            "no etcd member reports itself as raft leader: {}",
            describe()
        ));
    };
    let dissent = ok
        .iter()
        .any(|(_, s)| s.term == st.term && s.leader_id != st.member_id);
    if dissent {
        return Err(format!(
            "etcd members disagree on the leader: {}",
            describe()
        ));
    }
    Ok(leader.clone())
}

/// What the harness saw when it asked a node's leader-service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceProbe {
    /// An HTTP response with this status.
    Http(u16),
    /// Nothing usable: refused, timed out, not HTTP (the text says which).
    Silent(String),
}

impl ServiceProbe {
    /// Whether this counts as the service running: any HTTP answer below 500.
    pub fn serving(&self) -> bool {
        matches!(self, ServiceProbe::Http(code) if *code < 500)
    }
}

impl fmt::Display for ServiceProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceProbe::Http(code) => write!(f, "HTTP {code}"),
            ServiceProbe::Silent(why) => f.write_str(why),
        }
    }
}

/// Judges the leader service: it answers on the leader and on no other live node.
pub fn judge_service(
    port: u16,
    leader: &NodeRef,
    probes: &[(NodeRef, ServiceProbe)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (n, p) in probes {
        if n == leader && !p.serving() {
            problems.push(format!(
                "the leader {n} does not serve on port {port} ({p}); the web service must run on the leader"
            ));
        } else if n != leader && p.serving() {
            problems.push(format!(
                "{n} answers on port {port} ({p}) but is not the leader ({leader} is); the web service must run on the leader only"
            ));
        }
    }
    problems
}

/// Joins problems into one reason, naming at most `max` and counting the rest.
pub fn summarize(problems: &[String], max: usize) -> String {
    let mut s = problems
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > max {
        s.push_str(&format!("; and {} more", problems.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeRef {
        NodeRef {
            name: format!("node{i}"),
            ip: Ipv4Addr::new(10, 79, 1, 10 + i),
        }
    }

    fn nodes() -> Vec<NodeRef> {
        (0..3).map(node).collect()
    }

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
        assert_eq!(
            lines,
            vec![
                HostLine {
                    number: 0,
                    address: "10.79.1.12".into()
                },
                HostLine {
                    number: 1,
                    address: "10.79.1.10".into()
                },
                HostLine {
                    number: 2,
                    address: "10.79.1.11".into()
                },
            ]
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

    fn st(member: u64, leader: u64, term: u64) -> Result<MemberStatus, String> {
        Ok(MemberStatus {
            member_id: member,
            leader_id: leader,
            term,
        })
    }

    #[test]
    fn raft_leader_needs_agreement() {
        let n = nodes();
        let agreed = vec![
            (n[0].clone(), st(1, 2, 3)),
            (n[1].clone(), st(2, 2, 3)),
            (n[2].clone(), Err("connection refused".into())),
        ];
        assert_eq!(raft_leader(&agreed).unwrap(), n[1]);
        // An old leader in a lower term does not count against the new one.
        let stale = vec![
            (n[0].clone(), st(1, 1, 2)),
            (n[1].clone(), st(2, 3, 4)),
            (n[2].clone(), st(3, 3, 4)),
        ];
        assert_eq!(raft_leader(&stale).unwrap(), n[2]);
        let none = vec![(n[0].clone(), st(1, 0, 3)), (n[1].clone(), st(2, 0, 3))];
        let e = raft_leader(&none).unwrap_err();
        assert!(e.contains("node0 sees no leader"), "{e}");
        let split = vec![(n[0].clone(), st(1, 1, 5)), (n[1].clone(), st(2, 3, 5))];
        assert!(raft_leader(&split).unwrap_err().contains("disagree"));
    }

    #[test]
    fn service_on_the_leader_only() {
        let n = nodes();
        let ok = vec![
            (n[0].clone(), ServiceProbe::Http(200)),
            (
                n[1].clone(),
                ServiceProbe::Silent("connection refused".into()),
            ),
            (n[2].clone(), ServiceProbe::Http(503)),
        ];
        assert!(judge_service(8888, &n[0], &ok).is_empty());
        let bad = vec![
            (
                n[0].clone(),
                ServiceProbe::Silent("connection refused".into()),
            ),
            (n[1].clone(), ServiceProbe::Http(302)),
        ];
        let p = judge_service(8888, &n[0], &bad);
        assert_eq!(p.len(), 2);
        assert!(p[0].contains(
            "the leader node0 (10.79.1.10) does not serve on port 8888 (connection refused)"
        ));
        assert!(p[1]
            .contains("node1 (10.79.1.11) answers on port 8888 (HTTP 302) but is not the leader"));
    }

    #[test]
    fn summarize_counts_what_it_leaves_out() {
        let p: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        assert_eq!(summarize(&p, 3), "p0; p1; p2; and 2 more");
        assert_eq!(summarize(&p[..2], 3), "p0; p1");
    }
}
