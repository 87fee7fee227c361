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
    /// The raft term in which the writer's own member reported itself leader when it wrote
    /// the key. Writers never replace a record of a higher term (see docs/CONTRACT.md); 0 in
    /// a record that does not carry it.
    #[serde(default)]
    pub term: u64,
}

/// Formats an etcd member id the way etcdctl does (lower-case hex, no padding).
pub fn member_id_hex(id: u64) -> String {
    format!("{id:x}")
}

/// The largest value a reader decodes: a real record is about 120 bytes.
pub const MAX_VALUE_BYTES: usize = 4096;

/// Why a key/value read from etcd was not accepted. Keys and names are printed escaped
/// (`{:?}`): they come from etcd and may hold anything.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("key {key:?}: value is not valid JSON for this key: {reason}")]
    BadJson { key: String, reason: String },
    #[error("key {key:?}: value of {bytes} bytes is larger than the {MAX_VALUE_BYTES} bytes a record may have")]
    TooLarge { key: String, bytes: usize },
    #[error("key {key:?}: node name {name:?} is not a valid hostname label")]
    BadName { key: String, name: String },
    #[error("key {key:?}: ip {ip:?} is not an IPv4 address")]
    BadIp { key: String, ip: String },
    #[error("key {key:?}: record names {name:?} but the key names {expected:?}")]
    NameMismatch {
        key: String,
        name: String,
        expected: String,
    },
    #[error("key {key:?}: {name:?} is not one of the configured peers")]
    NotAPeer { key: String, name: String },
    #[error("key {key:?}: {name} is planned at {planned}, the record says {ip}")]
    WrongIp {
        key: String,
        name: String,
        ip: Ipv4Addr,
        planned: Ipv4Addr,
    },
    #[error("key {key:?}: not attached to a lease (a node keeps its keys on its lease; this one was put by hand)")]
    NoLease { key: String },
    #[error("key {key:?}: on lease {lease:x}, but {name}'s node key is on lease {node_lease:x} (a leader keeps both keys on its one lease)")]
    LeaseMismatch {
        key: String,
        name: String,
        lease: i64,
        node_lease: i64,
    },
}

impl SchemaError {
    /// The key the refused entry was read from.
    pub fn key(&self) -> &str {
        match self {
            SchemaError::BadJson { key, .. }
            | SchemaError::TooLarge { key, .. }
            | SchemaError::BadName { key, .. }
            | SchemaError::BadIp { key, .. }
            | SchemaError::NameMismatch { key, .. }
            | SchemaError::NotAPeer { key, .. }
            | SchemaError::WrongIp { key, .. }
            | SchemaError::NoLease { key }
            | SchemaError::LeaseMismatch { key, .. } => key,
        }
    }
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

/// One initial member of the cluster, at its planned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Why a `peers` list (`name=ip,name=ip`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeersError {
    #[error("entry {entry:?} is not of the form name=ip")]
    NotNameIp { entry: String },
    #[error("name {name:?} is not a valid hostname label")]
    BadName { name: String },
    #[error("entry {entry:?}: {ip:?} is not an IPv4 address")]
    BadIp { entry: String, ip: String },
    #[error("name {name:?} appears twice")]
    DuplicateName { name: String },
    #[error("address {ip} appears twice")]
    DuplicateIp { ip: Ipv4Addr },
    #[error("no peers given (expected name=ip,name=ip,…)")]
    Empty,
}

/// Parses `name=ip,name=ip` (the configuration's `peers`, `CLUSTERLAB_PEERS`).
pub fn parse_peers(s: &str) -> Result<Vec<Peer>, PeersError> {
    let mut peers = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, ip) = item
            .split_once('=')
            .ok_or_else(|| PeersError::NotNameIp { entry: item.into() })?;
        if !is_valid_label(name) {
            return Err(PeersError::BadName { name: name.into() });
        }
        let ip: Ipv4Addr = ip.parse().map_err(|_| PeersError::BadIp {
            entry: item.into(),
            ip: ip.into(),
        })?;
        if peers.iter().any(|p: &Peer| p.name == name) {
            return Err(PeersError::DuplicateName { name: name.into() });
        }
        if peers.iter().any(|p: &Peer| p.ip == ip) {
            return Err(PeersError::DuplicateIp { ip });
        }
        peers.push(Peer {
            name: name.into(),
            ip,
        });
    }
    if peers.is_empty() {
        return Err(PeersError::Empty);
    }
    Ok(peers)
}

