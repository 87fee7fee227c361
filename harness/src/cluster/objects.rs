//! The one owner of a cluster's Docker objects: its network, volumes and containers, made
//! from per-container specs, always labelled `clusterlab.cluster=<name>` so that `harness
//! down` (and the sweep of leftovers) finds every one of them; exec with capped output, logs,
//! kill, stop, start, and removal.
//!
//! The owner also records, process-wide, every cluster this process has created objects of
//! and not handed over ([`claimed`]): an interrupted run removes exactly those (see
//! [`crate::shutdown`]). Run-scoped clusters (trials, gradings, one-shot containers) also carry
//! `clusterlab.pid=<creating process>`, so a later run can remove what a killed process left
//! behind without touching clusters of runs that are still alive ([`sweep_orphans`]).

use crate::docker::{ctx, is_not_found, HarnessError, Result};
use crate::names::{
    parse_cidr, ClusterNames, Subnet, LABEL_CLUSTER, LABEL_NODE, LABEL_PID, LABEL_ROLE,
};
use crate::oracle::ContainerState;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, HostConfigLogConfig,
    Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig, PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

/// Most bytes kept of each output stream of a command run in a container; the rest is
/// dropped and the text ends with [`TRUNCATED_NOTE`].
pub const EXEC_OUTPUT_CAP: usize = 1 << 20;
/// Appended to an output stream that was cut at [`EXEC_OUTPUT_CAP`].
pub const TRUNCATED_NOTE: &str = "\n[output truncated at 1 MiB]";

/// Result of a command run inside a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
    /// Whether stdout or stderr was cut at [`EXEC_OUTPUT_CAP`].
    pub truncated: bool,
}

/// What a container is for; its `clusterlab.role` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerRole {
    #[default]
    Node,
    Gateway,
    OneShot,
}

impl ContainerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRole::Node => "node",
            ContainerRole::Gateway => "gateway",
            ContainerRole::OneShot => "oneshot",
        }
    }
}

/// One container to create: everything that differs between a clusterlab node, the gateway,
/// a graded submission's node and a one-shot check. Empty lists leave the image's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// The container's name.
    pub container: String,
    pub role: ContainerRole,
    /// The node it is (its `clusterlab.node` label), if it is one.
    pub node: Option<String>,
    pub image: String,
    pub hostname: Option<String>,
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    /// `KEY=VALUE` lines.
    pub env: Vec<String>,
    /// (volume, path in the container).
    pub mounts: Vec<(String, String)>,
    /// (volume, path in the container), mounted read-only.
    pub read_only_mounts: Vec<(String, String)>,
    pub cap_add: Vec<String>,
    /// Fixed address on the cluster's network; `None` for a container on no network.
    pub ip: Option<Ipv4Addr>,
    /// (container TCP port, host port on 127.0.0.1); host port 0 lets Docker choose.
    pub publish: Option<(u16, u16)>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    pub stop_timeout_s: Option<i64>,
    /// Run an init process as PID 1 (reaps zombies, forwards signals).
    pub init: bool,
    /// Resource limits, dropped capabilities and privileges; `None` runs the container as
    /// Docker would by default (`harness up`'s own clusters).
    pub confinement: Option<Confinement>,
}

/// How a container that runs untrusted code is held in: every capability dropped but
/// `ContainerSpec::cap_add`, `no-new-privileges`, and limits on memory (swap included),
/// processes, CPU and the size of its log.
#[derive(Debug, Clone, PartialEq)]
pub struct Confinement {
    pub memory_bytes: i64,
    pub pids: i64,
    /// CPUs, in billionths (Docker's NanoCpus).
    pub nano_cpus: i64,
    /// Size of one json-file log file, in bytes.
    pub log_file_bytes: u64,
    /// Log files kept (the oldest is dropped when the newest is full).
    pub log_files: u32,
}

