//! The etcd key schema of clusterlab: the one place that knows key names and value shapes.
//!
//! Every node keeps `/clusterlab/nodes/<name>` on its own lease; the node whose etcd member
//! is the raft leader also keeps `/clusterlab/leader`. Values are JSON so that stock
//! `etcdctl get --prefix /clusterlab/` shows them readably.
//!
//! The block clusterlab writes into hosts files is in [`crate::hosts`].

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Prefix under which every clusterlab key lives.
pub const PREFIX: &str = "/clusterlab/";
/// Prefix of the per-node keys.
pub const NODES_PREFIX: &str = "/clusterlab/nodes/";
/// The single leader key.
pub const LEADER_KEY: &str = "/clusterlab/leader";

/// Key of one node's record.
pub fn node_key(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}

/// Role of a node as its own etcd member reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        })
    }
}

/// Value of `/clusterlab/nodes/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub ip: String,
    pub role: Role,
    /// etcd member id, in hex as etcdctl prints it.
    pub member_id: String,
    /// Unix time in seconds when this node last changed role.
    pub since: u64,
}

/// Value of `/clusterlab/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub name: String,
    pub ip: String,
    pub member_id: String,
}

/// Formats an etcd member id the way etcdctl does (lower-case hex, no padding).
pub fn member_id_hex(id: u64) -> String {
    format!("{id:x}")
}

/// Why a key/value read from etcd was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("key {key}: value is not valid JSON for this key: {reason}")]
    BadJson { key: String, reason: String },
    #[error("key {key}: node name {name:?} is not a valid hostname label")]
    BadName { key: String, name: String },
    #[error("key {key}: ip {ip:?} is not an IPv4 address")]
    BadIp { key: String, ip: String },
    #[error("key {key}: record names {name:?} but the key names {expected:?}")]
    NameMismatch {
        key: String,
        name: String,
        expected: String,
    },
}

/// True when `name` is a valid hostname label (RFC 1123): 1–63 of `[A-Za-z0-9-]`,
/// not starting or ending with `-`.
pub fn is_valid_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_name_ip(key: &str, name: &str, ip: &str) -> Result<Ipv4Addr, SchemaError> {
    if !is_valid_label(name) {
        return Err(SchemaError::BadName {
            key: key.into(),
            name: name.into(),
        });
    }
    ip.parse::<Ipv4Addr>().map_err(|_| SchemaError::BadIp {
        key: key.into(),
        ip: ip.into(),
    })
}

/// A live node as seen in etcd, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    pub role: Role,
    pub member_id: String,
}

/// The cluster as the `/clusterlab/` prefix describes it: live nodes and the leader key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Live nodes, sorted by IP.
    pub nodes: Vec<Member>,
    /// What `/clusterlab/leader` says, if present and valid.
    pub leader: Option<LeaderRecord>,
}

impl ClusterView {
    /// Builds a view from the key/value pairs under [`PREFIX`]. Entries that do not validate
    /// are returned as errors beside the view instead of being included.
    pub fn from_kvs<'a>(
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (ClusterView, Vec<SchemaError>) {
        let mut view = ClusterView::default();
        let mut errors = Vec::new();
        for (key, value) in kvs {
            if key == LEADER_KEY {
                match parse_leader(value) {
                    Ok(l) => view.leader = Some(l),
                    Err(e) => errors.push(e),
                }
            } else if let Some(name) = key.strip_prefix(NODES_PREFIX) {
                match parse_node(name, value) {
                    Ok(m) => view.nodes.push(m),
                    Err(e) => errors.push(e),
                }
            }
        }
        view.nodes
            .sort_by(|a, b| a.ip.cmp(&b.ip).then(a.name.cmp(&b.name)));
        (view, errors)
    }

    /// The live node that the leader key names, if it is live.
    pub fn leader_member(&self) -> Option<&Member> {
        let l = self.leader.as_ref()?;
        self.nodes.iter().find(|m| m.name == l.name)
    }
}

/// Parses and validates the leader key's value.
pub fn parse_leader(value: &[u8]) -> Result<LeaderRecord, SchemaError> {
    let rec: LeaderRecord = serde_json::from_slice(value).map_err(|e| SchemaError::BadJson {
        key: LEADER_KEY.into(),
        reason: e.to_string(),
    })?;
    check_name_ip(LEADER_KEY, &rec.name, &rec.ip)?;
    Ok(rec)
}

/// Parses and validates one node key's value; `key_name` is the part after [`NODES_PREFIX`].
pub fn parse_node(key_name: &str, value: &[u8]) -> Result<Member, SchemaError> {
    let key = node_key(key_name);
    let rec: NodeRecord = serde_json::from_slice(value).map_err(|e| SchemaError::BadJson {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    let ip = check_name_ip(&key, &rec.name, &rec.ip)?;
    if rec.name != key_name {
        return Err(SchemaError::NameMismatch {
            key,
            name: rec.name,
            expected: key_name.into(),
        });
    }
    Ok(Member {
        name: rec.name,
        ip,
        role: rec.role,
        member_id: rec.member_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, role: Role) -> Vec<u8> {
        serde_json::to_vec(&NodeRecord {
            name: name.into(),
            ip: ip.into(),
            role,
            member_id: "abc".into(),
            since: 1,
        })
        .unwrap()
    }

    #[test]
    fn keys_are_under_the_prefix() {
        assert_eq!(node_key("node1"), "/clusterlab/nodes/node1");
        assert!(LEADER_KEY.starts_with(PREFIX));
        assert!(NODES_PREFIX.starts_with(PREFIX));
    }

    #[test]
    fn role_encodes_lowercase() {
        let v = node("node0", "10.0.0.1", Role::Leader);
        let s = String::from_utf8(v).unwrap();
        assert!(s.contains(r#""role":"leader""#), "{s}");
    }

    #[test]
    fn member_id_matches_etcdctl_format() {
        assert_eq!(member_id_hex(0x8e9e05c52164694d), "8e9e05c52164694d");
    }

    #[test]
    fn view_sorts_by_numeric_ip_and_skips_bad_entries() {
        let a = node("node9", "10.77.0.9", Role::Follower);
        let b = node("node10", "10.77.0.10", Role::Leader);
        let bad = node("evil\nline", "10.77.0.11", Role::Follower);
        let badip = node("node12", "10.77.0.300", Role::Follower);
        let leader = br#"{"name":"node10","ip":"10.77.0.10","member_id":"1"}"#;
        let kvs: Vec<(&str, &[u8])> = vec![
            ("/clusterlab/nodes/node10", &b),
            ("/clusterlab/nodes/node9", &a),
            ("/clusterlab/nodes/evil\nline", &bad),
            ("/clusterlab/nodes/node12", &badip),
            ("/clusterlab/leader", leader),
        ];
        let (view, errors) = ClusterView::from_kvs(kvs);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let names: Vec<_> = view.nodes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["node9", "node10"]);
        assert_eq!(view.leader_member().unwrap().name, "node10");
    }

    #[test]
    fn node_key_and_record_must_agree() {
        let v = node("node1", "10.0.0.1", Role::Follower);
        assert!(matches!(
            parse_node("node2", &v),
            Err(SchemaError::NameMismatch { .. })
        ));
    }

    #[test]
    fn labels() {
        assert!(is_valid_label("node0"));
        assert!(is_valid_label("a-b"));
        assert!(!is_valid_label("-a"));
        assert!(!is_valid_label(""));
        assert!(!is_valid_label("a b"));
        assert!(!is_valid_label(&"a".repeat(64)));
    }
}
