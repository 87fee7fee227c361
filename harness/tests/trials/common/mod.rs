//! Helpers every trial area shares: node sets, container logs, and each member's etcd status
//! as the oracle reads it.

use anyhow::Context;
use futures::StreamExt;
use harness::oracle::MemberStatus;
use harness::{Cluster, ClusterStatus};
use std::fmt;

/// `all` without the nodes in `gone`, in order.
pub fn except(all: &[String], gone: &[&str]) -> Vec<String> {
    all.iter()
        .filter(|n| !gone.contains(&n.as_str()))
        .cloned()
        .collect()
}

/// A node's whole container log (the agent, its plugins and sshd write there).
pub async fn node_log(c: &Cluster, node: &str) -> anyhow::Result<String> {
    let container = c.container_name(node)?;
    let mut logs = c.docker.logs(
        &container,
        Some(bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        }),
    );
    let mut text = String::new();
    while let Some(chunk) = logs.next().await {
        text.push_str(&chunk.context("reading container log")?.to_string());
    }
    Ok(text)
}

/// A member the status could not reach (its container is down or its etcd does not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unreachable")
    }
}

/// What each node in `among` said about itself in `st`, in the oracle's terms.
pub fn member_statuses(
    st: &ClusterStatus,
    among: &[String],
) -> Vec<(String, Result<MemberStatus, Unreachable>)> {
    let hex = |s: &Option<String>| s.as_deref().and_then(|h| u64::from_str_radix(h, 16).ok());
    st.nodes
        .iter()
        .filter(|n| among.contains(&n.name))
        .map(|n| {
            let status = match (hex(&n.member_id), hex(&n.raft_leader), n.raft_term) {
                (Some(member_id), Some(leader_id), Some(term)) => Ok(MemberStatus {
                    member_id,
                    leader_id,
                    term,
                }),
                _ => Err(Unreachable),
            };
            (n.name.clone(), status)
        })
        .collect()
}