impl ContainerSpec {
    /// The Docker body of this container, on `network` (when it has an address) and with
    /// `labels` (the owner's cluster labels) plus its role and node.
    pub fn body(&self, network: &str, mut labels: HashMap<String, String>) -> ContainerCreateBody {
        labels.insert(LABEL_ROLE.into(), self.role.as_str().into());
        if let Some(node) = &self.node {
            labels.insert(LABEL_NODE.into(), node.clone());
        }
        let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let binds: Vec<String> = self
            .mounts
            .iter()
            .map(|(vol, path)| format!("{vol}:{path}"))
            .chain(
                self.read_only_mounts
                    .iter()
                    .map(|(vol, path)| format!("{vol}:{path}:ro")),
            )
            .collect();
        let port = self.publish.map(|(p, _)| format!("{p}/tcp"));
        let c = self.confinement.as_ref();
        ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: self.hostname.clone(),
            entrypoint: nonempty(&self.entrypoint),
            cmd: nonempty(&self.command),
            env: nonempty(&self.env),
            labels: Some(labels),
            stop_timeout: self.stop_timeout_s,
            exposed_ports: port.clone().map(|p| vec![p]),
            host_config: Some(HostConfig {
                init: self.init.then_some(true),
                binds: nonempty(&binds),
                cap_add: nonempty(&self.cap_add),
                cap_drop: c.map(|_| vec!["ALL".to_string()]),
                security_opt: c.map(|_| vec!["no-new-privileges".to_string()]),
                // No IPv6 at all: the host's firewall rule for a graded bridge is IPv4's.
                sysctls: c.map(|_| {
                    HashMap::from([(
                        "net.ipv6.conf.all.disable_ipv6".to_string(),
                        "1".to_string(),
                    )])
                }),
                memory: c.map(|c| c.memory_bytes),
                memory_swap: c.map(|c| c.memory_bytes),
                pids_limit: c.map(|c| c.pids),
                nano_cpus: c.map(|c| c.nano_cpus),
                log_config: c.map(|c| HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), c.log_file_bytes.to_string()),
                        ("max-file".to_string(), c.log_files.to_string()),
                    ])),
                }),
                network_mode: self.ip.map(|_| network.to_string()),
                port_bindings: self.publish.map(|(p, host)| {
                    HashMap::from([(
                        format!("{p}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(if host == 0 {
                                String::new()
                            } else {
                                host.to_string()
                            }),
                        }]),
                    )])
                }),
                ..Default::default()
            }),
            networking_config: self.ip.map(|ip| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        }
    }
}

/// A container that does not run, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub container: String,
    pub state: ContainerState,
    pub exit_code: i64,
    /// Docker's error text for the container, if it has one.
    pub error: Option<String>,
    /// The kernel killed a process of the container for exceeding its memory limit.
    pub oom_killed: bool,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its container {} is {} (exit code {})",
            self.container, self.state, self.exit_code
        )?;
        if self.oom_killed {
            write!(f, ", killed for running out of memory (its memory limit)")?;
        }
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// Kinds of labelled objects, in the order they are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Container,
    Network,
    Volume,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Container => "container",
            ObjectKind::Network => "network",
            ObjectKind::Volume => "volume",
        })
    }
}

/// Clusters this process created objects of and has not handed over or removed.
static CLAIMED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn claimed_set() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    CLAIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names of the clusters this process created and still answers for.
pub fn claimed() -> Vec<String> {
    claimed_set().iter().cloned().collect()
}

/// The Docker objects of one cluster, and the only code that creates or removes them.
#[derive(Debug, Clone)]
pub struct ClusterObjects {
    pub docker: Docker,
    pub names: ClusterNames,
    run_scoped: bool,
    internal: bool,
}

fn label_filters(filter: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![filter.to_string()])])
}

impl ClusterObjects {
    /// The objects of cluster `name` (nothing is created yet).
    pub fn new(docker: &Docker, name: &str) -> Self {
        ClusterObjects {
            docker: docker.clone(),
            names: ClusterNames::new(name),
            run_scoped: false,
            internal: false,
        }
    }

    /// The cluster's network will be internal: Docker routes nothing between it and any
    /// other network or the outside world. The host still reaches the containers'
    /// addresses (and they the host's own, which Docker does not filter).
    pub fn internal_network(mut self) -> Self {
        self.internal = true;
        self
    }

    /// Marks the objects as belonging to this run: they carry `clusterlab.pid` and a later
    /// run sweeps them once this process is gone.
    pub fn run_scoped(mut self) -> Self {
        self.run_scoped = true;
        self
    }

    pub fn cluster(&self) -> &str {
        &self.names.cluster
    }