/// Checks that `name` is a configured peer planned at `ip`.
pub fn check_planned(
    key: &str,
    name: &str,
    ip: Ipv4Addr,
    peers: &[Peer],
) -> Result<(), SchemaError> {
    match peers.iter().find(|p| p.name == name) {
        None => Err(SchemaError::NotAPeer {
            key: key.into(),
            name: name.into(),
        }),
        Some(p) if p.ip != ip => Err(SchemaError::WrongIp {
            key: key.into(),
            name: name.into(),
            ip,
            planned: p.ip,
        }),
        Some(_) => Ok(()),
    }
}

/// One key/value as etcd returned it, with what a reader needs to judge it: the lease it is
/// attached to (0: none) and the revision it was last written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawKv<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub lease: i64,
    pub mod_revision: i64,
}

/// A refused entry, with the revision it was written at (so it is reported once per write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub mod_revision: i64,
    pub error: SchemaError,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (revision {})", self.error, self.mod_revision)
    }
}

/// Which refusals were already reported: each refused key is logged once per revision it
/// was written at, however often a reader re-reads it.
#[derive(Debug, Clone, Default)]
pub struct RejectLog {
    seen: std::collections::BTreeSet<(String, i64)>,
}

impl RejectLog {
    /// The refusals in `now` not reported yet. Keys no longer refused are forgotten, so a key
    /// that is refused again later is reported again.
    pub fn fresh<'r>(&mut self, now: &'r [Rejected]) -> Vec<&'r Rejected> {
        let current: std::collections::BTreeSet<(String, i64)> = now
            .iter()
            .map(|r| (r.error.key().to_string(), r.mod_revision))
            .collect();
        let fresh = now
            .iter()
            .filter(|r| {
                !self
                    .seen
                    .contains(&(r.error.key().to_string(), r.mod_revision))
            })
            .collect();
        self.seen = current;
        fresh
    }
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
    /// Builds the view a node trusts from the key/values under [`PREFIX`] as etcd returned
    /// them. A node key `/clusterlab/nodes/<x>` is used only when `<x>` is one of `peers`,
    /// its record's IP is that peer's planned IP and the key is on a lease; the leader key
    /// only when it passes [`trusted_leader`] and is on the same lease as the node key of the
    /// node it names (when that key is present). Every other entry is returned refused,
    /// beside the view, with its reason.
    pub fn from_etcd<'a>(
        kvs: impl IntoIterator<Item = RawKv<'a>>,
        peers: &[Peer],
    ) -> (ClusterView, Vec<Rejected>) {
        let mut view = ClusterView::default();
        let mut rejected = Vec::new();
        let mut leases: Vec<(String, i64)> = Vec::new();
        let mut leader: Option<(LeaderRecord, i64, i64)> = None;
        for kv in kvs {
            let reject = |error| Rejected {
                mod_revision: kv.mod_revision,
                error,
            };
            if kv.key == LEADER_KEY {
                match trusted_leader(kv.value, kv.lease, peers) {
                    Ok(l) => leader = Some((l, kv.lease, kv.mod_revision)),
                    Err(e) => rejected.push(reject(e)),
                }
            } else if let Some(name) = kv.key.strip_prefix(NODES_PREFIX) {
                match trusted_node(name, kv.value, kv.lease, peers) {
                    Ok(m) => {
                        leases.push((m.name.clone(), kv.lease));
                        view.nodes.push(m);
                    }
                    Err(e) => rejected.push(reject(e)),
                }
            }
        }
        if let Some((l, lease, rev)) = leader {
            match leases.iter().find(|(n, _)| *n == l.name) {
                Some((_, node_lease)) if *node_lease != lease => rejected.push(Rejected {
                    mod_revision: rev,
                    error: SchemaError::LeaseMismatch {
                        key: LEADER_KEY.into(),
                        name: l.name,
                        lease,
                        node_lease: *node_lease,
                    },
                }),
                _ => view.leader = Some(l),
            }
        }
        view.sort();
        (view, rejected)
    }

    /// Builds a view from records an operator wrote (`hostsgen render --from-json`): names
    /// and IPs are checked, peers and leases are not. Never for what was read from etcd:
    /// that is [`ClusterView::from_etcd`].
    pub fn from_records<'a>(
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
        view.sort();
        (view, errors)
    }

    fn sort(&mut self) {
        self.nodes
            .sort_by(|a, b| a.ip.cmp(&b.ip).then(a.name.cmp(&b.name)));
    }

    /// The live node that the leader key names, if it is live.
    pub fn leader_member(&self) -> Option<&Member> {
        let l = self.leader.as_ref()?;
        self.nodes.iter().find(|m| m.name == l.name)
    }
}

