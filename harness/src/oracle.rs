//! The oracle: what the harness believes about a cluster from what it observed, as pure
//! functions with no Docker and no network. `status`, the trials, the benchmarks and the
//! grader all decide through this module, so there is one rule for each question:
//!
//! - [`ContainerState`]: a container's state, typed (never compared as a string).
//! - [`MemberStatus`] and [`raft_leader`]: who etcd's raft leader is, from members' own reports.
//! - [`median_max`]: the statistics every benchmark reports.

use std::fmt;

pub use agent::schema::Role;

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

/// Why [`raft_leader`] found no leader; its text says what each member reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoLeader {
    #[error("no etcd member reports itself as raft leader: {0}")]
    NoneClaims(String),
    #[error("etcd members disagree on the leader: {0}")]
    Disagree(String),
}

/// etcd's raft leader as the reachable members report it: the member that calls itself
/// leader in the highest term, provided every reachable member of that term names it (an
/// isolated old leader of a lower term that still believes it leads is outvoted by the
/// term). Unreachable members (`Err`) neither help nor hinder.
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
        .any(|(_, s)| s.term == st.term && s.leader_id != st.member_id);
    if dissent {
        return Err(NoLeader::Disagree(describe(probes)));
    }
    Ok(leader)
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
}
