//! Grading profiles: how to run a submission of the assignment and how much time each check
//! allows. A profile is one TOML file read through figment; see docs/GRADING.md for every
//! field. Unknown keys are errors that name the key and the file, so a typo never silently
//! grades with a default.

use crate::names::Subnet;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Placeholders a node's command, entrypoint and environment may use.
pub const NODE_PLACEHOLDERS: [&str; 9] = [
    "ip", "index", "n", "name", "first_ip", "peers", "ips", "cluster", "subnet",
];
/// Placeholders the SSH test command and its expected output may use (the node it runs on
/// is `ip`/`name`/`index`, the node it reaches is `peer`/`peer_name`/`peer_index`).
pub const SSH_PLACEHOLDERS: [&str; 7] = [
    "ip",
    "index",
    "name",
    "peer",
    "peer_name",
    "peer_index",
    "n",
];

/// Bounds of `limits.memory_mb`.
pub const MIN_MEMORY_MB: u64 = 16;
pub const MAX_MEMORY_MB: u64 = 65_536;
/// Bounds of `limits.pids`.
pub const MIN_PIDS: u64 = 16;
pub const MAX_PIDS: u64 = 65_536;

/// Capabilities a profile may ask for without the operator's consent. Every one is in
/// Docker's default set and acts only inside the container's own namespaces: they let a
/// daemon like sshd switch users (SETUID, SETGID), enter its privilege-separation chroot
/// (SYS_CHROOT), and let root manage files of other users (CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID) and signal their processes (KILL). Docker's other defaults (NET_RAW, MKNOD,
/// SETFCAP, SETPCAP, AUDIT_WRITE, NET_BIND_SERVICE) and everything beyond them need
/// `--allow-cap`.
pub const BASELINE_CAPS: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SYS_CHROOT",
];

/// Every Linux capability, by the name Docker takes (without `CAP_`).
pub const LINUX_CAPS: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A capability's name as Docker takes it (`net_admin` and `CAP_NET_ADMIN` are
/// `NET_ADMIN`), or why it is none.
pub fn capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if LINUX_CAPS.contains(&bare) {
        Ok(bare.to_string())
    } else if bare == "ALL" {
        Err("asks for ALL capabilities; name each one the submission needs".into())
    } else {
        Err(format!(
            "{name:?} is not a Linux capability (known: {})",
            LINUX_CAPS.join(", ")
        ))
    }
}

/// A capability the profile asks for that neither the baseline nor the operator allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grading profile {file}: `node.cap_add` asks for {cap}, which the operator has not allowed; grade with `--allow-cap {cap}` to grant it (allowed without asking: {baseline})")]
pub struct CapNotAllowed {
    pub file: String,
    pub cap: String,
    pub baseline: String,
}

impl Profile {
    /// The capabilities each container gets (all others are dropped): the profile's
    /// `node.cap_add`, every one of which must be in [`BASELINE_CAPS`] or in `allowed`
    /// (the operator's `--allow-cap`). Refused, naming the capability and the flag,
    /// otherwise. Names are normalized (`cap_net_admin` → `NET_ADMIN`).
    pub fn granted_caps(
        &self,
        allowed: &[String],
        file: &str,
    ) -> Result<Vec<String>, CapNotAllowed> {
        let allowed: Vec<String> = allowed.iter().filter_map(|c| capability(c).ok()).collect();
        let mut out = Vec::new();
        for cap in &self.node.cap_add {
            let cap = capability(cap).unwrap_or_else(|_| cap.clone());
            if !BASELINE_CAPS.contains(&cap.as_str()) && !allowed.contains(&cap) {
                return Err(CapNotAllowed {
                    file: file.to_string(),
                    cap,
                    baseline: BASELINE_CAPS.join(", "),
                });
            }
            if !out.contains(&cap) {
                out.push(cap);
            }
        }
        Ok(out)
    }
}

/// A profile that cannot be read or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading grading profile {file}: {reason}")]
    Load { file: String, reason: String },
    #[error("grading profile {file}: `{key}` {reason}")]
    Invalid {
        file: String,
        key: &'static str,
        reason: String,
    },
    /// A `[weights]` entry that names no scenario or is not a usable number.
    #[error("grading profile {file}: `weights.{key}` {reason}")]
    Weight {
        file: String,
        key: String,
        reason: String,
    },
}

/// How to run and judge one submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Names the submission in reports and prefixes its Docker objects.
    pub name: String,
    /// Number of nodes (at least 3, so that a majority survives a kill).
    pub nodes: usize,
    pub submission: SubmissionSource,
    pub network: NetworkPlan,
    pub node: NodeTemplate,
    pub judge: Judge,
    pub limits: Limits,
    /// Which scenarios run, and the size of the `scale` cluster.
    pub scenarios: ScenarioSwitches,
    /// The submission's own forwarder, graded by the `gateway` scenario when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayTemplate>,
    /// Points per scenario (scenario name → non-negative number); a scenario not named
    /// here is worth 1. They become `max_score` in results.json.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
}

/// Placeholders a gateway's command, entrypoint and environment may use: the cluster's
/// (`n`, `first_ip`, `peers`, `ips`, `cluster`, `subnet`), the gateway's own address `ip`,
/// and `endpoints` (`http://IP:<judge.etcd_client_port>,…` for every node).
pub const GATEWAY_PLACEHOLDERS: [&str; 8] = [
    "ip",
    "n",
    "first_ip",
    "peers",
    "ips",
    "cluster",
    "subnet",
    "endpoints",
];