fn check_size(key: &str, value: &[u8]) -> Result<(), SchemaError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(SchemaError::TooLarge {
            key: key.into(),
            bytes: value.len(),
        });
    }
    Ok(())
}

/// Parses and validates the leader key's value (its shape only).
pub fn parse_leader(value: &[u8]) -> Result<LeaderRecord, SchemaError> {
    check_size(LEADER_KEY, value)?;
    let rec: LeaderRecord = serde_json::from_slice(value).map_err(|e| SchemaError::BadJson {
        key: LEADER_KEY.into(),
        reason: e.to_string(),
    })?;
    check_name_ip(LEADER_KEY, &rec.name, &rec.ip)?;
    Ok(rec)
}

/// The leader key's value as every reader must judge it: well-formed, attached to a lease
/// (`lease != 0`), naming one of `peers` at that peer's planned IP. Anything else — a
/// hand-written key, a stranger, the gateway's or any other address — is refused.
pub fn trusted_leader(
    value: &[u8],
    lease: i64,
    peers: &[Peer],
) -> Result<LeaderRecord, SchemaError> {
    let rec = parse_leader(value)?;
    let ip: Ipv4Addr = rec.ip.parse().map_err(|_| SchemaError::BadIp {
        key: LEADER_KEY.into(),
        ip: rec.ip.clone(),
    })?;
    check_planned(LEADER_KEY, &rec.name, ip, peers)?;
    if lease == 0 {
        return Err(SchemaError::NoLease {
            key: LEADER_KEY.into(),
        });
    }
    Ok(rec)
}

