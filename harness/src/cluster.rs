//! A cluster of node containers on its own bridge network: bring up, inspect, break, mend
//! and remove. Every object carries the cluster label, so `down` also cleans up after a
//! crashed run.

use crate::docker::{ctx, is_not_found, HarnessError, Result};
use crate::names::{
    validate_cluster_name, ClusterNames, Subnet, FIRST_NODE_OFFSET, GATEWAY_OFFSET, LABEL_CLUSTER,
    LABEL_NODE, LABEL_ROLE, MAX_NODES,
};
use agent::schema::{self, ClusterView, LeaderRecord};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};
use bollard::Docker;
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// What to bring up.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub nodes: usize,
    pub subnet: Subnet,
    /// The node image (see [`crate::images`]).
    pub image: String,
    pub lease_ttl_s: u64,
    /// Start the gateway container running `proxy`.
    pub gateway: bool,
    /// Host port on 127.0.0.1 for the gateway; 0 lets Docker choose.
    pub gateway_port: u16,
    /// Extra `CLUSTERLAB_*` settings for every node, e.g. ("CLUSTERLAB_ETCD__ELECTION_MS", "500").
    pub env: Vec<(String, String)>,
    /// How long `up` waits for every node key and a leader key.
    pub ready_timeout: Duration,
}

impl ClusterSpec {
    /// A spec with the design's defaults for `image`.
    pub fn new(name: &str, nodes: usize, image: &str) -> Self {
        ClusterSpec {
            name: name.into(),
            nodes,
            subnet: crate::names::DEFAULT_SUBNET.parse().unwrap_or(Subnet {
                base: Ipv4Addr::new(10, 77, 0, 0),
                prefix: 24,
            }),
            image: image.into(),
            lease_ttl_s: 10,
            gateway: true,
            gateway_port: 8888,
            env: Vec::new(),
            ready_timeout: Duration::from_secs(90),
        }
    }

    /// Checks the spec before anything is created.
    pub fn validate(&self) -> Result<()> {
        validate_cluster_name(&self.name).map_err(HarnessError::Usage)?;
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(HarnessError::Usage(format!(
                "--nodes {} is out of range: give 1 to {MAX_NODES}",
                self.nodes
            )));
        }
        let room = 1u64 << (32 - self.subnet.prefix);
        if FIRST_NODE_OFFSET as u64 + self.nodes as u64 >= room - 1 {
            return Err(HarnessError::Usage(format!(
                "subnet {} has no room for {} nodes starting at offset {FIRST_NODE_OFFSET}",
                self.subnet, self.nodes
            )));
        }
        Ok(())
    }

    /// Node names in order.
    pub fn node_names(&self) -> Vec<String> {
        (0..self.nodes).map(ClusterNames::node_name).collect()
    }

    /// IP of node `i`.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.subnet.host(FIRST_NODE_OFFSET + i as u32)
    }

    /// etcd's `name=ip` peers list for the agents.
    pub fn peers(&self) -> String {
        (0..self.nodes)
            .map(|i| format!("{}={}", ClusterNames::node_name(i), self.node_ip(i)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Result of a command run inside a node.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// One node as the harness sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub name: String,
    pub container: String,
    pub ip: String,
    /// Docker's container state (running, exited, …).
    pub state: String,
    /// "leader" or "follower" as the node's own etcd member reports it; None if unreachable.
    pub etcd_role: Option<String>,
    pub member_id: Option<String>,
    /// The raft leader's member id as this member reports it.
    pub raft_leader: Option<String>,
    pub raft_term: Option<u64>,
    /// Whether `/clusterlab/nodes/<name>` exists.
    pub has_key: bool,
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
    pub state: String,
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
                    n.etcd_role.as_deref().unwrap_or("unreachable"),
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
            "{:<8} {:<22} {:<14} {:<9} {:<10} {:<17} {}\n",
            "NODE", "CONTAINER", "IP", "STATE", "ETCD ROLE", "MEMBER", "KEY"
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "{:<8} {:<22} {:<14} {:<9} {:<10} {:<17} {}\n",
                n.name,
                n.container,
                n.ip,
                n.state,
                n.etcd_role.as_deref().unwrap_or("-"),
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

/// A running cluster: its spec and a Docker client.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub docker: Docker,
    pub spec: ClusterSpec,
    pub names: ClusterNames,
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

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Creates a user-defined bridge network on `subnet` (gateway at offset 1).
pub async fn create_network(
    docker: &Docker,
    name: &str,
    subnet: Subnet,
    labels: HashMap<String, String>,
) -> Result<()> {
    ctx(
        format!("creating network {name} ({subnet})"),
        docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.to_string()),
                        gateway: Some(subnet.bridge_gateway().to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(labels),
                ..Default::default()
            })
            .await,
    )?;
    Ok(())
}

/// Creates a named local volume.
pub async fn create_volume(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<()> {
    ctx(
        format!("creating volume {name}"),
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels),
                ..Default::default()
            })
            .await,
    )?;
    Ok(())
}

