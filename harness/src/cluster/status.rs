//! What the harness sees of a cluster: each node's container state and its etcd member's own
//! report, the `/clusterlab/` keys, and the status table. The probe of one etcd member lives
//! here once; the election rule lives in [`crate::oracle`].

use crate::oracle::{ContainerState, MemberStatus, Role};
use clusterlab_core::schema::{self, ClusterView, LeaderRecord};
use serde::Serialize;
use std::time::Duration;

/// How long one member probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a member could not be asked for its status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("etcd at {endpoint} unreachable: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd status from {endpoint}: {source}")]
    Status {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoint} sent no header")]
    NoHeader { endpoint: String },
    #[error("etcd at {endpoint} did not answer within {} s", PROBE_TIMEOUT.as_secs())]
    Timeout { endpoint: String },
    #[error("its container is {0}")]
    NotRunning(ContainerState),
    #[error("it is a member: it runs no etcd")]
    NoMember,
}

/// Whether a node runs an etcd member (`etcd.voters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Runs an etcd member.
    Voter,
    /// Runs no etcd; its programs are clients of the voters.
    Member,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Voter => "voter",
            NodeKind::Member => "member",
        }
    }
}

/// One member's answer: its Status, and (when asked) the `/clusterlab/` keys it holds.
#[derive(Debug, Clone)]
pub struct MemberProbe {
    pub status: MemberStatus,
    pub view: Option<ClusterView>,
}

/// Asks the member at `endpoint` (`http://ip:port`) for its Status and, given the cluster's
/// peers (`view_of`), the `/clusterlab/` view they give, judged as every node judges it
/// (serializable read, so a member cut off from the majority still answers with what it
/// has). At most [`PROBE_TIMEOUT`].
pub async fn probe_member(
    endpoint: &str,
    view_of: Option<&[schema::Peer]>,
) -> Result<MemberProbe, ProbeError> {
    let fut = async {
        let mut client = clusterlab_core::etcd::connect(endpoint)
            .await
            .map_err(|source| ProbeError::Unreachable {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let st = client.status().await.map_err(|source| ProbeError::Status {
            endpoint: endpoint.to_string(),
            source,
        })?;
        let member_id = st
            .header()
            .map(|h| h.member_id())
            .ok_or_else(|| ProbeError::NoHeader {
                endpoint: endpoint.to_string(),
            })?;
        let view = if let Some(peers) = view_of {
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_serializable();
            client
                .get(schema::PREFIX, Some(opts))
                .await
                .ok()
                .map(|resp| {
                    let kvs = resp.kvs().iter().map(|kv| schema::RawKv {
                        key: kv.key_str().unwrap_or(""),
                        value: kv.value(),
                        lease: kv.lease(),
                        mod_revision: kv.mod_revision(),
                    });
                    ClusterView::from_etcd(kvs, peers).0
                })
        } else {
            None
        };
        Ok(MemberProbe {
            status: MemberStatus {
                member_id,
                leader_id: st.leader(),
                term: st.raft_term(),
            },
            view,
        })
    };
    match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout {
            endpoint: endpoint.to_string(),
        }),
    }
}

/// One node as the harness sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub name: String,
    pub container: String,
    pub ip: String,
    /// Docker's container state (running, exited, …; `missing` when there is none).
    pub state: ContainerState,
    /// Voter (runs etcd) or member (a client of the voters).
    pub kind: NodeKind,
    /// The role the node's own etcd member reports; None if unreachable or if it knows no
    /// leader.
    pub etcd_role: Option<Role>,
    pub member_id: Option<String>,
    /// The raft leader's member id as this member reports it.
    pub raft_leader: Option<String>,
    pub raft_term: Option<u64>,
    /// Whether `/clusterlab/nodes/<name>` exists.
    pub has_key: bool,
}

