//! The offline input of `hostsgen render --from-json`: a cluster described in a JSON file
//! instead of read from etcd, turned into the same validated [`ClusterView`].
//!
//! Format (all of it documented in `hostsgen render --help`):
//! ```json
//! {
//!   "leader": {"name": "node2", "ip": "10.77.0.12", "member_id": "8e9e05c52164694d"},
//!   "nodes": [
//!     {"name": "node0", "ip": "10.77.0.10", "role": "follower", "member_id": "1", "since": 0},
//!     {"name": "node2", "ip": "10.77.0.12"}
//!   ]
//! }
//! ```
//! `leader` and its `member_id` are optional; each node needs `name` and `ip`, and may carry
//! the other fields of a `/clusterlab/nodes/<name>` value. The records go through the exact
//! code path of values read from etcd, so a bad name or IP is refused the same way.

use clusterlab_core::schema::{self, ClusterView, LeaderRecord, NodeRecord, Role, SchemaError};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineCluster {
    #[serde(default)]
    pub leader: Option<OfflineLeader>,
    #[serde(default)]
    pub nodes: Vec<OfflineNode>,
}

/// The leader key's value; `member_id` may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineLeader {
    pub name: String,
    pub ip: String,
    #[serde(default)]
    pub member_id: String,
}

/// One node key's value; only `name` and `ip` matter for rendering.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineNode {
    pub name: String,
    pub ip: String,
    #[serde(default = "follower")]
    pub role: Role,
    #[serde(default)]
    pub member_id: String,
    #[serde(default)]
    pub since: u64,
}

fn follower() -> Role {
    Role::Follower
}

/// Why an offline file was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("not a clusterlab cluster description: {0}")]
    Json(#[from] serde_json::Error),
    #[error("node {0:?} is listed twice")]
    Duplicate(String),
}

/// Parses the file's text into a view. Entries that fail validation are returned beside the
/// view, as [`ClusterView::from_records`] does. The file is the operator's own
/// description, so no peer list or lease applies (etcd's keys go through
/// [`ClusterView::from_etcd`]).
pub fn parse(text: &str) -> Result<(ClusterView, Vec<SchemaError>), OfflineError> {
    let file: OfflineCluster = serde_json::from_str(text)?;
    let mut kvs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for n in file.nodes {
        if !names.insert(n.name.clone()) {
            return Err(OfflineError::Duplicate(n.name));
        }
        let rec = NodeRecord {
            name: n.name,
            ip: n.ip,
            role: n.role,
            member_id: n.member_id,
            since: n.since,
        };
        kvs.push((schema::node_key(&rec.name), serde_json::to_vec(&rec)?));
    }
    if let Some(l) = file.leader {
        let rec = LeaderRecord {
            name: l.name,
            ip: l.ip,
            member_id: l.member_id,
            term: 0,
        };
        kvs.push((schema::LEADER_KEY.to_string(), serde_json::to_vec(&rec)?));
    }
    Ok(ClusterView::from_records(
        kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;

    #[test]
    fn documented_example_renders() {
        let text = r#"{
          "leader": {"name": "node2", "ip": "10.77.0.12", "member_id": "8e9e05c52164694d"},
          "nodes": [
            {"name": "node0", "ip": "10.77.0.10", "role": "follower", "member_id": "1", "since": 0},
            {"name": "node2", "ip": "10.77.0.12"},
            {"name": "node1", "ip": "10.77.0.11"}
          ]
        }"#;
        let (view, errors) = parse(text).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            render(&view),
            "# BEGIN clusterlab\n10.77.0.12 host0 node2\n10.77.0.10 host1 node0\n\
             10.77.0.11 host2 node1\n# END clusterlab\n"
        );
    }

    #[test]
    fn bad_entries_are_reported_not_rendered() {
        let text = r#"{"nodes": [
            {"name": "ok", "ip": "10.0.0.1"},
            {"name": "new\nline", "ip": "10.0.0.2"},
            {"name": "badip", "ip": "10.0.0.300"}
        ]}"#;
        let (view, errors) = parse(text).unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            render(&view),
            "# BEGIN clusterlab\n10.0.0.1 host1 ok\n# END clusterlab\n"
        );
    }

    #[test]
    fn typos_and_duplicates_are_errors() {
        let e = parse(r#"{"nodes": [], "leadr": null}"#).unwrap_err();
        assert!(e.to_string().contains("leadr"), "{e}");
        let e = parse(r#"{"nodes": [{"name":"a","ip":"1.1.1.1"},{"name":"a","ip":"1.1.1.2"}]}"#)
            .unwrap_err();
        assert!(
            matches!(e, OfflineError::Duplicate(ref n) if n == "a"),
            "{e}"
        );
        let e = parse(r#"{"nodes": [{"name": "a"}]}"#).unwrap_err();
        assert!(e.to_string().contains("ip"), "{e}");
    }
}