    /// The labels every object of this cluster carries, plus `extra`.
    pub fn labels(&self, extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut l = HashMap::from([(LABEL_CLUSTER.to_string(), self.names.cluster.clone())]);
        if self.run_scoped {
            l.insert(LABEL_PID.into(), std::process::id().to_string());
        }
        for (k, v) in extra {
            l.insert(k.to_string(), v.clone());
        }
        l
    }

    fn claim(&self) {
        claimed_set().insert(self.names.cluster.clone());
    }

    /// The cluster now belongs to the user (a finished `harness up`): an interrupt of this
    /// process no longer removes it.
    pub fn hand_over(&self) {
        claimed_set().remove(&self.names.cluster);
    }

    /// Creates the cluster's bridge network on `subnet` (bridge gateway at offset 1) with
    /// `extra` labels. When Docker refuses because another network holds an overlapping
    /// range, the error says which ([`HarnessError::SubnetTaken`]).
    pub async fn create_network(&self, subnet: Subnet, extra: &[(&str, String)]) -> Result<()> {
        self.claim();
        let name = self.names.network();
        let r = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                internal: self.internal.then_some(true),
                // An internal network's bridge gets a name the host's firewall rule can use.
                options: self.internal.then(|| {
                    HashMap::from([(
                        super::firewall::BRIDGE_NAME_OPTION.to_string(),
                        super::firewall::bridge_name(&name),
                    )])
                }),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.to_string()),
                        gateway: Some(subnet.bridge_gateway().to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(self.labels(extra)),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) if self.internal => {
                // Nodes may answer the host, never open a connection to it.
                let bridge = super::firewall::bridge_name(&name);
                if let Err(e) = super::firewall::shut(&bridge).await {
                    let _ = self.docker.remove_network(&name).await;
                    return Err(e.into());
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                let used = used_subnets(&self.docker).await.unwrap_or_default();
                if let Some((network, other)) = used
                    .into_iter()
                    .find(|(n, s)| *n != name && s.overlaps(&subnet))
                {
                    return Err(HarnessError::SubnetTaken {
                        subnet,
                        network,
                        other: other.to_string(),
                    });
                }
                ctx(format!("creating network {name} ({subnet})"), Err(e))
            }
        }
    }

    /// Creates a named local volume, labelled with the node it belongs to, if any.
    pub async fn create_volume(&self, name: &str, node: Option<&str>) -> Result<()> {
        self.claim();
        let extra: Vec<(&str, String)> = node
            .map(|n| (LABEL_NODE, n.to_string()))
            .into_iter()
            .collect();
        ctx(
            format!("creating volume {name}"),
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.to_string()),
                    labels: Some(self.labels(&extra)),
                    ..Default::default()
                })
                .await,
        )?;
        Ok(())
    }

    /// Creates (does not start) a container.
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        self.claim();
        let body = spec.body(&self.names.network(), self.labels(&[]));
        ctx(
            format!("creating container {} from {}", spec.container, spec.image),
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(spec.container.clone()),
                        ..Default::default()
                    }),
                    body,
                )
                .await,
        )?;
        Ok(())
    }

    /// Creates the network, the volumes (name, node) and the containers, then starts the
    /// containers in order.
    pub async fn create_all(
        &self,
        subnet: Subnet,
        network_labels: &[(&str, String)],
        volumes: &[(String, Option<String>)],
        containers: &[ContainerSpec],
    ) -> Result<()> {
        self.create_network(subnet, network_labels).await?;
        for (v, node) in volumes {
            self.create_volume(v, node.as_deref()).await?;
        }
        for c in containers {
            self.create_container(c).await?;
        }
        for c in containers {
            self.start(&c.container).await?;
        }
        Ok(())
    }

    /// Starts a container (again: same volumes, same identity).
    pub async fn start(&self, container: &str) -> Result<()> {
        ctx(
            format!("starting {container}"),
            self.docker.start_container(container, None).await,
        )
    }

    /// SIGKILLs a container.
    pub async fn kill(&self, container: &str) -> Result<()> {
        ctx(
            format!("killing {container}"),
            self.docker
                .kill_container(
                    container,
                    Some(KillContainerOptions {
                        signal: "SIGKILL".into(),
                    }),
                )
                .await,
        )
    }

    /// Stops a container gracefully (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<()> {
        ctx(
            format!("stopping {container}"),
            self.docker
                .stop_container(
                    container,
                    Some(StopContainerOptions {
                        t: Some(grace.as_secs() as i32),
                        ..Default::default()
                    }),
                )
                .await,
        )
    }

    /// Runs a command in a container and collects its exit code and output (each stream
    /// capped at [`EXEC_OUTPUT_CAP`]).
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput> {
        exec_in(&self.docker, container, cmd).await
    }

    /// The last `lines` lines of a container's log (stdout and stderr); empty if none.
    pub async fn logs_tail(&self, container: &str, lines: usize) -> String {
        logs_tail(&self.docker, container, lines).await
    }

    /// The last `lines` lines of a container's log, at most `max_bytes` of them (the end is
    /// kept, and the text then starts with a note saying it was cut).
    pub async fn logs_tail_capped(
        &self,
        container: &str,
        lines: usize,
        max_bytes: usize,
    ) -> String {
        let mut logs = self.docker.logs(
            container,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut bytes: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
        let mut cut = false;
        while let Some(Ok(chunk)) = logs.next().await {
            bytes.extend(chunk.into_bytes().iter());
            if bytes.len() > max_bytes {
                bytes.drain(..bytes.len() - max_bytes);
                cut = true;
            }
        }
        let text = String::from_utf8_lossy(bytes.make_contiguous()).into_owned();
        if cut {
            format!("[log cut to its last {max_bytes} bytes]\n{text}")
        } else {
            text
        }
    }

    /// Processes in a container now and its limit (0 for none), as Docker's stats say.
    pub async fn pids(&self, container: &str) -> Result<(u64, u64)> {
        let mut s = self.docker.stats(
            container,
            Some(bollard::query_parameters::StatsOptions {
                stream: false,
                one_shot: true,
            }),
        );
        match s.next().await {
            Some(r) => {
                let st = ctx(format!("reading the stats of {container}"), r)?;
                let p = st.pids_stats.unwrap_or_default();
                Ok((p.current.unwrap_or(0), p.limit.unwrap_or(0)))
            }
            None => Ok((0, 0)),
        }
    }

    /// The last `lines` lines of each of `containers`' logs, headed by the container name.
    pub async fn logs_tails(&self, containers: &[String], lines: usize) -> String {
        let mut out = String::new();
        for c in containers {
            let text = self.logs_tail(c, lines).await;
            if !text.is_empty() {
                out.push_str(&format!("[{c}]\n{}\n", text.trim_end()));
            }
        }
        out
    }

    /// State of every container of the cluster, by container name.
    pub async fn container_states(&self) -> Result<HashMap<String, ContainerState>> {
        let list = ctx(
            format!("listing containers of {}", self.names.cluster),
            self.docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(label_filters(&self.names.label_filter())),
                    ..Default::default()
                }))
                .await,
        )?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                let state = c
                    .state
                    .map(|s| ContainerState::parse(s.as_ref()))
                    .unwrap_or(ContainerState::Other("unknown".into()));
                (name, state)
            })
            .collect())
    }

    /// `None` when the container runs, else what Docker says about it (state, exit code).
    pub async fn not_running(&self, container: &str) -> Result<Option<Stopped>> {
        let info = ctx(
            format!("inspecting {container}"),
            self.docker.inspect_container(container, None).await,
        )?;
        let st = info.state.unwrap_or_default();
        if st.running == Some(true) {
            return Ok(None);
        }
        Ok(Some(Stopped {
            container: container.to_string(),
            state: st
                .status
                .map(|s| ContainerState::parse(s.as_ref()))
                .unwrap_or(ContainerState::Other("not running".into())),
            exit_code: st.exit_code.unwrap_or(-1),
            error: st.error.filter(|e| !e.is_empty()),
            oom_killed: st.oom_killed == Some(true),
        }))
    }

    /// Every object carrying this cluster's label, in removal order.
    pub async fn list(&self) -> Result<Vec<(ObjectKind, String)>> {
        list_labelled(&self.docker, &self.names.label_filter()).await
    }

    /// Removes every container, network and volume of the cluster (containers first, since
    /// a network or volume in use cannot go); returns how many objects went. Afterwards the
    /// process no longer answers for the cluster.
    pub async fn remove(&self) -> Result<usize> {
        let mut removed = 0;
        // A create that was in flight when the list was taken may land afterwards: look
        // again until nothing is left (or nothing more could be removed).
        for _ in 0..3 {
            let objects = self.list().await?;
            if objects.is_empty() {
                break;
            }
            let before = removed;
            for (kind, obj) in &objects {
                let r = match kind {
                    ObjectKind::Container => {
                        self.docker
                            .remove_container(
                                obj,
                                Some(RemoveContainerOptions {
                                    force: true,
                                    v: true,
                                    ..Default::default()
                                }),
                            )
                            .await
                    }
                    ObjectKind::Network => {
                        let r = self.docker.remove_network(obj).await;
                        if r.is_ok() || r.as_ref().is_err_and(is_not_found) {
                            super::firewall::open(&super::firewall::bridge_name(obj)).await;
                        }
                        r
                    }
                    ObjectKind::Volume => {
                        self.docker
                            .remove_volume(obj, Some(RemoveVolumeOptions { force: true }))
                            .await
                    }
                };
                match r {
                    Ok(()) => removed += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return ctx(format!("removing {kind} {obj}"), Err(e)),
                }
            }
            if removed == before {
                break;
            }
        }
        claimed_set().remove(&self.names.cluster);
        Ok(removed)
    }
}

