//! The one place that knows Docker object names, labels and the IP plan of a cluster.

use std::net::Ipv4Addr;

/// A node's name as the cluster knows it: `node<i>`.
pub type NodeName = String;

/// Label carried by every object of a cluster; its value is the cluster name.
pub const LABEL_CLUSTER: &str = "clusterlab.cluster";
/// Label naming the node a container or volume belongs to.
pub const LABEL_NODE: &str = "clusterlab.node";
/// Label telling nodes (`node`) from the gateway (`gateway`) and one-shot containers
/// (`oneshot`).
pub const LABEL_ROLE: &str = "clusterlab.role";
/// Label on the objects of a run-scoped cluster (a trial's, a grading's, a one-shot
/// container's): the id of the process that created them and removes them at its end, so a
/// later run can sweep what a killed process left behind.
pub const LABEL_PID: &str = "clusterlab.pid";
/// The default cluster name.
pub const DEFAULT_CLUSTER: &str = "clusterlab";
/// The default subnet.
pub const DEFAULT_SUBNET: &str = "10.77.0.0/24";
/// Host offset of node 0 inside the subnet: node i is at offset 10 + i.
pub const FIRST_NODE_OFFSET: u32 = 10;
/// Host offset of the gateway container.
pub const GATEWAY_OFFSET: u32 = 5;
/// Largest cluster the IP plan and the harness support (node i is at offset 10 + i of a
/// /24, so a /24 could hold 245; 200 leaves room below the broadcast address).
pub const MAX_NODES: usize = 200;

/// Why a text is not a subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("subnet {0:?} is not of the form a.b.c.d/len")]
    Form(String),
    #[error("subnet {text:?}: {ip:?} is not an IPv4 address")]
    Address { text: String, ip: String },
    #[error("subnet {text:?}: prefix {prefix:?} is not a number between /8 and /24")]
    Prefix { text: String, prefix: String },
    #[error("subnet {text:?}: {ip} is not the network address (did you mean {base}/{prefix}?)")]
    NotNetworkAddress {
        text: String,
        ip: Ipv4Addr,
        base: Ipv4Addr,
        prefix: u8,
    },
}

/// A cluster name that cannot prefix Docker object names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster name {0:?} must be 1–40 characters of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct BadClusterName(pub String);

/// A /24 (or larger) IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = SubnetError;
    fn from_str(s: &str) -> Result<Self, SubnetError> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| SubnetError::Form(s.to_string()))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| SubnetError::Address {
            text: s.to_string(),
            ip: ip.to_string(),
        })?;
        let bad_prefix = || SubnetError::Prefix {
            text: s.to_string(),
            prefix: prefix.to_string(),
        };
        let prefix: u8 = prefix.parse().map_err(|_| bad_prefix())?;
        if !(8..=24).contains(&prefix) {
            return Err(bad_prefix());
        }
        let mask = u32::MAX << (32 - prefix);
        let base = Ipv4Addr::from(u32::from(ip) & mask);
        if base != ip {
            return Err(SubnetError::NotNetworkAddress {
                text: s.to_string(),
                ip,
                base,
                prefix,
            });
        }
        Ok(Subnet { base, prefix })
    }
}

impl Subnet {
    /// The address at `offset` inside the subnet.
    pub fn host(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }
    /// The bridge's gateway address (offset 1).
    pub fn bridge_gateway(&self) -> Ipv4Addr {
        self.host(1)
    }
    /// Number of addresses in the subnet.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }
    /// Whether the two address ranges share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let range = |s: &Subnet| {
            let lo = u32::from(s.base) as u64;
            (lo, lo + s.size())
        };
        let (a0, a1) = range(self);
        let (b0, b1) = range(other);
        a0 < b1 && b0 < a1
    }
}

/// The IPv4 range of a CIDR text as Docker reports a network's subnet; any prefix length
/// (Docker's own pools are /16 or /20), host bits ignored. `None` for IPv6 or malformed text.
pub fn parse_cidr(text: &str) -> Option<Subnet> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some(Subnet {
        base: Ipv4Addr::from(u32::from(ip) & mask),
        prefix,
    })
}