impl Default for GatewayTemplate {
    fn default() -> Self {
        GatewayTemplate {
            image: None,
            build: None,
            command: Vec::new(),
            entrypoint: Vec::new(),
            env: BTreeMap::new(),
            port: 8080,
            path: None,
            interval_ms: 100,
        }
    }
}

/// Most nodes of any graded cluster.
pub const MAX_NODES: usize = 20;

/// Each scenario on (true, the default) or off, and the node count of `scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioSwitches {
    pub startup: bool,
    pub kill_follower: bool,
    pub kill_leader: bool,
    pub leader_demoted: bool,
    pub partition_leader: bool,
    pub restart_follower: bool,
    pub scale: bool,
    /// Runs only when the profile has a `[gateway]` section.
    pub gateway: bool,
    /// Nodes of the `scale` cluster (default 11: two-digit node indexes).
    pub scale_nodes: usize,
}

impl Default for ScenarioSwitches {
    fn default() -> Self {
        ScenarioSwitches {
            startup: true,
            kill_follower: true,
            kill_leader: true,
            leader_demoted: true,
            partition_leader: true,
            restart_follower: true,
            scale: true,
            gateway: true,
            scale_nodes: 11,
        }
    }
}

/// The submission's forwarder: one more container on the cluster's network, started with
/// the nodes, that forwards HTTP to the leader's service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayTemplate {
    /// An image present locally; with neither `image` nor `build`, the submission's image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A directory holding a Dockerfile, relative to the profile file, built like
    /// `submission.build`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<PathBuf>,
    /// The container's command ([`GATEWAY_PLACEHOLDERS`]); empty keeps the image's CMD.
    pub command: Vec<String>,
    /// Replaces the image's ENTRYPOINT when not empty.
    pub entrypoint: Vec<String>,
    /// Environment variables (templates).
    pub env: BTreeMap<String, String>,
    /// The port the forwarder serves HTTP on.
    pub port: u16,
    /// The path requested through it (default `judge.service_path`).
    pub path: Option<String>,
    /// Pause between two GETs of the stream, in milliseconds.
    pub interval_ms: u64,
}

/// Where the submission's image comes from: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmissionSource {
    /// An image present locally (nothing can be pulled).
    pub image: Option<String>,
    /// A directory holding a Dockerfile, relative to the profile file. It is built on top of
    /// clusterlab's base image, passed as the build argument BASE.
    pub build: Option<PathBuf>,
    /// clusterlab's own node image, built from this source tree.
    pub clusterlab_node_image: bool,
}

/// The IP plan: node i gets the address `first_offset + i` inside `subnet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkPlan {
    pub subnet: String,
    pub first_offset: u32,
}

/// How each node's container is started. Every string may use [`NODE_PLACEHOLDERS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeTemplate {
    /// The container's command (empty: the image's own CMD).
    pub command: Vec<String>,
    /// Replaces the image's ENTRYPOINT when not empty.
    pub entrypoint: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Where the volume shared by every node is mounted (the assignment's /mnt).
    pub shared_mount: String,
    /// Where a per-node volume is mounted; empty for none.
    pub data_mount: String,
    /// Linux capabilities the submission needs (every other one is dropped). Those outside
    /// [`BASELINE_CAPS`] must be allowed by the operator (`harness grade --allow-cap`).
    pub cap_add: Vec<String>,
}

/// What is judged and how it is reached from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Judge {
    /// The hosts file read in every node.
    pub hosts_file: String,
    /// Port of each node's etcd client API, asked from the host for the raft leader.
    pub etcd_client_port: u16,
    /// Port the leader's web service answers on.
    pub service_port: u16,
    /// Path requested from the web service.
    pub service_path: String,
    /// Shell command run in one node to reach another with no password; uses
    /// [`SSH_PLACEHOLDERS`]. It must exit 0.
    pub ssh_command: String,
    /// Text the SSH command's output must contain (empty: the exit code alone counts).
    pub ssh_expect: String,
    /// The shared copy of the leader's table, as a path inside a node (e.g. `/mnt/hosts`);
    /// empty: not checked.
    pub shared_hosts_file: String,
}

/// Time allowed for each check, in seconds unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// From the containers' start until every hosts table and the leader service are right.
    pub start_s: u64,
    /// From a kill until the dead node is gone from every surviving hosts table (and the
    /// tables are right again).
    pub dead_node_s: u64,
    /// From the leader's kill until every survivor's host0 is the new leader and the
    /// service answers there.
    pub leader_change_s: u64,
    /// For the SSH check to see every pair succeed (failed pairs are retried).
    pub ssh_s: u64,
    /// For one SSH command.
    pub ssh_command_s: u64,
    /// Hard bound on one whole scenario, cluster start and cleanup excluded.
    pub scenario_s: u64,
    /// Pause between observations while waiting, in milliseconds.
    pub poll_ms: u64,
    /// For building the submission's image from its Dockerfile; a build still running then
    /// is cancelled.
    pub build_s: u64,
    /// Memory of each node's container, in MiB (no swap beyond it).
    pub memory_mb: u64,
    /// Processes and threads each node's container may hold at once.
    pub pids: u64,
    /// CPUs each node's container may use (e.g. 0.5).
    pub cpus: f64,
    /// Size of each of a node's two log files, in MiB: its output beyond that is dropped
    /// oldest first.
    pub log_mb: u64,
    /// From a stopped node's restart (or a cut node's reconnection) until it is back in
    /// every table, its etcd member is healthy and the tables are right.
    pub rejoin_s: u64,
    /// After leadership moved, the least time the grader keeps checking that no two nodes
    /// serve.
    pub steady_s: u64,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            name: String::new(),
            nodes: 3,
            submission: SubmissionSource::default(),
            network: NetworkPlan::default(),
            node: NodeTemplate::default(),
            judge: Judge::default(),
            limits: Limits::default(),
            scenarios: ScenarioSwitches::default(),
            gateway: None,
            weights: BTreeMap::new(),
        }
    }
}