/// Runs a command in a container and collects its exit code and output (each stream capped
/// at [`EXEC_OUTPUT_CAP`]).
pub async fn exec_in(docker: &Docker, container: &str, cmd: &[&str]) -> Result<ExecOutput> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let what = || format!("running {cmd:?} in {container}");
    let exec = ctx(
        what(),
        docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await,
    )?;
    let mut stdout = CappedText::default();
    let mut stderr = CappedText::default();
    if let StartExecResults::Attached { mut output, .. } =
        ctx(what(), docker.start_exec(&exec.id, None).await)?
    {
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(bollard::container::LogOutput::StdErr { message }) => stderr.push(&message),
                Ok(other) => stdout.push(&other.into_bytes()),
                Err(e) => return ctx(format!("reading output of {cmd:?} in {container}"), Err(e)),
            }
        }
    }
    let info = ctx(
        format!("inspecting exec in {container}"),
        docker.inspect_exec(&exec.id).await,
    )?;
    Ok(ExecOutput {
        code: info.exit_code.unwrap_or(-1),
        truncated: stdout.truncated || stderr.truncated,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    })
}

/// Output bytes kept up to [`EXEC_OUTPUT_CAP`].
#[derive(Default)]
struct CappedText {
    bytes: Vec<u8>,
    truncated: bool,
}