fn label_filters(filter: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![filter.to_string()])])
}

impl Cluster {
    /// A handle on an existing cluster (no Docker call is made).
    pub fn attach(docker: Docker, spec: ClusterSpec) -> Cluster {
        let names = ClusterNames::new(&spec.name);
        Cluster {
            docker,
            spec,
            names,
        }
    }

    /// Creates network, volumes and containers, starts them, and waits until every node key
    /// and the leader key are present. On failure, what was created is removed again.
    pub async fn up(docker: &Docker, spec: ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        let cluster = Cluster::attach(docker.clone(), spec);
        if !cluster.objects().await?.is_empty() {
            return Err(HarnessError::Usage(format!(
                "cluster {name:?} already exists; remove it with `harness down --name {name}` or pick another --name",
                name = cluster.spec.name
            )));
        }
        match cluster.create().await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let logs = cluster.logs_tail(20).await;
                let _ = down(docker, &cluster.spec.name).await;
                if logs.is_empty() {
                    Err(e)
                } else {
                    Err(HarnessError::Usage(format!(
                        "{e}\n--- node logs ---\n{logs}"
                    )))
                }
            }
        }
    }

    async fn create(&self) -> Result<()> {
        let d = &self.docker;
        let spec = &self.spec;
        let n = &self.names;
        let cl = spec.name.as_str();
        create_network(d, &n.network(), spec.subnet, self.network_labels()).await?;
        create_volume(d, &n.shared_volume(), labels(&[(LABEL_CLUSTER, cl)])).await?;
        for i in 0..spec.nodes {
            let node = ClusterNames::node_name(i);
            let node_labels = labels(&[(LABEL_CLUSTER, cl), (LABEL_NODE, &node)]);
            create_volume(d, &n.node_volume(i), node_labels).await?;
            self.create_node(i).await?;
        }
        for i in 0..spec.nodes {
            let c = n.node_container(i);
            ctx(format!("starting {c}"), d.start_container(&c, None).await)?;
        }
        if spec.gateway {
            self.create_gateway().await?;
        }
        let step = crate::progress::Step::start(format!(
            "waiting for {} node keys and a leader in {}",
            spec.nodes, spec.name
        ));
        self.wait_ready(spec.ready_timeout).await?;
        step.done();
        Ok(())
    }

    /// The network carries the spec, so later commands can find the cluster by name alone.
    fn network_labels(&self) -> HashMap<String, String> {
        let s = &self.spec;
        let mut l = labels(&[
            (LABEL_CLUSTER, &s.name),
            ("clusterlab.nodes", &s.nodes.to_string()),
            ("clusterlab.subnet", &s.subnet.to_string()),
            ("clusterlab.image", &s.image),
            ("clusterlab.lease_ttl_s", &s.lease_ttl_s.to_string()),
            (
                "clusterlab.gateway",
                if s.gateway { "true" } else { "false" },
            ),
        ]);
        l.insert("clusterlab.gateway_port".into(), s.gateway_port.to_string());
        l
    }

    /// Finds an existing cluster by name from its network's labels.
    pub async fn discover(docker: &Docker, name: &str) -> Result<Cluster> {
        validate_cluster_name(name).map_err(HarnessError::Usage)?;
        let names = ClusterNames::new(name);
        let net = match docker.inspect_network(&names.network(), None).await {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => {
                return Err(HarnessError::Usage(format!(
                    "no cluster named {name:?} (network {} not found); start one with `harness up --name {name}`",
                    names.network()
                )))
            }
            Err(e) => return ctx(format!("inspecting network {}", names.network()), Err(e)),
        };
        let l = net.labels.unwrap_or_default();
        let get = |k: &str| {
            l.get(k).cloned().ok_or_else(|| {
                HarnessError::Usage(format!(
                    "network {} lacks label {k}: it was not made by this harness",
                    names.network()
                ))
            })
        };
        let bad = |k: &str| {
            HarnessError::Usage(format!("network {} has a bad {k} label", names.network()))
        };
        let mut spec = ClusterSpec::new(name, 1, &get("clusterlab.image")?);
        spec.nodes = get("clusterlab.nodes")?.parse().map_err(|_| bad("nodes"))?;
        spec.subnet = get("clusterlab.subnet")?
            .parse()
            .map_err(|_| bad("subnet"))?;
        spec.lease_ttl_s = get("clusterlab.lease_ttl_s")?
            .parse()
            .map_err(|_| bad("lease_ttl_s"))?;
        spec.gateway = get("clusterlab.gateway")? == "true";
        spec.gateway_port = get("clusterlab.gateway_port")?
            .parse()
            .map_err(|_| bad("gateway_port"))?;
        Ok(Cluster::attach(docker.clone(), spec))
    }

    fn endpoint(&self, ip: Ipv4Addr) -> EndpointSettings {
        EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create_node(&self, i: usize) -> Result<()> {
        let spec = &self.spec;
        let n = &self.names;
        let node = ClusterNames::node_name(i);
        let ip = spec.node_ip(i);
        let mut env = vec![
            format!("CLUSTERLAB_NAME={node}"),
            format!("CLUSTERLAB_IP={ip}"),
            format!("CLUSTERLAB_PEERS={}", spec.peers()),
            format!("CLUSTERLAB_CLUSTER={}", spec.name),
            format!("CLUSTERLAB_LEASE_TTL_S={}", spec.lease_ttl_s),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some(node.clone()),
            env: Some(env),
            labels: Some(labels(&[
                (LABEL_CLUSTER, &spec.name),
                (LABEL_NODE, &node),
                (LABEL_ROLE, "node"),
            ])),
            stop_timeout: Some(10),
            host_config: Some(HostConfig {
                init: Some(true),
                binds: Some(vec![
                    format!("{}:/data", n.node_volume(i)),
                    format!("{}:/shared", n.shared_volume()),
                ]),
                cap_add: Some(vec!["NET_ADMIN".into()]),
                network_mode: Some(n.network()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(n.network(), self.endpoint(ip))])),
            }),
            ..Default::default()
        };
        ctx(
            format!("creating container {}", n.node_container(i)),
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(n.node_container(i)),
                        ..Default::default()
                    }),
                    body,
                )
                .await,
        )?;
        Ok(())
    }

    /// Client URLs of every node's etcd member.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        (0..self.spec.nodes)
            .map(|i| format!("http://{}:2379", self.spec.node_ip(i)))
            .collect()
    }

    async fn create_gateway(&self) -> Result<()> {
        let spec = &self.spec;
        let n = &self.names;
        let ip = spec.subnet.host(GATEWAY_OFFSET);
        let port = if spec.gateway_port == 0 {
            String::new()
        } else {
            spec.gateway_port.to_string()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some("gateway".into()),
            entrypoint: Some(vec!["/usr/local/bin/proxy".into()]),
            cmd: Some(vec![
                "--endpoints".into(),
                self.etcd_endpoints().join(","),
                "--listen".into(),
                "0.0.0.0:8888".into(),
            ]),
            labels: Some(labels(&[
                (LABEL_CLUSTER, &spec.name),
                (LABEL_ROLE, "gateway"),
            ])),
            exposed_ports: Some(vec!["8888/tcp".into()]),
            host_config: Some(HostConfig {
                init: Some(true),
                binds: Some(vec![format!("{}:/shared", n.shared_volume())]),
                network_mode: Some(n.network()),
                port_bindings: Some(HashMap::from([(
                    "8888/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(port),
                    }]),
                )])),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(n.network(), self.endpoint(ip))])),
            }),
            ..Default::default()
        };
        ctx(
            format!("creating gateway {}", n.gateway()),
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(n.gateway()),
                        ..Default::default()
                    }),
                    body,
                )
                .await,
        )?;
        ctx(
            format!("starting gateway {}", n.gateway()),
            self.docker.start_container(&n.gateway(), None).await,
        )?;
        Ok(())
    }

    /// Waits until every running node has its key and the leader key names etcd's leader.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ClusterStatus> {
        let (st, _) = crate::wait::wait_for(
            "every node key and a leader key naming etcd's leader",
            timeout,
            Duration::from_millis(250),
            || async {
                let st = self.status().await.map_err(|e| e.to_string())?;
                let running: Vec<_> = st.nodes.iter().filter(|n| n.state == "running").collect();
                let all_keys = !running.is_empty() && running.iter().all(|n| n.has_key);
                let leader_ok =
                    matches!((&st.leader_key, &st.etcd_leader), (Some(k), Some(l)) if &k.name == l);
                if all_keys && leader_ok {
                    Ok(st)
                } else {
                    Err(st.summary())
                }
            },
        )
        .await?;
        Ok(st)
    }

    /// Every object carrying this cluster's label: (kind, name).
    pub async fn objects(&self) -> Result<Vec<(String, String)>> {
        list_objects(&self.docker, &self.spec.name).await
    }

    /// Node names in order.
    pub fn node_names(&self) -> Vec<String> {
        self.spec.node_names()
    }

    /// Index of a node given as `node3`, `<cluster>-node3` or `3`.
    pub fn resolve(&self, name: &str) -> Result<usize> {
        let short = name
            .strip_prefix(&format!("{}-", self.spec.name))
            .unwrap_or(name);
        let idx = ClusterNames::node_index(short).or_else(|| short.parse().ok());
        match idx {
            Some(i) if i < self.spec.nodes => Ok(i),
            _ => Err(HarnessError::Usage(format!(
                "no node {name:?} in cluster {} (nodes: {})",
                self.spec.name,
                self.node_names().join(", ")
            ))),
        }
    }

    /// IP of a node by name.
    pub fn node_ip(&self, name: &str) -> Result<Ipv4Addr> {
        Ok(self.spec.node_ip(self.resolve(name)?))
    }

    /// Container name of a node by name.
    pub fn container_name(&self, name: &str) -> Result<String> {
        Ok(self.names.node_container(self.resolve(name)?))
    }

    /// SIGKILLs a node's container.
    pub async fn kill(&self, name: &str) -> Result<()> {
        let c = self.container_name(name)?;
        ctx(
            format!("killing {c}"),
            self.docker
                .kill_container(
                    &c,
                    Some(KillContainerOptions {
                        signal: "SIGKILL".into(),
                    }),
                )
                .await,
        )
    }

    /// Stops a node gracefully (SIGTERM, then SIGKILL after `grace`), as `docker stop` does.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let c = self.container_name(name)?;
        ctx(
            format!("stopping {c}"),
            self.docker
                .stop_container(
                    &c,
                    Some(bollard::query_parameters::StopContainerOptions {
                        t: Some(grace.as_secs() as i32),
                        ..Default::default()
                    }),
                )
                .await,
        )
    }

    /// Starts a node's container again (same volume, same identity).
    pub async fn start(&self, name: &str) -> Result<()> {
        let c = self.container_name(name)?;
        ctx(
            format!("starting {c}"),
            self.docker.start_container(&c, None).await,
        )
    }

    /// Runs a command in a node and collects its output.
    pub async fn exec(&self, name: &str, cmd: &[&str]) -> Result<ExecOutput> {
        let c = self.container_name(name)?;
        exec_in(&self.docker, &c, cmd).await
    }

    /// Runs a command in the gateway container and collects its output.
    pub async fn exec_gateway(&self, cmd: &[&str]) -> Result<ExecOutput> {
        exec_in(&self.docker, &self.names.gateway(), cmd).await
    }

    /// Starts `command` (a shell command line) in the background in the gateway container,
    /// its output going to `log` there; it runs until the gateway stops.
    pub async fn spawn_in_gateway(&self, command: &str, log: &str) -> Result<()> {
        let line = format!("{command} >{log} 2>&1 &");
        let out = self.exec_gateway(&["sh", "-c", &line]).await?;
        if out.code != 0 {
            return Err(HarnessError::Image(format!(
                "{} cannot start {command:?}: exit {}: {}",
                self.names.gateway(),
                out.code,
                out.stderr.trim()
            )));
        }
        Ok(())
    }

    /// The last `lines` lines of every node's log, for failure reports.
    pub async fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.spec.nodes {
            let c = self.names.node_container(i);
            let text = logs_tail(&self.docker, &c, lines).await;
            if !text.is_empty() {
                out.push_str(&format!("[{c}]\n{}\n", text.trim_end()));
            }
        }
        out
    }

    /// Container state of every node (running, exited, …), by index.
    async fn container_states(&self) -> Result<HashMap<String, String>> {
        let list = ctx(
            format!("listing containers of {}", self.spec.name),
            self.docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(label_filters(&self.names.label_filter())),
                    ..Default::default()
                }))
                .await,
        )?;
        let mut states = HashMap::new();
        for c in list {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let state = c
                .state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into());
            states.insert(name, state);
        }
        Ok(states)
    }

    /// What every node's etcd member and the `/clusterlab/` keys say right now.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let states = self.container_states().await?;
        let mut nodes = Vec::new();
        let mut id_to_name = HashMap::new();
        let mut leaders: Vec<String> = Vec::new();
        let mut view: Option<ClusterView> = None;
        let probes = (0..self.spec.nodes).map(|i| {
            let ip = self.spec.node_ip(i);
            let running = states
                .get(&self.names.node_container(i))
                .is_some_and(|s| s == "running");
            async move {
                if running {
                    probe_member(ip).await
                } else {
                    None
                }
            }
        });
        let results = futures::future::join_all(probes).await;
        for (i, probe) in results.into_iter().enumerate() {
            let name = ClusterNames::node_name(i);
            let container = self.names.node_container(i);
            let state = states
                .get(&container)
                .cloned()
                .unwrap_or_else(|| "missing".into());
            let mut ns = NodeState {
                name: name.clone(),
                container,
                ip: self.spec.node_ip(i).to_string(),
                state,
                etcd_role: None,
                member_id: None,
                raft_leader: None,
                raft_term: None,
                has_key: false,
            };
            if let Some(p) = probe {
                id_to_name.insert(p.member_id.clone(), name.clone());
                ns.etcd_role = Some(
                    if p.member_id == p.leader {
                        "leader"
                    } else {
                        "follower"
                    }
                    .into(),
                );
                ns.member_id = Some(p.member_id);
                if p.leader != "0" {
                    leaders.push(p.leader.clone());
                }
                ns.raft_leader = Some(p.leader);
                ns.raft_term = Some(p.term);
                if view.is_none() {
                    view = p.view;
                }
            }
            nodes.push(ns);
        }
        let view = view.unwrap_or_default();
        for n in &mut nodes {
            n.has_key = view.nodes.iter().any(|m| m.name == n.name);
        }
        // etcd's leader: the member that reports itself as leader and that the reachable
        // followers agree on (an isolated old leader may still believe it leads).
        let self_leaders: Vec<&NodeState> = nodes
            .iter()
            .filter(|n| n.etcd_role.as_deref() == Some("leader"))
            .collect();
        let etcd_leader = match self_leaders.as_slice() {
            [one] => Some(one.name.clone()),
            many if many.len() > 1 => many
                .iter()
                .max_by_key(|n| n.raft_term.unwrap_or(0))
                .map(|n| n.name.clone()),
            _ => {
                leaders.sort();
                leaders.dedup();
                match leaders.as_slice() {
                    [id] => id_to_name.get(id).cloned(),
                    _ => None,
                }
            }
        };
        let gateway = if self.spec.gateway {
            let c = self.names.gateway();
            let state = states.get(&c).cloned().unwrap_or_else(|| "missing".into());
            let url = self.gateway_url().await.ok();
            Some(GatewayState {
                container: c,
                state,
                url,
            })
        } else {
            None
        };
        Ok(ClusterStatus {
            cluster: self.spec.name.clone(),
            nodes,
            leader_key: view.leader,
            etcd_leader,
            gateway,
        })
    }

    /// Node name of etcd's raft leader, if the reachable members agree on one.
    pub async fn etcd_leader(&self) -> Result<Option<String>> {
        Ok(self.status().await?.etcd_leader)
    }

    /// The gateway's URL on the host (http://127.0.0.1:PORT).
    pub async fn gateway_url(&self) -> Result<String> {
        let c = self.names.gateway();
        let info = ctx(
            format!("inspecting {c}"),
            self.docker.inspect_container(&c, None).await,
        )?;
        let port = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get("8888/tcp").cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| HarnessError::Usage(format!("{c} publishes no port")))?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Removes every object of this cluster.
    pub async fn down(&self) -> Result<usize> {
        down(&self.docker, &self.spec.name).await
    }
}