impl Default for NetworkPlan {
    fn default() -> Self {
        NetworkPlan {
            subnet: "10.79.0.0/24".into(),
            first_offset: 10,
        }
    }
}

impl Default for NodeTemplate {
    fn default() -> Self {
        NodeTemplate {
            command: Vec::new(),
            entrypoint: Vec::new(),
            env: BTreeMap::new(),
            shared_mount: "/mnt".into(),
            data_mount: String::new(),
            cap_add: Vec::new(),
        }
    }
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            hosts_file: "/etc/hosts".into(),
            etcd_client_port: 2379,
            service_port: 8888,
            service_path: "/".into(),
            ssh_command: "ssh -o BatchMode=yes -o ConnectTimeout=5 {peer} hostname".into(),
            ssh_expect: "{peer_name}".into(),
            shared_hosts_file: String::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            start_s: 90,
            dead_node_s: 45,
            leader_change_s: 30,
            ssh_s: 30,
            ssh_command_s: 10,
            scenario_s: 300,
            poll_ms: 250,
            build_s: 300,
            memory_mb: 512,
            pids: 512,
            cpus: 1.0,
            log_mb: 10,
            rejoin_s: 60,
            steady_s: 5,
        }
    }
}

/// Where the image comes from, once the profile is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Image(String),
    /// An absolute directory holding a Dockerfile.
    Build(PathBuf),
    ClusterlabNode,
}