impl CappedText {
    fn push(&mut self, chunk: &[u8]) {
        let room = EXEC_OUTPUT_CAP.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    fn finish(self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.truncated {
            s.push_str(TRUNCATED_NOTE);
        }
        s
    }
}

/// The last `lines` lines of a container's log (stdout and stderr); empty if none.
pub async fn logs_tail(docker: &Docker, container: &str, lines: usize) -> String {
    let mut logs = docker.logs(
        container,
        Some(bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        }),
    );
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}

/// Every network's IPv4 subnets as (network name, range).
pub async fn used_subnets(docker: &Docker) -> Result<Vec<(String, Subnet)>> {
    let nets = ctx(
        "listing networks",
        docker.list_networks(None::<ListNetworksOptions>).await,
    )?;
    let mut out = Vec::new();
    for n in nets {
        let name = n.name.unwrap_or_default();
        let configs = n.ipam.and_then(|i| i.config).unwrap_or_default();
        for c in configs {
            if let Some(s) = c.subnet.as_deref().and_then(parse_cidr) {
                out.push((name.clone(), s));
            }
        }
    }
    Ok(out)
}

/// Every object matching a label filter, in removal order (containers, networks, volumes).
async fn list_labelled(docker: &Docker, filter: &str) -> Result<Vec<(ObjectKind, String)>> {
    let mut out = Vec::new();
    let containers = ctx(
        "listing containers",
        docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filters(filter)),
                ..Default::default()
            }))
            .await,
    )?;
    for c in containers {
        let n = c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default();
        out.push((ObjectKind::Container, n.trim_start_matches('/').to_string()));
    }
    let networks = ctx(
        "listing networks",
        docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(label_filters(filter)),
            }))
            .await,
    )?;
    for n in networks {
        out.push((ObjectKind::Network, n.name.unwrap_or_default()));
    }
    let volumes = ctx(
        "listing volumes",
        docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filters(filter)),
            }))
            .await,
    )?;
    for v in volumes.volumes.unwrap_or_default() {
        out.push((ObjectKind::Volume, v.name));
    }
    Ok(out)
}

