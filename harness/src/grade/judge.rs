//! What the grader judges, as plain functions over what it observed: who answers on the
//! leader service's port, and how problems are summed up in a reason. The hosts-table rule
//! (re-exported here) and etcd's raft leader are the oracle's ([`crate::oracle`]). Every problem renders as a sentence a student can act on.

use std::fmt;

// The hosts-table rule lives in the oracle, shared with the trials and the benchmarks.
pub use crate::oracle::{judge_hosts, parse_host_lines, DeadNode, HostLine, HostsProblem, NodeRef};

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

    use crate::oracle::fixtures::nodes;

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