impl Profile {
    /// Reads and checks a profile file. A relative `submission.build` is resolved against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let file = path.display().to_string();
        if !path.is_file() {
            return Err(ProfileError::Load {
                file,
                reason: "no such file".into(),
            });
        }
        let fig = Figment::from(Serialized::defaults(Profile::default())).merge(Toml::file(path));
        let mut profile = Self::from_figment(&fig, &file)?;
        if let Some(dir) = &profile.submission.build {
            if dir.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                let joined = base.join(dir);
                // Absolute and without `.` parts, so reports name the directory plainly.
                profile.submission.build = Some(std::fs::canonicalize(&joined).unwrap_or(joined));
            }
        }
        if let Some(dir) = profile.gateway.as_mut().and_then(|g| g.build.as_mut()) {
            if dir.is_relative() {
                let joined = path.parent().unwrap_or(Path::new(".")).join(&*dir);
                *dir = std::fs::canonicalize(&joined).unwrap_or(joined);
            }
        }
        Ok(profile)
    }

    /// Extracts and checks a profile from any figment; `file` names it in errors.
    pub fn from_figment(fig: &Figment, file: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = fig.extract().map_err(|e| ProfileError::Load {
            file: file.to_string(),
            reason: e
                .into_iter()
                .map(|e| describe_figment_error(&e))
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        profile.validate(file)?;
        Ok(profile)
    }

    /// Checks what serde cannot: one image source, a usable IP plan, known placeholders,
    /// non-zero limits.
    pub fn validate(&self, file: &str) -> Result<(), ProfileError> {
        let invalid = |key: &'static str, reason: String| {
            Err(ProfileError::Invalid {
                file: file.to_string(),
                key,
                reason,
            })
        };
        if let Err(e) = crate::names::validate_cluster_name(&self.name) {
            return invalid("name", e.to_string());
        }
        if self.name.len() > 20 {
            return invalid(
                "name",
                format!(
                    "{:?} is longer than 20 characters (it prefixes Docker object names)",
                    self.name
                ),
            );
        }
        if !(3..=20).contains(&self.nodes) {
            return invalid(
                "nodes",
                format!(
                    "is {}; give 3 to 20 (a majority must survive a kill)",
                    self.nodes
                ),
            );
        }
        let s = &self.submission;
        let sources = [
            s.image.is_some(),
            s.build.is_some(),
            s.clusterlab_node_image,
        ];
        if sources.iter().filter(|b| **b).count() != 1 {
            return invalid(
                "submission",
                "needs exactly one of `image`, `build` or `clusterlab_node_image = true`".into(),
            );
        }
        let subnet = match self.network.subnet.parse::<Subnet>() {
            Ok(s) => s,
            Err(e) => return invalid("network.subnet", e.to_string()),
        };
        let room = 1u64 << (32 - subnet.prefix);
        let first = self.network.first_offset as u64;
        if first < 2 || first + self.nodes as u64 >= room - 1 {
            return invalid(
                "network.first_offset",
                format!(
                    "{first} puts {} nodes outside {subnet} (offsets 0, 1 and the broadcast address are taken)",
                    self.nodes
                ),
            );
        }
        for (key, text) in [
            ("node.shared_mount", &self.node.shared_mount),
            ("node.data_mount", &self.node.data_mount),
            ("judge.hosts_file", &self.judge.hosts_file),
        ] {
            let optional = key == "node.data_mount";
            if !(text.starts_with('/') || optional && text.is_empty()) {
                return invalid(key, format!("{text:?} must be an absolute path"));
            }
        }
        if !self.judge.service_path.starts_with('/') {
            return invalid(
                "judge.service_path",
                format!("{:?} must start with /", self.judge.service_path),
            );
        }
        for t in self.node.command.iter().chain(&self.node.entrypoint) {
            if let Err(e) = check_template(t, &NODE_PLACEHOLDERS) {
                return invalid("node.command/node.entrypoint", e.to_string());
            }
        }
        for (k, v) in &self.node.env {
            if k.is_empty() || k.contains('=') {
                return invalid("node.env", format!("{k:?} is not a variable name"));
            }
            if let Err(e) = check_template(v, &NODE_PLACEHOLDERS) {
                return invalid("node.env", format!("{k}: {e}"));
            }
        }
        if self.judge.ssh_command.trim().is_empty() {
            return invalid("judge.ssh_command", "is empty".into());
        }
        if let Err(e) = check_template(&self.judge.ssh_command, &SSH_PLACEHOLDERS) {
            return invalid("judge.ssh_command", e.to_string());
        }
        if let Err(e) = check_template(&self.judge.ssh_expect, &SSH_PLACEHOLDERS) {
            return invalid("judge.ssh_expect", e.to_string());
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.start_s", l.start_s),
            ("limits.dead_node_s", l.dead_node_s),
            ("limits.leader_change_s", l.leader_change_s),
            ("limits.ssh_s", l.ssh_s),
            ("limits.ssh_command_s", l.ssh_command_s),
            ("limits.scenario_s", l.scenario_s),
            ("limits.poll_ms", l.poll_ms),
            ("limits.build_s", l.build_s),
            ("limits.log_mb", l.log_mb),
            ("limits.rejoin_s", l.rejoin_s),
            ("limits.steady_s", l.steady_s),
        ] {
            if v == 0 {
                return invalid(key, "must be above 0".into());
            }
        }
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&l.memory_mb) {
            return invalid(
                "limits.memory_mb",
                format!(
                    "is {}; give {MIN_MEMORY_MB} to {MAX_MEMORY_MB}",
                    l.memory_mb
                ),
            );
        }
        if !(MIN_PIDS..=MAX_PIDS).contains(&l.pids) {
            return invalid(
                "limits.pids",
                format!("is {}; give {MIN_PIDS} to {MAX_PIDS}", l.pids),
            );
        }
        if !(l.cpus.is_finite() && (0.01..=64.0).contains(&l.cpus)) {
            return invalid("limits.cpus", format!("is {}; give 0.01 to 64", l.cpus));
        }
        if l.log_mb > 1024 {
            return invalid("limits.log_mb", format!("is {}; give 1 to 1024", l.log_mb));
        }
        for cap in &self.node.cap_add {
            if let Err(reason) = capability(cap) {
                return invalid("node.cap_add", reason);
            }
        }
        self.validate_weights(file)?;
        self.validate_additions(file)
    }

    /// Checks `[weights]`: every key a scenario's name, every value a finite number ≥ 0.
    fn validate_weights(&self, file: &str) -> Result<(), ProfileError> {
        let known: Vec<&str> = super::scenarios::Scenario::ALL
            .iter()
            .map(|s| s.name())
            .collect();
        for (key, &w) in &self.weights {
            let bad = |reason: String| {
                Err(ProfileError::Weight {
                    file: file.to_string(),
                    key: key.clone(),
                    reason,
                })
            };
            if !known.contains(&key.as_str()) {
                return bad(format!("names no scenario; known: {}", known.join(", ")));
            }
            if !w.is_finite() || w < 0.0 {
                return bad(format!("is {w}; give a number of points, 0 or more"));
            }
        }
        Ok(())
    }

    /// The points scenario `name` is worth: its `[weights]` entry, else 1.
    pub fn weight(&self, name: &str) -> f64 {
        self.weights.get(name).copied().unwrap_or(1.0)
    }

    /// Checks the scenario switches, the shared table and the gateway.
    fn validate_additions(&self, file: &str) -> Result<(), ProfileError> {
        let invalid = |key: &'static str, reason: String| {
            Err(ProfileError::Invalid {
                file: file.to_string(),
                key,
                reason,
            })
        };
        let j = &self.judge;
        if !(j.shared_hosts_file.is_empty() || j.shared_hosts_file.starts_with('/')) {
            return invalid(
                "judge.shared_hosts_file",
                format!(
                    "{:?} must be an absolute path (or empty)",
                    j.shared_hosts_file
                ),
            );
        }
        let scale = self.scenarios.scale_nodes;
        if !(3..=MAX_NODES).contains(&scale) {
            return invalid(
                "scenarios.scale_nodes",
                format!("is {scale}; give 3 to {MAX_NODES}"),
            );
        }
        let room = 1u64 << (32 - self.subnet().prefix);
        let last = self.network.first_offset as u64 + self.nodes.max(scale) as u64;
        // The gateway takes the last address before the broadcast address.
        if last >= room - 2 {
            return invalid(
                "scenarios.scale_nodes",
                format!(
                    "{scale} nodes from offset {} do not fit in {} with room for the gateway",
                    self.network.first_offset,
                    self.subnet()
                ),
            );
        }
        if let Some(g) = &self.gateway {
            if g.image.is_some() && g.build.is_some() {
                return invalid("gateway", "give `image` or `build`, not both".into());
            }
            if g.port == 0 {
                return invalid("gateway.port", "must be above 0".into());
            }
            if g.interval_ms == 0 {
                return invalid("gateway.interval_ms", "must be above 0".into());
            }
            if let Some(path) = &g.path {
                if !path.starts_with('/') {
                    return invalid("gateway.path", format!("{path:?} must start with /"));
                }
            }
            for t in g.command.iter().chain(&g.entrypoint).chain(g.env.values()) {
                if let Err(e) = check_template(t, &GATEWAY_PLACEHOLDERS) {
                    return invalid("gateway.command/entrypoint/env", e.to_string());
                }
            }
        }
        Ok(())
    }

    /// The checked image source.
    pub fn image_source(&self) -> ImageSource {
        let s = &self.submission;
        match (&s.image, &s.build) {
            (Some(i), _) => ImageSource::Image(i.clone()),
            (None, Some(dir)) => ImageSource::Build(dir.clone()),
            (None, None) => ImageSource::ClusterlabNode,
        }
    }

    /// The profile's subnet (checked by [`Profile::validate`]).
    pub fn subnet(&self) -> Subnet {
        self.network.subnet.parse().unwrap_or(Subnet {
            base: Ipv4Addr::new(10, 79, 0, 0),
            prefix: 24,
        })
    }

    /// A duration from a limit in seconds.
    pub fn secs(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    /// The pause between observations.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.limits.poll_ms)
    }
}