impl NodeState {
    /// A node with only its container state known.
    pub fn new(name: String, container: String, ip: String, state: ContainerState) -> Self {
        NodeState {
            name,
            container,
            ip,
            state,
            kind: NodeKind::Voter,
            etcd_role: None,
            member_id: None,
            raft_leader: None,
            raft_term: None,
            has_key: false,
        }
    }

    /// Records what the node's member reported.
    pub fn with_member(mut self, st: &MemberStatus) -> Self {
        self.etcd_role = st.role();
        self.member_id = Some(schema::member_id_hex(st.member_id));
        self.raft_leader = Some(schema::member_id_hex(st.leader_id));
        self.raft_term = Some(st.term);
        self
    }

    fn role_text(&self) -> String {
        match (self.etcd_role, &self.member_id) {
            (Some(r), _) => r.to_string(),
            (None, Some(_)) => "no-leader".into(),
            (None, None) => "unreachable".into(),
        }
    }
}

/// The whole cluster as the harness sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub nodes: Vec<NodeState>,
    /// What `/clusterlab/leader` says.
    pub leader_key: Option<LeaderRecord>,
    /// Node name of etcd's raft leader, if the reachable members agree on one.
    pub etcd_leader: Option<String>,
    pub gateway: Option<GatewayState>,
}

/// The gateway container.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayState {
    pub container: String,
    pub state: ContainerState,
    pub url: Option<String>,
}

impl ClusterStatus {
    /// A one-line summary for wait diagnostics.
    pub fn summary(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{}[{} {} key={}]",
                    n.name,
                    n.state,
                    n.role_text(),
                    if n.has_key { "yes" } else { "no" }
                )
            })
            .collect();
        format!(
            "{} leader_key={} etcd_leader={}",
            nodes.join(" "),
            self.leader_key
                .as_ref()
                .map(|l| l.name.as_str())
                .unwrap_or("none"),
            self.etcd_leader.as_deref().unwrap_or("none")
        )
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:<22} {:<14} {:<9} {:<6} {:<10} {:<17} {}\n",
            "NODE", "CONTAINER", "IP", "STATE", "KIND", "ETCD ROLE", "MEMBER", "KEY"
        );
        for n in &self.nodes {
            let role = if n.member_id.is_some() {
                n.role_text()
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "{:<8} {:<22} {:<14} {:<9} {:<6} {:<10} {:<17} {}\n",
                n.name,
                n.container,
                n.ip,
                n.state.as_str(),
                n.kind.as_str(),
                role,
                n.member_id.as_deref().unwrap_or("-"),
                if n.has_key { "yes" } else { "no" }
            ));
        }
        out.push_str(&format!(
            "etcd leader: {}   /clusterlab/leader: {}\n",
            self.etcd_leader.as_deref().unwrap_or("none"),
            self.leader_key
                .as_ref()
                .map(|l| format!("{} ({}, member {})", l.name, l.ip, l.member_id))
                .unwrap_or_else(|| "none".into())
        ));
        if let Some(g) = &self.gateway {
            out.push_str(&format!(
                "gateway: {} {} {}\n",
                g.container,
                g.state,
                g.url.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_field_names_and_string_values() {
        let st = MemberStatus {
            member_id: 0xab,
            leader_id: 0xab,
            term: 3,
        };
        let n = NodeState::new(
            "node0".into(),
            "lab-node0".into(),
            "10.77.0.10".into(),
            ContainerState::Running,
        )
        .with_member(&st);
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["etcd_role"], "leader");
        assert_eq!(v["member_id"], "ab");
        assert_eq!(v["raft_leader"], "ab");
        assert_eq!(v["raft_term"], 3);
        assert_eq!(v["has_key"], false);
        assert_eq!(v["kind"], "voter");
        let follower = MemberStatus {
            member_id: 1,
            leader_id: 2,
            term: 3,
        };
        let f = NodeState::new("n".into(), "c".into(), "ip".into(), ContainerState::Exited)
            .with_member(&follower);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["etcd_role"], "follower");
        assert_eq!(v["state"], "exited");
    }
}
