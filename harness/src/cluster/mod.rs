//! A cluster of clusterlab node containers on its own bridge network: its spec, bring up,
//! inspect, break, mend and remove. The Docker objects belong to [`ClusterObjects`] (one
//! owner, every object labelled, so `down` also cleans up after a crashed run); what the
//! harness sees is in [`status`], decided through [`crate::oracle`].
//!
//! # Layout
//! - [`objects`]: the owner of a cluster's Docker objects and per-container specs.
//! - [`status`]: node and cluster status, the status table, the etcd member probe.

pub mod firewall;
pub mod objects;
pub mod status;

pub use objects::{
    down, exec_in, list_objects, logs_tail, ClusterObjects, Confinement, ContainerRole,
    ContainerSpec, ExecOutput, Stopped,
};
pub use status::{probe_member, ClusterStatus, GatewayState, NodeKind, NodeState, ProbeError};

use crate::docker::{ctx, is_not_found, HarnessError, Result};
use crate::names::{
    validate_cluster_name, ClusterNames, NodeName, Subnet, FIRST_NODE_OFFSET, GATEWAY_OFFSET,
    MAX_NODES,
};
use crate::oracle::{self, ContainerState};
use bollard::Docker;
use clusterlab_core::schema::ClusterView;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The gateway's port inside its container.
const GATEWAY_PORT: u16 = 8888;