/// Every object carrying cluster `name`'s label, as (kind, name).
pub async fn list_objects(docker: &Docker, name: &str) -> Result<Vec<(String, String)>> {
    Ok(ClusterObjects::new(docker, name)
        .list()
        .await?
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect())
}

/// Removes every object labelled with cluster `name`; returns how many went.
pub async fn down(docker: &Docker, name: &str) -> Result<usize> {
    ClusterObjects::new(docker, name).remove().await
}

/// Whether process `pid` is alive on this machine.
fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Run-scoped clusters (their objects carry `clusterlab.pid`) whose creating process is
/// gone, from the labels of (cluster, pid) pairs; clusters of live processes are kept.
pub fn orphans(labelled: &[(String, u32)], alive: impl Fn(u32) -> bool) -> Vec<String> {
    let mut out: Vec<String> = labelled
        .iter()
        .filter(|(_, pid)| !alive(*pid))
        .map(|(c, _)| c.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Removes the run-scoped clusters whose creating process no longer runs (leftovers of
/// killed trial, grading or image-check runs); returns (cluster, objects removed).
pub async fn sweep_orphans(docker: &Docker) -> Result<Vec<(String, usize)>> {
    let filters = label_filters(LABEL_PID);
    let mut labelled: Vec<(String, u32)> = Vec::new();
    let mut note = |labels: Option<&HashMap<String, String>>| {
        if let Some(l) = labels {
            if let (Some(c), Some(pid)) = (
                l.get(LABEL_CLUSTER),
                l.get(LABEL_PID).and_then(|p| p.parse().ok()),
            ) {
                labelled.push((c.clone(), pid));
            }
        }
    };
    let containers = ctx(
        "listing run-scoped containers",
        docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await,
    )?;
    for c in &containers {
        note(c.labels.as_ref());
    }
    let networks = ctx(
        "listing run-scoped networks",
        docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await,
    )?;
    for n in &networks {
        note(n.labels.as_ref());
    }
    let volumes = ctx(
        "listing run-scoped volumes",
        docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await,
    )?;
    for v in volumes.volumes.unwrap_or_default() {
        note(Some(&v.labels));
    }
    let mut out = Vec::new();
    for cluster in orphans(&labelled, process_alive) {
        let n = down(docker, &cluster).await?;
        out.push((cluster, n));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_labels_mounts_address_and_port() {
        let spec = ContainerSpec {
            container: "lab-gateway".into(),
            role: ContainerRole::Gateway,
            image: "img".into(),
            hostname: Some("gateway".into()),
            entrypoint: vec!["/usr/local/bin/proxy".into()],
            mounts: vec![("lab-shared".into(), "/shared".into())],
            ip: Some(Ipv4Addr::new(10, 77, 0, 5)),
            publish: Some((8888, 0)),
            init: true,
            ..Default::default()
        };
        let labels = HashMap::from([(LABEL_CLUSTER.to_string(), "lab".to_string())]);
        let b = spec.body("lab-net", labels);
        let l = b.labels.unwrap();
        assert_eq!(l[LABEL_CLUSTER], "lab");
        assert_eq!(l[LABEL_ROLE], "gateway");
        assert!(!l.contains_key(LABEL_NODE));
        assert_eq!(b.cmd, None);
        assert_eq!(b.env, None);
        assert_eq!(b.exposed_ports.unwrap(), ["8888/tcp"]);
        let hc = b.host_config.unwrap();
        assert_eq!(hc.binds.unwrap(), ["lab-shared:/shared"]);
        assert_eq!(hc.network_mode.as_deref(), Some("lab-net"));
        let ports = hc.port_bindings.unwrap();
        let bind = ports["8888/tcp"].as_ref().unwrap()[0].clone();
        assert_eq!(bind.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(bind.host_port.as_deref(), Some(""));
        let ep = b.networking_config.unwrap().endpoints_config.unwrap();
        let addr = ep["lab-net"]
            .ipam_config
            .as_ref()
            .unwrap()
            .ipv4_address
            .clone();
        assert_eq!(addr.as_deref(), Some("10.77.0.5"));
    }

    #[test]
    fn a_confined_container_drops_every_capability_and_is_limited() {
        let mut spec = ContainerSpec {
            container: "g-node0".into(),
            image: "img".into(),
            cap_add: vec!["SETUID".into()],
            ip: Some(Ipv4Addr::new(10, 79, 1, 10)),
            confinement: Some(Confinement {
                memory_bytes: 64 << 20,
                pids: 100,
                nano_cpus: 250_000_000,
                log_file_bytes: 1 << 20,
                log_files: 2,
            }),
            ..Default::default()
        };
        let hc = spec.body("g-net", HashMap::new()).host_config.unwrap();
        assert_eq!(hc.cap_drop.unwrap(), ["ALL"]);
        assert_eq!(hc.cap_add.unwrap(), ["SETUID"]);
        assert_eq!(hc.security_opt.unwrap(), ["no-new-privileges"]);
        assert_eq!(
            hc.sysctls.unwrap().get("net.ipv6.conf.all.disable_ipv6"),
            Some(&"1".to_string())
        );
        assert_eq!(hc.memory, Some(64 << 20));
        // No swap beyond the memory limit.
        assert_eq!(hc.memory_swap, Some(64 << 20));
        assert_eq!(hc.pids_limit, Some(100));
        assert_eq!(hc.nano_cpus, Some(250_000_000));
        let log = hc.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let cfg = log.config.unwrap();
        assert_eq!(cfg["max-size"], "1048576");
        assert_eq!(cfg["max-file"], "2");
        // Without confinement (harness up's own nodes), Docker's defaults stay.
        spec.confinement = None;
        let hc = spec.body("g-net", HashMap::new()).host_config.unwrap();
        assert_eq!(
            (
                hc.cap_drop,
                hc.security_opt,
                hc.memory,
                hc.pids_limit,
                hc.log_config
            ),
            (None, None, None, None, None)
        );
    }

    #[test]
    fn a_container_without_address_joins_no_network() {
        let spec = ContainerSpec {
            container: "x".into(),
            role: ContainerRole::OneShot,
            image: "img".into(),
            ..Default::default()
        };
        let b = spec.body("x-net", HashMap::new());
        assert_eq!(b.networking_config, None);
        assert_eq!(b.host_config.unwrap().network_mode, None);
        assert_eq!(b.labels.unwrap()[LABEL_ROLE], "oneshot");
    }

    #[test]
    fn run_scoped_objects_carry_the_pid() {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let plain = ClusterObjects::new(&docker, "lab");
        assert!(!plain.labels(&[]).contains_key(LABEL_PID));
        let scoped = ClusterObjects::new(&docker, "lab").run_scoped();
        let l = scoped.labels(&[("k", "v".into())]);
        assert_eq!(l[LABEL_PID], std::process::id().to_string());
        assert_eq!(l[LABEL_CLUSTER], "lab");
        assert_eq!(l["k"], "v");
    }

    #[test]
    fn only_clusters_of_dead_processes_are_orphans() {
        let labelled = vec![
            ("t1-a".to_string(), 100),
            ("t1-a".to_string(), 100),
            ("t2-b".to_string(), 200),
            ("t3-c".to_string(), 300),
        ];
        let alive = |pid| pid == 200;
        assert_eq!(orphans(&labelled, alive), ["t1-a", "t3-c"]);
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn exec_output_is_capped_and_says_so() {
        let mut t = CappedText::default();
        t.push(&vec![b'a'; EXEC_OUTPUT_CAP - 1]);
        t.push(b"bc");
        assert!(t.truncated);
        let s = t.finish();
        assert!(s.ends_with(TRUNCATED_NOTE));
        assert_eq!(s.len(), EXEC_OUTPUT_CAP + TRUNCATED_NOTE.len());
        let mut t = CappedText::default();
        t.push(b"ok");
        assert!(!t.truncated);
        assert_eq!(t.finish(), "ok");
    }
}