/// The IP plan of one run: the profile's plan, possibly on another subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPlan {
    pub subnet: Subnet,
    pub first_offset: u32,
    pub nodes: usize,
}

impl IpPlan {
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.subnet.host(self.first_offset + i as u32)
    }

    /// The gateway's address: the last one before the broadcast address.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.subnet.host((1u32 << (32 - self.subnet.prefix)) - 2)
    }

    /// The values of [`GATEWAY_PLACEHOLDERS`] for the gateway of cluster `cluster`.
    pub fn gateway_vars(&self, cluster: &str, etcd_port: u16) -> BTreeMap<&'static str, String> {
        let mut v = self.node_vars(0, cluster);
        for k in ["index", "name"] {
            v.remove(k);
        }
        v.insert("ip", self.gateway_ip().to_string());
        let endpoints: Vec<String> = (0..self.nodes)
            .map(|k| format!("http://{}:{etcd_port}", self.node_ip(k)))
            .collect();
        v.insert("endpoints", endpoints.join(","));
        v
    }

    /// The values of [`NODE_PLACEHOLDERS`] for node `i` of cluster `cluster`.
    pub fn node_vars(&self, i: usize, cluster: &str) -> BTreeMap<&'static str, String> {
        let names: Vec<String> = (0..self.nodes)
            .map(crate::names::ClusterNames::node_name)
            .collect();
        let ips: Vec<String> = (0..self.nodes)
            .map(|k| self.node_ip(k).to_string())
            .collect();
        let peers: Vec<String> = names
            .iter()
            .zip(&ips)
            .map(|(n, ip)| format!("{n}={ip}"))
            .collect();
        BTreeMap::from([
            ("ip", ips[i].clone()),
            ("index", i.to_string()),
            ("n", self.nodes.to_string()),
            ("name", names[i].clone()),
            ("first_ip", ips[0].clone()),
            ("peers", peers.join(",")),
            ("ips", ips.join(",")),
            ("cluster", cluster.to_string()),
            ("subnet", self.subnet.to_string()),
        ])
    }
}

/// Why a command or environment template cannot be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{template:?} has a lone `}}` (write `}}}}` for a literal brace)")]
    LoneClose { template: String },
    #[error("{template:?} has an unclosed `{{` (write `{{{{` for a literal brace)")]
    Unclosed { template: String },
    #[error("{template:?} uses unknown placeholder {{{key}}}; known: {known}")]
    Unknown {
        template: String,
        key: String,
        /// The placeholders that exist, as `{name} {ip} …`.
        known: String,
    },
}