/// What to bring up.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub nodes: usize,
    pub subnet: Subnet,
    /// The node image (see [`crate::images`]).
    pub image: String,
    pub lease_ttl_s: u64,
    /// Nodes 0 … voters−1 run etcd members (voters); the others are etcd clients of them
    /// (members). 0: every node is a voter. Passed to the nodes as `etcd.voters`.
    pub voters: usize,
    /// Start the gateway container running `proxy`.
    pub gateway: bool,
    /// Host port on 127.0.0.1 for the gateway; 0 lets Docker choose.
    pub gateway_port: u16,
    /// Extra `CLUSTERLAB_*` settings for every node, e.g. ("CLUSTERLAB_ETCD__ELECTION_MS", "500").
    pub env: Vec<(String, String)>,
    /// How long `up` waits for every node key and a leader key.
    pub ready_timeout: Duration,
    /// The cluster belongs to this run (a trial's): its objects carry `clusterlab.pid`, so
    /// a later run sweeps them if this process dies before removing them.
    pub run_scoped: bool,
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
            voters: clusterlab_core::config::DEFAULT_VOTERS,
            gateway: true,
            gateway_port: 8888,
            env: Vec::new(),
            ready_timeout: Duration::from_secs(90),
            run_scoped: false,
        }
    }

    /// Checks the spec before anything is built or created.
    pub fn validate(&self) -> Result<()> {
        validate_cluster_name(&self.name)?;
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(HarnessError::BadSpec {
                field: "--nodes".into(),
                reason: format!("{} is out of range: give 1 to {MAX_NODES}", self.nodes),
            });
        }
        if FIRST_NODE_OFFSET as u64 + self.nodes as u64 >= self.subnet.size() - 1 {
            return Err(HarnessError::BadSpec {
                field: "--subnet".into(),
                reason: format!(
                    "{} has no room for {} nodes starting at offset {FIRST_NODE_OFFSET}",
                    self.subnet, self.nodes
                ),
            });
        }
        if self.voters > clusterlab_core::config::MAX_VOTERS {
            return Err(HarnessError::BadSpec {
                field: "--voters".into(),
                reason: format!(
                    "{} is out of range: give 1 to {} (0: every node votes)",
                    self.voters,
                    clusterlab_core::config::MAX_VOTERS
                ),
            });
        }
        for (k, _) in &self.env {
            if !k.starts_with(clusterlab_core::config::ENV_PREFIX) || k.contains('=') {
                return Err(HarnessError::BadSpec {
                    field: format!("--env {k}"),
                    reason: format!(
                        "node settings start with {}",
                        clusterlab_core::config::ENV_PREFIX
                    ),
                });
            }
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

    /// Whether node `i` runs an etcd member (a voter) rather than only its client (a member).
    pub fn is_voter(&self, i: usize) -> bool {
        self.voters == 0 || i < self.voters
    }

    /// Number of voters.
    pub fn voter_count(&self) -> usize {
        (0..self.nodes).filter(|&i| self.is_voter(i)).count()
    }

    /// Client URLs of every voter's etcd member (members run none).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        (0..self.nodes)
            .filter(|&i| self.is_voter(i))
            .map(|i| format!("http://{}:2379", self.node_ip(i)))
            .collect()
    }

    /// The container of node `i`: the agent configured through `CLUSTERLAB_*`.
    pub fn node_container(&self, i: usize) -> ContainerSpec {
        let n = ClusterNames::new(&self.name);
        let node = ClusterNames::node_name(i);
        let mut env = vec![
            format!("CLUSTERLAB_NAME={node}"),
            format!("CLUSTERLAB_IP={}", self.node_ip(i)),
            format!("CLUSTERLAB_PEERS={}", self.peers()),
            format!("CLUSTERLAB_CLUSTER={}", self.name),
            format!("CLUSTERLAB_LEASE_TTL_S={}", self.lease_ttl_s),
        ];
        // The node's own default needs no variable (and an image older than `etcd.voters`,
        // which would call it an unknown key, still runs).
        if self.voters != clusterlab_core::config::DEFAULT_VOTERS {
            env.push(format!("CLUSTERLAB_ETCD__VOTERS={}", self.voters));
        }
        env.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        ContainerSpec {
            container: n.node_container(i),
            role: ContainerRole::Node,
            node: Some(node.clone()),
            image: self.image.clone(),
            hostname: Some(node),
            env,
            mounts: vec![
                (n.node_volume(i), "/data".into()),
                (n.shared_volume(), "/shared".into()),
            ],
            cap_add: vec!["NET_ADMIN".into()],
            ip: Some(self.node_ip(i)),
            stop_timeout_s: Some(10),
            init: true,
            ..Default::default()
        }
    }

    /// The gateway container: `proxy` following the leader, published on 127.0.0.1.
    pub fn gateway_container(&self) -> ContainerSpec {
        let n = ClusterNames::new(&self.name);
        ContainerSpec {
            container: n.gateway(),
            role: ContainerRole::Gateway,
            image: self.image.clone(),
            hostname: Some("gateway".into()),
            entrypoint: vec!["/usr/local/bin/proxy".into()],
            command: vec![
                "--endpoints".into(),
                self.etcd_endpoints().join(","),
                "--peers".into(),
                self.peers(),
                "--listen".into(),
                format!("0.0.0.0:{GATEWAY_PORT}"),
            ],
            // The proxy only reads /shared (`--follow-file`); a gateway taken over cannot
            // plant anything there for the nodes.
            read_only_mounts: vec![(n.shared_volume(), "/shared".into())],
            ip: Some(self.subnet.host(GATEWAY_OFFSET)),
            publish: Some((GATEWAY_PORT, self.gateway_port)),
            init: true,
            ..Default::default()
        }
    }

    /// The network's labels carry the spec, so later commands find the cluster by name.
    fn network_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("clusterlab.nodes", self.nodes.to_string()),
            ("clusterlab.subnet", self.subnet.to_string()),
            ("clusterlab.image", self.image.clone()),
            ("clusterlab.lease_ttl_s", self.lease_ttl_s.to_string()),
            ("clusterlab.voters", self.voters.to_string()),
            ("clusterlab.gateway", self.gateway.to_string()),
            ("clusterlab.gateway_port", self.gateway_port.to_string()),
        ]
    }
}

/// A running cluster: its spec and the owner of its Docker objects.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub docker: Docker,
    pub spec: ClusterSpec,
    pub names: ClusterNames,
    pub objects: ClusterObjects,
}

impl Cluster {
    /// A handle on an existing cluster (no Docker call is made).
    pub fn attach(docker: Docker, spec: ClusterSpec) -> Cluster {
        let mut objects = ClusterObjects::new(&docker, &spec.name);
        if spec.run_scoped {
            objects = objects.run_scoped();
        }
        Cluster {
            names: objects.names.clone(),
            docker,
            spec,
            objects,
        }
    }