struct MemberProbe {
    member_id: String,
    leader: String,
    term: u64,
    view: Option<ClusterView>,
}

/// Asks one member for its Status and the `/clusterlab/` keys (serializable read, so a
/// member cut off from the majority still answers with what it has).
async fn probe_member(ip: Ipv4Addr) -> Option<MemberProbe> {
    let endpoint = format!("http://{ip}:2379");
    let fut = async {
        let mut client = agent::etcd::connect(&endpoint).await.ok()?;
        let st = client.status().await.ok()?;
        let member = st.header()?.member_id();
        let view = client
            .get(
                schema::PREFIX,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_serializable(),
                ),
            )
            .await
            .ok()
            .map(|resp| {
                let kvs: Vec<(String, Vec<u8>)> = resp
                    .kvs()
                    .iter()
                    .map(|kv| (kv.key_str().unwrap_or("").to_string(), kv.value().to_vec()))
                    .collect();
                ClusterView::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).0
            });
        Some(MemberProbe {
            member_id: schema::member_id_hex(member),
            leader: schema::member_id_hex(st.leader()),
            term: st.raft_term(),
            view,
        })
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// Runs a command in a container and collects its output and exit code.
pub async fn exec_in(docker: &Docker, container: &str, cmd: &[&str]) -> Result<ExecOutput> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let exec = ctx(
        format!("running {cmd:?} in {container}"),
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
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let StartExecResults::Attached { mut output, .. } = ctx(
        format!("running {cmd:?} in {container}"),
        docker.start_exec(&exec.id, None).await,
    )? {
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    stderr.push_str(&String::from_utf8_lossy(&message))
                }
                Ok(other) => stdout.push_str(&other.to_string()),
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
        stdout,
        stderr,
    })
}