/// Fills `{name}` placeholders from `vars`; `{{` and `}}` stand for literal braces.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(TemplateError::LoneClose {
                template: template.to_string(),
            });
        } else {
            let end = tail.find('}').ok_or_else(|| TemplateError::Unclosed {
                template: template.to_string(),
            })?;
            let key = &tail[1..end];
            let value = vars.get(key).ok_or_else(|| {
                let known: Vec<String> = vars.keys().map(|k| format!("{{{k}}}")).collect();
                TemplateError::Unknown {
                    template: template.to_string(),
                    key: key.to_string(),
                    known: known.join(" "),
                }
            })?;
            out.push_str(value);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks that a template only uses `known` placeholders.
pub fn check_template(template: &str, known: &[&'static str]) -> Result<(), TemplateError> {
    let vars: BTreeMap<&str, String> = known.iter().map(|k| (*k, String::new())).collect();
    render(template, &vars).map(|_| ())
}

fn describe_figment_error(e: &figment::Error) -> String {
    let parent = e.path.join(".");
    let key = match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            // figment's path usually ends with the unknown field already.
            let full = if e.path.last() == Some(field) {
                parent
            } else if parent.is_empty() {
                field.clone()
            } else {
                format!("{parent}.{field}")
            };
            return format!(
                "unknown key `{full}`{}; known keys here: {}",
                source_of(e),
                expected.join(", ")
            );
        }
        _ if parent.is_empty() => String::new(),
        _ => format!(" at key `{parent}`"),
    };
    format!("{}{key}{}", e.kind, source_of(e))
}

fn source_of(e: &figment::Error) -> String {
    match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        Some(src) => format!(" (in {src})"),
        None => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err, clippy::type_complexity)]
mod tests {
    use super::*;
    use figment::Jail;

    const GOOD: &str = r#"
name = "good"
nodes = 3
[submission]
build = "."
[network]
subnet = "10.79.1.0/24"
first_offset = 10
[node]
command = ["python3", "/opt/submission/daemon.py", "{ip}", "{n}", "{first_ip}"]
shared_mount = "/mnt"
[judge]
ssh_command = "ssh -o BatchMode=yes {peer} hostname"
ssh_expect = "{peer_name}"
[limits]
dead_node_s = 20
"#;