/// Parses and validates one node key's value (its shape only); `key_name` is the part
/// after [`NODES_PREFIX`].
pub fn parse_node(key_name: &str, value: &[u8]) -> Result<Member, SchemaError> {
    let key = node_key(key_name);
    check_size(&key, value)?;
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

/// One node key as every reader must judge it: well-formed, for one of `peers`, at that
/// peer's planned IP, attached to a lease.
pub fn trusted_node(
    key_name: &str,
    value: &[u8],
    lease: i64,
    peers: &[Peer],
) -> Result<Member, SchemaError> {
    let key = node_key(key_name);
    if !peers.iter().any(|p| p.name == key_name) {
        return Err(SchemaError::NotAPeer {
            key,
            name: key_name.into(),
        });
    }
    let m = parse_node(key_name, value)?;
    check_planned(&key, &m.name, m.ip, peers)?;
    if lease == 0 {
        return Err(SchemaError::NoLease { key });
    }
    Ok(m)
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
        let (view, errors) = ClusterView::from_records(kvs);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let names: Vec<_> = view.nodes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["node9", "node10"]);
        assert_eq!(view.leader_member().unwrap().name, "node10");
    }

    fn peers() -> Vec<Peer> {
        parse_peers("node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12").unwrap()
    }

    fn kv<'a>(key: &'a str, value: &'a [u8], lease: i64, rev: i64) -> RawKv<'a> {
        RawKv {
            key,
            value,
            lease,
            mod_revision: rev,
        }
    }

    fn leader(name: &str, ip: &str) -> Vec<u8> {
        serde_json::to_vec(&LeaderRecord {
            name: name.into(),
            ip: ip.into(),
            member_id: "1".into(),
            term: 2,
        })
        .unwrap()
    }

    #[test]
    fn etcd_readers_accept_only_peers_at_their_planned_ips_on_leases() {
        let n0 = node("node0", "10.77.0.10", Role::Leader);
        let n1 = node("node1", "10.77.0.11", Role::Follower);
        let evil = node("evil", "10.9.9.9", Role::Follower);
        let n2_moved = node("node2", "10.77.0.99", Role::Follower);
        let n2_bare = node("node2", "10.77.0.12", Role::Follower);
        let l = leader("node0", "10.77.0.10");
        let kvs = vec![
            kv("/clusterlab/nodes/node0", &n0, 7, 10),
            kv("/clusterlab/nodes/node1", &n1, 8, 11),
            kv("/clusterlab/nodes/evil", &evil, 8, 12),
            kv("/clusterlab/nodes/node2", &n2_moved, 9, 13),
            kv("/clusterlab/leader", &l, 7, 14),
        ];
        let (view, rejected) = ClusterView::from_etcd(kvs.clone(), &peers());
        let names: Vec<_> = view.nodes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["node0", "node1"]);
        assert_eq!(view.leader_member().unwrap().name, "node0");
        assert!(
            matches!(
                &rejected[0],
                Rejected { mod_revision: 12, error: SchemaError::NotAPeer { name, .. } } if name == "evil"
            ),
            "{rejected:?}"
        );
        assert!(
            matches!(
                &rejected[1].error,
                SchemaError::WrongIp { planned, .. } if *planned == Ipv4Addr::new(10, 77, 0, 12)
            ),
            "{rejected:?}"
        );
        assert_eq!(rejected.len(), 2);
        // The same record for node2 at its planned IP but put by hand, with no lease.
        let (view, rejected) =
            ClusterView::from_etcd([kv("/clusterlab/nodes/node2", &n2_bare, 0, 15)], &peers());
        assert!(view.nodes.is_empty());
        assert!(matches!(rejected[0].error, SchemaError::NoLease { .. }));
        assert!(
            rejected[0].to_string().contains("revision 15"),
            "{}",
            rejected[0]
        );
    }

    #[test]
    fn a_forged_leader_key_is_refused() {
        let n0 = node("node0", "10.77.0.10", Role::Leader);
        let cases: Vec<(Vec<u8>, i64, &str)> = vec![
            (leader("node0", "10.77.0.10"), 0, "no-lease"),
            (leader("stranger", "10.77.0.10"), 7, "not-a-peer"),
            (leader("node0", "10.77.0.5"), 7, "the gateway's address"),
            (
                leader("node1", "10.77.0.11"),
                99,
                "another lease than node1's key",
            ),
            (b"{\"name\":\"node0\"".to_vec(), 7, "bad json"),
            (vec![b' '; MAX_VALUE_BYTES + 1], 7, "oversized"),
        ];
        let n1 = node("node1", "10.77.0.11", Role::Follower);
        for (value, lease, what) in cases {
            let kvs = [
                kv("/clusterlab/nodes/node0", &n0, 7, 1),
                kv("/clusterlab/nodes/node1", &n1, 8, 2),
                kv(LEADER_KEY, &value, lease, 3),
            ];
            let (view, rejected) = ClusterView::from_etcd(kvs, &peers());
            assert_eq!(view.leader, None, "{what}");
            assert_eq!(view.nodes.len(), 2, "{what}");
            assert_eq!(rejected.len(), 1, "{what}: {rejected:?}");
            assert_eq!(rejected[0].error.key(), LEADER_KEY, "{what}");
        }
        // The leader key alone (its node key not read yet) is still judged on its own.
        let l = leader("node1", "10.77.0.11");
        let (view, rejected) = ClusterView::from_etcd([kv(LEADER_KEY, &l, 8, 3)], &peers());
        assert!(rejected.is_empty() && view.leader.is_some());
        assert!(trusted_leader(&l, 8, &peers()).is_ok());
    }

    #[test]
    fn hostile_keys_are_printed_escaped() {
        let e = SchemaError::NoLease {
            key: "/clusterlab/nodes/\u{1b}[2Jx".into(),
        };
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    #[test]
    fn refusals_are_reported_once_per_key_and_revision() {
        let r = |key: &str, rev| Rejected {
            mod_revision: rev,
            error: SchemaError::NoLease { key: key.into() },
        };
        let mut log = RejectLog::default();
        let a = [r("/a", 1), r("/b", 2)];
        assert_eq!(log.fresh(&a).len(), 2);
        assert!(log.fresh(&a).is_empty(), "the same state again");
        let b = [r("/a", 1), r("/b", 3)];
        assert_eq!(log.fresh(&b), vec![&b[1]], "/b rewritten");
        assert!(log.fresh(&[]).is_empty());
        assert_eq!(log.fresh(&b).len(), 2, "refused again after it was gone");
    }

    #[test]
    fn leader_records_without_a_term_read_as_term_0() {
        let rec = parse_leader(br#"{"name":"node0","ip":"10.77.0.10","member_id":"1"}"#).unwrap();
        assert_eq!(rec.term, 0);
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