/// Names of one cluster's Docker objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    pub cluster: String,
}

/// Checks a cluster name: it prefixes Docker object names and is etcd's cluster token.
pub fn validate_cluster_name(name: &str) -> Result<(), BadClusterName> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(BadClusterName(name.to_string()))
    }
}

impl ClusterNames {
    pub fn new(cluster: &str) -> Self {
        ClusterNames {
            cluster: cluster.to_string(),
        }
    }
    pub fn network(&self) -> String {
        format!("{}-net", self.cluster)
    }
    pub fn shared_volume(&self) -> String {
        format!("{}-shared", self.cluster)
    }
    /// Node name (and hostname) of node `i`.
    pub fn node_name(i: usize) -> String {
        format!("node{i}")
    }
    /// Index of a node name (`node3` → 3).
    pub fn node_index(name: &str) -> Option<usize> {
        let digits = name.strip_prefix("node")?;
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        digits.parse().ok()
    }
    pub fn node_container(&self, i: usize) -> String {
        format!("{}-node{i}", self.cluster)
    }
    pub fn node_volume(&self, i: usize) -> String {
        format!("{}-node{i}-data", self.cluster)
    }
    pub fn gateway(&self) -> String {
        format!("{}-gateway", self.cluster)
    }
    /// Label filter that selects every object of this cluster.
    pub fn label_filter(&self) -> String {
        format!("{LABEL_CLUSTER}={}", self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let n = ClusterNames::new("lab");
        assert_eq!(n.network(), "lab-net");
        assert_eq!(n.shared_volume(), "lab-shared");
        assert_eq!(n.node_container(2), "lab-node2");
        assert_eq!(n.node_volume(2), "lab-node2-data");
        assert_eq!(n.gateway(), "lab-gateway");
        assert_eq!(n.label_filter(), "clusterlab.cluster=lab");
        assert_eq!(ClusterNames::node_name(7), "node7");
    }

    #[test]
    fn node_index_parses_only_canonical_names() {
        assert_eq!(ClusterNames::node_index("node0"), Some(0));
        assert_eq!(ClusterNames::node_index("node12"), Some(12));
        assert_eq!(ClusterNames::node_index("node01"), None);
        assert_eq!(ClusterNames::node_index("node"), None);
        assert_eq!(ClusterNames::node_index("host1"), None);
    }

    #[test]
    fn subnet_plan() {
        let s: Subnet = "10.77.0.0/24".parse().unwrap();
        assert_eq!(s.host(FIRST_NODE_OFFSET + 2).to_string(), "10.77.0.12");
        assert_eq!(s.bridge_gateway().to_string(), "10.77.0.1");
        assert!("10.77.0.1/24"
            .parse::<Subnet>()
            .unwrap_err()
            .to_string()
            .contains("10.77.0.0/24"));
        let a: Subnet = "10.78.5.0/24".parse().unwrap();
        assert!(a.overlaps(&parse_cidr("10.78.0.0/16").unwrap()));
        assert!(parse_cidr("10.78.0.0/16").unwrap().overlaps(&a));
        assert!(!a.overlaps(&"10.78.6.0/24".parse().unwrap()));
        assert!(!a.overlaps(&parse_cidr("172.17.0.0/16").unwrap()));
        assert_eq!(parse_cidr("fd00::/64"), None);
        assert!("10.77.0.0".parse::<Subnet>().is_err());
        assert!("10.77.0.0/30".parse::<Subnet>().is_err());
        assert!("x/24".parse::<Subnet>().is_err());
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(validate_cluster_name("clusterlab").is_ok());
        assert!(validate_cluster_name("t-1").is_ok());
        assert!(validate_cluster_name("Bad").is_err());
        assert!(validate_cluster_name("-x").is_err());
        assert!(validate_cluster_name("").is_err());
        assert!(validate_cluster_name("a/b").is_err());
    }
}