    /// Creates network, volumes and containers, starts them, and waits until every node key
    /// and the leader key are present. On failure, what was created is removed again.
    pub async fn up(docker: &Docker, spec: ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        let cluster = Cluster::attach(docker.clone(), spec);
        if !cluster.objects.list().await?.is_empty() {
            return Err(HarnessError::ClusterExists {
                name: cluster.spec.name.clone(),
            });
        }
        match cluster.create().await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let logs = cluster.logs_tail(20).await;
                let _ = cluster.objects.remove().await;
                if logs.is_empty() {
                    Err(e)
                } else {
                    Err(HarnessError::UpFailed {
                        source: Box::new(e),
                        logs,
                    })
                }
            }
        }
    }

    async fn create(&self) -> Result<()> {
        let spec = &self.spec;
        let n = &self.names;
        let mut volumes = vec![(n.shared_volume(), None)];
        volumes
            .extend((0..spec.nodes).map(|i| (n.node_volume(i), Some(ClusterNames::node_name(i)))));
        let mut containers: Vec<ContainerSpec> =
            (0..spec.nodes).map(|i| spec.node_container(i)).collect();
        if spec.gateway {
            containers.push(spec.gateway_container());
        }
        self.objects
            .create_all(spec.subnet, &spec.network_labels(), &volumes, &containers)
            .await?;
        let step = crate::progress::Step::start(format!(
            "waiting for {} node keys and a leader in {}",
            spec.nodes, spec.name
        ));
        self.wait_ready(spec.ready_timeout).await?;
        step.done();
        Ok(())
    }

    /// Finds an existing cluster by name from its network's labels.
    pub async fn discover(docker: &Docker, name: &str) -> Result<Cluster> {
        validate_cluster_name(name)?;
        let names = ClusterNames::new(name);
        let net = match docker.inspect_network(&names.network(), None).await {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => {
                return Err(HarnessError::NoSuchCluster {
                    name: name.to_string(),
                    network: names.network(),
                })
            }
            Err(e) => return ctx(format!("inspecting network {}", names.network()), Err(e)),
        };
        let l = net.labels.unwrap_or_default();
        let bad = |k: &str| HarnessError::ForeignNetwork {
            network: names.network(),
            label: k.to_string(),
        };
        let get = |k: &str| l.get(k).cloned().ok_or_else(|| bad(k));
        let parse = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|_| bad(k)) };
        let mut spec = ClusterSpec::new(name, 1, &get("clusterlab.image")?);
        spec.nodes = parse("clusterlab.nodes")? as usize;
        spec.subnet = get("clusterlab.subnet")?
            .parse()
            .map_err(|_| bad("clusterlab.subnet"))?;
        spec.lease_ttl_s = parse("clusterlab.lease_ttl_s")?;
        // Clusters made before `etcd.voters` carry no such label: every node voted.
        spec.voters = match l.get("clusterlab.voters") {
            Some(v) => v.parse().map_err(|_| bad("clusterlab.voters"))?,
            None => 0,
        };
        spec.gateway = get("clusterlab.gateway")? == "true";
        spec.gateway_port = get("clusterlab.gateway_port")?
            .parse()
            .map_err(|_| bad("clusterlab.gateway_port"))?;
        Ok(Cluster::attach(docker.clone(), spec))
    }

    /// Client URLs of every node's etcd member.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.spec.etcd_endpoints()
    }

    /// Waits until every running node has its key and the leader key names etcd's leader.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ClusterStatus> {
        let (st, _) = crate::wait::wait_for(
            "every node key and a leader key naming etcd's leader",
            timeout,
            Duration::from_millis(250),
            || async {
                let st = self.status().await.map_err(|e| e.to_string())?;
                let running: Vec<_> = st.nodes.iter().filter(|n| n.state.is_running()).collect();
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
            _ => Err(HarnessError::UnknownNode {
                cluster: self.spec.name.clone(),
                node: name.to_string(),
                known: self.node_names().join(", "),
            }),
        }
    }

    /// IP of a node by name.
    pub fn node_ip(&self, name: &str) -> Result<Ipv4Addr> {
        Ok(self.spec.node_ip(self.resolve(name)?))
    }

    /// Container name of a node by name.
    pub fn container_name(&self, name: &str) -> Result<String, HarnessError> {
        Ok(self.names.node_container(self.resolve(name)?))
    }

    /// SIGKILLs a node's container.
    pub async fn kill(&self, name: &str) -> Result<()> {
        self.objects.kill(&self.container_name(name)?).await
    }

    /// Stops a node gracefully (SIGTERM, then SIGKILL after `grace`), as `docker stop` does.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        self.objects.stop(&self.container_name(name)?, grace).await
    }

    /// Starts a node's container again (same volume, same identity).
    pub async fn start(&self, name: &str) -> Result<()> {
        self.objects.start(&self.container_name(name)?).await
    }

    /// Runs a command in a node and collects its output.
    pub async fn exec(&self, name: &str, cmd: &[&str]) -> Result<ExecOutput> {
        self.objects.exec(&self.container_name(name)?, cmd).await
    }

    /// Runs a command in the gateway container and collects its output.
    pub async fn exec_gateway(&self, cmd: &[&str]) -> Result<ExecOutput> {
        self.objects.exec(&self.names.gateway(), cmd).await
    }

    /// Starts `command` (a shell command line) in the background in the gateway container,
    /// its output going to `log` there; it runs until the gateway stops.
    pub async fn spawn_in_gateway(&self, command: &str, log: &str) -> Result<()> {
        let line = format!("{command} >{log} 2>&1 &");
        let out = self.exec_gateway(&["sh", "-c", &line]).await?;
        if out.code != 0 {
            return Err(HarnessError::ExecFailed {
                container: self.names.gateway(),
                command: format!("starting {command:?}"),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(())
    }

    /// The last `lines` lines of every node's log, for failure reports.
    pub async fn logs_tail(&self, lines: usize) -> String {
        let containers: Vec<String> = (0..self.spec.nodes)
            .map(|i| self.names.node_container(i))
            .collect();
        self.objects.logs_tails(&containers, lines).await
    }

    /// What every node's container and etcd member and the `/clusterlab/` keys say right
    /// now; etcd's leader is decided by [`oracle::raft_leader`].
    pub async fn status(&self) -> Result<ClusterStatus> {
        let states = self.objects.container_states().await?;
        let state_of = |c: &str| states.get(c).cloned().unwrap_or(ContainerState::Missing);
        let peers = clusterlab_core::schema::parse_peers(&self.spec.peers()).unwrap_or_default();
        let peers = &peers;
        let probes = (0..self.spec.nodes).map(|i| {
            let state = state_of(&self.names.node_container(i));
            let endpoint = format!("http://{}:2379", self.spec.node_ip(i));
            let voter = self.spec.is_voter(i);
            async move {
                if !voter {
                    Err(ProbeError::NoMember)
                } else if state.is_running() {
                    probe_member(&endpoint, Some(peers)).await
                } else {
                    Err(ProbeError::NotRunning(state))
                }
            }
        });
        let results = futures::future::join_all(probes).await;
        let mut view: Option<ClusterView> = None;
        let mut nodes = Vec::new();
        let mut statuses = Vec::new();
        for (i, probe) in results.into_iter().enumerate() {
            let name = ClusterNames::node_name(i);
            let container = self.names.node_container(i);
            let mut ns = NodeState::new(
                name.clone(),
                container.clone(),
                self.spec.node_ip(i).to_string(),
                state_of(&container),
            );
            ns.kind = if self.spec.is_voter(i) {
                NodeKind::Voter
            } else {
                NodeKind::Member
            };
            let status = probe.map(|p| {
                ns = ns.clone().with_member(&p.status);
                if view.is_none() {
                    view = p.view;
                }
                p.status
            });
            // Members run no etcd: only the voters' reports decide etcd's leader.
            if self.spec.is_voter(i) {
                statuses.push((name, status));
            }
            nodes.push(ns);
        }
        let view = view.unwrap_or_default();
        for n in &mut nodes {
            n.has_key = view.nodes.iter().any(|m| m.name == n.name);
        }
        let etcd_leader = oracle::raft_leader(&statuses).ok().cloned();
        let gateway = if self.spec.gateway {
            let c = self.names.gateway();
            Some(GatewayState {
                state: state_of(&c),
                url: self.gateway_url().await.ok(),
                container: c,
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
    pub async fn etcd_leader(&self) -> Result<Option<NodeName>> {
        Ok(self.status().await?.etcd_leader)
    }

    /// The gateway's URL on the host (http://127.0.0.1:PORT).
    pub async fn gateway_url(&self) -> Result<String, HarnessError> {
        let c = self.names.gateway();
        let info = ctx(
            format!("inspecting {c}"),
            self.docker.inspect_container(&c, None).await,
        )?;
        let key = format!("{GATEWAY_PORT}/tcp");
        let port = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .filter(|p| !p.is_empty())
            .ok_or(HarnessError::NoPublishedPort {
                container: c,
                port: key,
            })?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Removes every object of this cluster.
    pub async fn down(&self) -> Result<usize> {
        self.objects.remove().await
    }

    /// The cluster now belongs to the user: an interrupt no longer removes it.
    pub fn hand_over(&self) {
        self.objects.hand_over();
    }
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
    fn node_and_gateway_containers_follow_the_spec() {
        let mut s = spec(3);
        s.env
            .push(("CLUSTERLAB_ETCD__ELECTION_MS".into(), "500".into()));
        let n = s.node_container(1);
        assert_eq!(n.container, "lab-node1");
        assert_eq!(n.hostname.as_deref(), Some("node1"));
        assert_eq!(n.ip, Some(Ipv4Addr::new(10, 77, 0, 11)));
        assert!(n.env.contains(&"CLUSTERLAB_NAME=node1".to_string()));
        assert!(n
            .env
            .contains(&"CLUSTERLAB_ETCD__ELECTION_MS=500".to_string()));
        assert_eq!(
            n.mounts,
            [
                ("lab-node1-data".to_string(), "/data".to_string()),
                ("lab-shared".to_string(), "/shared".to_string())
            ]
        );
        assert_eq!(n.cap_add, ["NET_ADMIN"]);
        let g = s.gateway_container();
        assert_eq!(g.ip, Some(Ipv4Addr::new(10, 77, 0, 5)));
        assert_eq!(g.publish, Some((8888, 8888)));
        assert!(g.mounts.is_empty());
        assert_eq!(
            g.read_only_mounts,
            [("lab-shared".to_string(), "/shared".to_string())]
        );
        let body = g.body("lab-net", Default::default());
        assert_eq!(
            body.host_config.unwrap().binds.unwrap(),
            ["lab-shared:/shared:ro"]
        );
        assert_eq!(g.command[1], s.etcd_endpoints().join(","));
        assert_eq!(g.command[2..4], ["--peers".to_string(), s.peers()]);
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
        assert!(spec(201)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("1 to 200"));
        let mut s = spec(3);
        s.env.push(("PATH".into(), "/x".into()));
        assert!(s.validate().unwrap_err().to_string().contains("--env PATH"));
    }

    #[test]
    fn members_get_the_voter_count_and_only_voters_are_endpoints() {
        let mut s = spec(25);
        assert!(s.validate().is_ok(), "25 nodes fit the /24 plan");
        assert_eq!(s.node_ip(24).to_string(), "10.77.0.34");
        s.voters = 3;
        assert!(s.is_voter(2) && !s.is_voter(3));
        assert_eq!(s.voter_count(), 3);
        assert_eq!(
            s.etcd_endpoints(),
            [
                "http://10.77.0.10:2379",
                "http://10.77.0.11:2379",
                "http://10.77.0.12:2379"
            ]
        );
        let member = s.node_container(7);
        assert!(member
            .env
            .contains(&"CLUSTERLAB_ETCD__VOTERS=3".to_string()));
        s.voters = clusterlab_core::config::DEFAULT_VOTERS;
        assert!(!s.node_container(7).env.iter().any(|e| e.contains("VOTERS")));
        s.voters = 0;
        assert_eq!(s.voter_count(), 25);
        s.voters = 8;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("--voters"), "{e}");
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