    #[test]
    fn loads_a_profile_and_resolves_build_against_its_directory() {
        Jail::expect_with(|jail| {
            jail.create_dir("sub")?;
            jail.create_file("sub/profile.toml", GOOD)?;
            let p = Profile::load(Path::new("sub/profile.toml")).map_err(|e| e.to_string())?;
            assert_eq!(p.name, "good");
            let expected = std::fs::canonicalize("sub").map_err(|e| e.to_string())?;
            assert_eq!(p.image_source(), ImageSource::Build(expected));
            assert_eq!(p.limits.dead_node_s, 20);
            // Unset limits keep their defaults.
            assert_eq!(p.limits.start_s, Limits::default().start_s);
            assert_eq!(p.subnet().to_string(), "10.79.1.0/24");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                &GOOD.replace("dead_node_s = 20", "dead_nodes_s = 20"),
            )?;
            let e = Profile::load(Path::new("p.toml")).unwrap_err().to_string();
            assert!(e.contains("`limits.dead_nodes_s`"), "{e}");
            assert!(e.contains("p.toml"), "{e}");
            assert!(e.contains("dead_node_s"), "should list the known keys: {e}");
            jail.create_file("q.toml", &format!("colour = \"red\"\n{GOOD}"))?;
            let e = Profile::load(Path::new("q.toml")).unwrap_err().to_string();
            assert!(e.contains("`colour`") && e.contains("q.toml"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("p.toml", &GOOD.replace("nodes = 3", "nodes = \"three\""))?;
            let e = Profile::load(Path::new("p.toml")).unwrap_err().to_string();
            assert!(e.contains("`nodes`") && e.contains("p.toml"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Profile::load(Path::new("/nonexistent/p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/p.toml") && e.contains("no such file"),
            "{e}"
        );
    }

    fn checked(f: impl FnOnce(&mut Profile)) -> Result<(), ProfileError> {
        let mut p: Profile = Figment::from(Serialized::defaults(Profile::default()))
            .merge(Toml::string(GOOD))
            .extract()
            .expect("the good profile parses");
        f(&mut p);
        p.validate("t.toml")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(checked(|_| {}).is_ok());
        let cases: Vec<(&str, Box<dyn FnOnce(&mut Profile)>)> = vec![
            ("`nodes`", Box::new(|p| p.nodes = 2)),
            ("`name`", Box::new(|p| p.name = "Bad Name".into())),
            (
                "`submission`",
                Box::new(|p| p.submission.image = Some("x".into())),
            ),
            ("`submission`", Box::new(|p| p.submission.build = None)),
            (
                "`network.subnet`",
                Box::new(|p| p.network.subnet = "10.79.1.1/24".into()),
            ),
            (
                "`network.first_offset`",
                Box::new(|p| p.network.first_offset = 253),
            ),
            (
                "`network.first_offset`",
                Box::new(|p| p.network.first_offset = 1),
            ),
            (
                "`node.shared_mount`",
                Box::new(|p| p.node.shared_mount = "mnt".into()),
            ),
            (
                "`node.command/node.entrypoint`",
                Box::new(|p| p.node.command.push("{peer}".into())),
            ),
            (
                "`node.env`",
                Box::new(|p| {
                    p.node.env.insert("X".into(), "{nope}".into());
                }),
            ),
            (
                "`judge.ssh_command`",
                Box::new(|p| p.judge.ssh_command = "ssh {first_ip}".into()),
            ),
            (
                "`judge.ssh_expect`",
                Box::new(|p| p.judge.ssh_expect = "{".into()),
            ),
            ("`limits.poll_ms`", Box::new(|p| p.limits.poll_ms = 0)),
            ("`limits.build_s`", Box::new(|p| p.limits.build_s = 0)),
            ("`limits.memory_mb`", Box::new(|p| p.limits.memory_mb = 8)),
            ("`limits.pids`", Box::new(|p| p.limits.pids = 0)),
            ("`limits.cpus`", Box::new(|p| p.limits.cpus = 0.0)),
            ("`limits.cpus`", Box::new(|p| p.limits.cpus = f64::NAN)),
            ("`limits.log_mb`", Box::new(|p| p.limits.log_mb = 0)),
            (
                "`node.cap_add`",
                Box::new(|p| p.node.cap_add = vec!["NET_ADMINN".into()]),
            ),
            (
                "`node.cap_add`",
                Box::new(|p| p.node.cap_add = vec!["ALL".into()]),
            ),
            ("`limits.rejoin_s`", Box::new(|p| p.limits.rejoin_s = 0)),
            (
                "`judge.shared_hosts_file`",
                Box::new(|p| p.judge.shared_hosts_file = "mnt/hosts".into()),
            ),
            (
                "`scenarios.scale_nodes`",
                Box::new(|p| p.scenarios.scale_nodes = 2),
            ),
            (
                "`scenarios.scale_nodes`",
                Box::new(|p| {
                    p.network.first_offset = 240;
                    p.scenarios.scale_nodes = 14;
                }),
            ),
            (
                "`gateway.port`",
                Box::new(|p| {
                    p.gateway = Some(GatewayTemplate {
                        port: 0,
                        ..Default::default()
                    })
                }),
            ),
            (
                "`gateway`",
                Box::new(|p| {
                    p.gateway = Some(GatewayTemplate {
                        image: Some("x".into()),
                        build: Some("y".into()),
                        ..Default::default()
                    })
                }),
            ),
            (
                "`gateway.command/entrypoint/env`",
                Box::new(|p| {
                    p.gateway = Some(GatewayTemplate {
                        command: vec!["{index}".into()],
                        ..Default::default()
                    })
                }),
            ),
        ];
        for (key, f) in cases {
            let e = checked(f).expect_err(key).to_string();
            assert!(e.contains(key) && e.contains("t.toml"), "{key}: {e}");
        }
    }

    #[test]
    fn capabilities_beyond_the_baseline_need_the_operator() {
        assert_eq!(capability("cap_net_admin").unwrap(), "NET_ADMIN");
        assert_eq!(capability(" SETUID ").unwrap(), "SETUID");
        assert!(capability("ALL").unwrap_err().contains("ALL"));
        assert!(capability("FLY")
            .unwrap_err()
            .contains("not a Linux capability"));
        let mut p = Profile {
            name: "x".into(),
            ..Default::default()
        };
        // Nothing asked, nothing granted.
        assert_eq!(p.granted_caps(&[], "p.toml").unwrap(), Vec::<String>::new());
        // The baseline needs no consent; names are normalized and listed once.
        p.node.cap_add = vec!["setuid".into(), "CAP_SETGID".into(), "SETUID".into()];
        assert_eq!(p.granted_caps(&[], "p.toml").unwrap(), ["SETUID", "SETGID"]);
        // Anything else is refused, naming the capability and the flag, until allowed.
        p.node.cap_add = vec!["SETUID".into(), "NET_ADMIN".into()];
        let e = p.granted_caps(&[], "p.toml").unwrap_err();
        assert_eq!(e.cap, "NET_ADMIN");
        let msg = e.to_string();
        assert!(
            msg.contains("NET_ADMIN")
                && msg.contains("--allow-cap NET_ADMIN")
                && msg.contains("p.toml"),
            "{msg}"
        );
        assert!(p.granted_caps(&["SYS_ADMIN".into()], "p.toml").is_err());
        assert_eq!(
            p.granted_caps(&["cap_net_admin".into()], "p.toml").unwrap(),
            ["SETUID", "NET_ADMIN"]
        );
        // Docker's default set is not the baseline: NET_RAW and MKNOD need consent.
        for cap in ["NET_RAW", "MKNOD", "SYS_ADMIN", "SYS_PTRACE"] {
            assert!(!BASELINE_CAPS.contains(&cap), "{cap}");
        }
        for cap in BASELINE_CAPS {
            assert!(LINUX_CAPS.contains(&cap), "{cap}");
        }
    }

    #[test]
    fn scenarios_and_gateway_sections_load_with_defaults() {
        Jail::expect_with(|jail| {
            let text = format!(
                "{GOOD}\n[scenarios]\nscale = false\nscale_nodes = 12\n[gateway]\ncommand = [\"fw\", \"{{endpoints}}\"]\nbuild = \"gw\"\n"
            );
            jail.create_dir("gw")?;
            jail.create_file("p.toml", &text)?;
            let p = Profile::load(Path::new("p.toml")).map_err(|e| e.to_string())?;
            assert!(!p.scenarios.scale && p.scenarios.leader_demoted);
            assert_eq!(p.scenarios.scale_nodes, 12);
            let g = p.gateway.clone().expect("a gateway");
            assert_eq!((g.port, g.interval_ms), (8080, 100));
            // Relative to the profile's directory, like submission.build.
            assert!(g.build.is_some_and(|b| b.is_absolute()));
            assert_eq!(p.judge.shared_hosts_file, "");
            assert_eq!(p.limits.rejoin_s, 60);
            jail.create_file("q.toml", &format!("{GOOD}\n[scenarios]\nscael = true\n"))?;
            let e = Profile::load(Path::new("q.toml")).unwrap_err().to_string();
            assert!(
                e.contains("`scenarios.scael`") && e.contains("q.toml"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn weights_default_to_one_and_name_only_scenarios() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                &format!("{GOOD}\n[weights]\nkill_leader = 3\nscale = 0.5\nstartup = 0\n"),
            )?;
            let p = Profile::load(Path::new("p.toml")).map_err(|e| e.to_string())?;
            assert_eq!(p.weight("kill_leader"), 3.0);
            assert_eq!(p.weight("scale"), 0.5);
            assert_eq!(p.weight("startup"), 0.0);
            assert_eq!(p.weight("kill_follower"), 1.0);
            jail.create_file("q.toml", &format!("{GOOD}\n[weights]\nkil_leader = 2\n"))?;
            let e = Profile::load(Path::new("q.toml")).unwrap_err().to_string();
            assert!(
                e.contains("`weights.kil_leader`")
                    && e.contains("q.toml")
                    && e.contains("kill_leader"),
                "{e}"
            );
            jail.create_file("r.toml", &format!("{GOOD}\n[weights]\nscale = -1\n"))?;
            let e = Profile::load(Path::new("r.toml")).unwrap_err().to_string();
            assert!(e.contains("`weights.scale`") && e.contains("r.toml"), "{e}");
            jail.create_file("s.toml", &format!("{GOOD}\n[weights]\nscale = nan\n"))?;
            let e = Profile::load(Path::new("s.toml")).unwrap_err().to_string();
            assert!(e.contains("`weights.scale`"), "{e}");
            jail.create_file("t.toml", &format!("{GOOD}\n[weights]\nscale = \"two\"\n"))?;
            let e = Profile::load(Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains("weights.scale") && e.contains("t.toml"), "{e}");
            Ok(())
        });
        assert!(Profile::default().weights.is_empty());
    }

    #[test]
    fn gateway_vars_name_every_endpoint_and_its_own_address() {
        let plan = IpPlan {
            subnet: "10.79.1.0/24".parse().unwrap(),
            first_offset: 10,
            nodes: 3,
        };
        assert_eq!(plan.gateway_ip().to_string(), "10.79.1.254");
        let v = plan.gateway_vars("lab", 2379);
        assert_eq!(
            render("{ip} {endpoints}", &v).unwrap(),
            "10.79.1.254 http://10.79.1.10:2379,http://10.79.1.11:2379,http://10.79.1.12:2379"
        );
        assert!(render("{index}", &v).is_err(), "no per-node placeholder");
    }

    #[test]
    fn render_fills_placeholders_and_escapes_braces() {
        let plan = IpPlan {
            subnet: "10.79.1.0/24".parse().unwrap(),
            first_offset: 10,
            nodes: 3,
        };
        let v = plan.node_vars(2, "lab");
        assert_eq!(
            render("{name} {ip} {index}/{n} {first_ip}", &v).unwrap(),
            "node2 10.79.1.12 2/3 10.79.1.10"
        );
        assert_eq!(
            render("{peers}", &v).unwrap(),
            "node0=10.79.1.10,node1=10.79.1.11,node2=10.79.1.12"
        );
        assert_eq!(
            render("{ips} {cluster} {subnet}", &v).unwrap(),
            "10.79.1.10,10.79.1.11,10.79.1.12 lab 10.79.1.0/24"
        );
        assert_eq!(render("a{{b}}c", &v).unwrap(), "a{b}c");
        let e = render("{bogus}", &v).unwrap_err();
        assert!(
            matches!(&e, TemplateError::Unknown { key, .. } if key == "bogus"),
            "{e}"
        );
        assert!(e.to_string().contains("{bogus}; known: {cluster}"), "{e}");
        assert!(matches!(
            render("x}", &v),
            Err(TemplateError::LoneClose { .. })
        ));
        assert!(matches!(
            render("{ip", &v),
            Err(TemplateError::Unclosed { .. })
        ));
    }

    #[test]
    fn every_shipped_profile_loads() {
        let root = crate::images::default_workspace();
        for p in [
            "profiles/clusterlab.toml",
            "fixtures/good/profile.toml",
            "fixtures/faulty/profile.toml",
            "fixtures/hostile/forkbomb/profile.toml",
            "fixtures/hostile/memhog/profile.toml",
            "fixtures/hostile/flood/profile.toml",
            "fixtures/hostile/symlink/profile.toml",
            "fixtures/hostile/linkloop/profile.toml",
            "fixtures/hostile/escapes/profile.toml",
            "fixtures/hostile/endless/profile.toml",
            "fixtures/sticky-service/profile.toml",
            "fixtures/no-rejoin/profile.toml",
            "fixtures/forwarder-exits/profile.toml",
            "fixtures/last-digit/profile.toml",
            "fixtures/no-shared-table/profile.toml",
        ] {
            let path = root.join(p);
            let profile = Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            // The shipped profiles ask only for what needs no --allow-cap.
            profile
                .granted_caps(&[], p)
                .unwrap_or_else(|e| panic!("{e}"));
            if let ImageSource::Build(dir) = profile.image_source() {
                assert!(dir.join("Dockerfile").is_file(), "{p}: {}", dir.display());
            }
        }
    }
}