/// Every object carrying cluster `name`'s label, as (kind, name).
pub async fn list_objects(docker: &Docker, name: &str) -> Result<Vec<(String, String)>> {
    let filter = ClusterNames::new(name).label_filter();
    let mut out = Vec::new();
    let containers = ctx(
        "listing containers",
        docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filters(&filter)),
                ..Default::default()
            }))
            .await,
    )?;
    for c in containers {
        let n = c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_default();
        out.push(("container".into(), n.trim_start_matches('/').to_string()));
    }
    let networks = ctx(
        "listing networks",
        docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(label_filters(&filter)),
            }))
            .await,
    )?;
    for n in networks {
        out.push(("network".into(), n.name.unwrap_or_default()));
    }
    let volumes = ctx(
        "listing volumes",
        docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filters(&filter)),
            }))
            .await,
    )?;
    for v in volumes.volumes.unwrap_or_default() {
        out.push(("volume".into(), v.name));
    }
    Ok(out)
}

/// Removes every container, network and volume labelled with cluster `name` (containers
/// first, since a network or volume in use cannot go). Returns how many objects went.
pub async fn down(docker: &Docker, name: &str) -> Result<usize> {
    let objects = list_objects(docker, name).await?;
    let mut removed = 0;
    for kind in ["container", "network", "volume"] {
        for (_, obj) in objects.iter().filter(|(k, _)| k == kind) {
            let r = match kind {
                "container" => {
                    docker
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
                "network" => docker.remove_network(obj).await,
                _ => {
                    docker
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
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: usize) -> ClusterSpec {
        ClusterSpec::new("lab", nodes, "img")
    }

    #[test]
    fn peers_and_ips_follow_the_plan() {
        let s = spec(3);
        assert_eq!(s.node_ip(0).to_string(), "10.77.0.10");
        assert_eq!(
            s.peers(),
            "node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12"
        );
        assert_eq!(s.node_names(), ["node0", "node1", "node2"]);
    }

    #[test]
    fn spec_validation_names_the_problem() {
        assert!(spec(3).validate().is_ok());
        assert!(spec(9).validate().is_ok());
        assert!(spec(0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--nodes"));
        let mut s = spec(3);
        s.name = "Bad Name".into();
        assert!(s.validate().unwrap_err().to_string().contains("Bad Name"));
        let mut s = spec(250);
        s.subnet = "10.1.0.0/24".parse().unwrap();
        assert!(s.validate().is_err());
    }

    #[test]
    fn resolve_accepts_short_long_and_index() {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let c = Cluster::attach(docker, spec(3));
        assert_eq!(c.resolve("node2").unwrap(), 2);
        assert_eq!(c.resolve("lab-node1").unwrap(), 1);
        assert_eq!(c.resolve("0").unwrap(), 0);
        let e = c.resolve("node3").unwrap_err().to_string();
        assert!(e.contains("node0, node1, node2"), "{e}");
    }
}
