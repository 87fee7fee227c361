//! Runs a submission that was not built to clusterlab's contract: its image (made from a
//! Dockerfile on top of the base image when asked), and a cluster of its containers started
//! from the profile's command template, with the same names, labels, network and volumes as
//! [`crate::cluster`], so `harness down` removes a graded cluster too. Also the outside
//! probes the judge needs: etcd status from the host, the hosts file by `docker exec`, and
//! the leader service by a bare HTTP request.

use super::judge::{NodeRef, ServiceProbe};
use super::profile::{render, ImageSource, IpPlan, Profile};
use crate::cluster::{create_network, create_volume, exec_in, labels, ExecOutput};
use crate::docker::{ctx, HarnessError, Result};
use crate::images::{ensure_base, ensure_images, image_exists, ImageOptions, NodeContext};
use crate::names::{ClusterNames, LABEL_CLUSTER, LABEL_NODE, LABEL_ROLE};
use crate::oracle::MemberStatus;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
};
use bollard::Docker;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Repository of images built from a profile's Dockerfile directory; the tag is a hash.
pub const SUBMISSION_REPO: &str = "clusterlab-submission";
/// Label on the network of a graded cluster, naming the profile.
pub const LABEL_GRADE: &str = "clusterlab.grade";

/// The image to grade, made or found as the profile says. `override_image` (the command
/// line's `--image`) wins over the profile.
pub async fn prepare_image(
    docker: &Docker,
    profile: &Profile,
    opts: &ImageOptions,
    override_image: Option<&str>,
) -> Result<String> {
    let source = match override_image {
        Some(i) => ImageSource::Image(i.to_string()),
        None => profile.image_source(),
    };
    match source {
        ImageSource::Image(name) => {
            if image_exists(docker, &name).await? {
                Ok(name)
            } else {
                Err(HarnessError::Image(format!(
                    "image {name} is not present locally and nothing can be pulled here; load it with `docker load` or give the submission's Dockerfile directory as `build`"
                )))
            }
        }
        ImageSource::Build(dir) => {
            let base = ensure_base(docker, opts).await?;
            build_dir_image(docker, &dir, &base, &profile.name).await
        }
        ImageSource::ClusterlabNode => Ok(ensure_images(docker, opts).await?.node),
    }
}

/// Every regular file below `dir` as (relative path, content, mode), sorted by path.
/// Hidden files and directories are left out.
pub fn read_context_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |source| HarnessError::Io { what, source };
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let abs = dir.join(&rel);
        let entries =
            std::fs::read_dir(&abs).map_err(io(format!("reading directory {}", abs.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("reading directory {}", abs.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta =
                std::fs::metadata(&path).map_err(io(format!("reading {}", path.display())))?;
            if meta.is_dir() {
                pending.push(rel.join(&name));
            } else if meta.is_file() {
                let data =
                    std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                files.push((rel.join(&name).display().to_string(), data, mode));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Builds the image of a directory holding a Dockerfile, on top of `base` (passed as the
/// build argument BASE), tagged `clusterlab-submission-<label>:<content hash>` and reused
/// while neither the directory nor the base image changes.
pub async fn build_dir_image(
    docker: &Docker,
    dir: &Path,
    base: &str,
    label: &str,
) -> Result<String> {
    if !dir.join("Dockerfile").is_file() {
        return Err(HarnessError::Usage(format!(
            "{} has no Dockerfile (the profile's submission.build must name a directory holding one)",
            dir.display()
        )));
    }
    let context = NodeContext {
        files: read_context_dir(dir)?,
    };
    let base_id = ctx(
        format!("inspecting base image {base}"),
        docker.inspect_image(base).await,
    )?
    .id
    .unwrap_or_default();
    let tag = format!("{SUBMISSION_REPO}-{label}:{}", context.hash(&base_id));
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    crate::images::build_on_base(
        docker,
        &format!("{tag} from {} on {base}", dir.display()),
        &tag,
        base,
        &context,
        "submission",
    )
    .await?;
    Ok(tag)
}

/// A cluster of a submission's containers.
#[derive(Debug, Clone)]
pub struct SubmissionCluster {
    pub docker: Docker,
    pub profile: Profile,
    pub image: String,
    pub names: ClusterNames,
    pub plan: IpPlan,
}

impl SubmissionCluster {
    /// A handle; nothing is created yet.
    pub fn new(
        docker: &Docker,
        profile: &Profile,
        image: &str,
        cluster: &str,
        plan: IpPlan,
    ) -> Self {
        SubmissionCluster {
            docker: docker.clone(),
            profile: profile.clone(),
            image: image.to_string(),
            names: ClusterNames::new(cluster),
            plan,
        }
    }

    /// Node `i` as the judge sees it.
    pub fn node(&self, i: usize) -> NodeRef {
        NodeRef {
            name: ClusterNames::node_name(i),
            ip: self.plan.node_ip(i),
        }
    }

    /// Every node.
    pub fn nodes(&self) -> Vec<NodeRef> {
        (0..self.plan.nodes).map(|i| self.node(i)).collect()
    }

    fn index_of(&self, node: &NodeRef) -> Result<usize> {
        ClusterNames::node_index(&node.name)
            .filter(|i| *i < self.plan.nodes)
            .ok_or_else(|| {
                HarnessError::Usage(format!("no node {} in {}", node.name, self.names.cluster))
            })
    }

    /// Creates the network, the shared volume, per-node volumes (when the profile mounts
    /// one) and the containers, then starts every container.
    pub async fn up(&self) -> Result<()> {
        let d = &self.docker;
        let n = &self.names;
        let cl = n.cluster.as_str();
        let subnet = self.plan.subnet;
        create_network(
            d,
            &n.network(),
            subnet,
            labels(&[(LABEL_CLUSTER, cl), (LABEL_GRADE, &self.profile.name)]),
        )
        .await?;
        create_volume(d, &n.shared_volume(), labels(&[(LABEL_CLUSTER, cl)])).await?;
        for i in 0..self.plan.nodes {
            if !self.profile.node.data_mount.is_empty() {
                let node = ClusterNames::node_name(i);
                let node_labels = labels(&[(LABEL_CLUSTER, cl), (LABEL_NODE, &node)]);
                create_volume(d, &n.node_volume(i), node_labels).await?;
            }
            self.create_node(i).await?;
        }
        for i in 0..self.plan.nodes {
            let c = n.node_container(i);
            ctx(format!("starting {c}"), d.start_container(&c, None).await)?;
        }
        Ok(())
    }

    /// The container body of node `i`, from the profile's templates.
    pub fn node_body(&self, i: usize) -> Result<ContainerCreateBody> {
        let t = &self.profile.node;
        let n = &self.names;
        let vars = self.plan.node_vars(i, &n.cluster);
        let fill = |list: &[String]| -> Result<Vec<String>> {
            list.iter()
                .map(|s| render(s, &vars).map_err(|e| HarnessError::Usage(e.to_string())))
                .collect()
        };
        let command = fill(&t.command)?;
        let entrypoint = fill(&t.entrypoint)?;
        let mut env = Vec::new();
        for (k, v) in &t.env {
            env.push(format!(
                "{k}={}",
                render(v, &vars).map_err(|e| HarnessError::Usage(e.to_string()))?
            ));
        }
        let mut binds = vec![format!("{}:{}", n.shared_volume(), t.shared_mount)];
        if !t.data_mount.is_empty() {
            binds.push(format!("{}:{}", n.node_volume(i), t.data_mount));
        }
        let node = ClusterNames::node_name(i);
        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(node.clone()),
            cmd: (!command.is_empty()).then_some(command),
            entrypoint: (!entrypoint.is_empty()).then_some(entrypoint),
            env: (!env.is_empty()).then_some(env),
            labels: Some(labels(&[
                (LABEL_CLUSTER, &n.cluster),
                (LABEL_NODE, &node),
                (LABEL_ROLE, "node"),
            ])),
            stop_timeout: Some(5),
            host_config: Some(HostConfig {
                init: Some(true),
                binds: Some(binds),
                cap_add: (!t.cap_add.is_empty()).then(|| t.cap_add.clone()),
                network_mode: Some(n.network()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    n.network(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(self.plan.node_ip(i).to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        })
    }

    async fn create_node(&self, i: usize) -> Result<()> {
        let body = self.node_body(i)?;
        let c = self.names.node_container(i);
        ctx(
            format!("creating container {c} from {}", self.image),
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(c.clone()),
                        ..Default::default()
                    }),
                    body,
                )
                .await,
        )?;
        Ok(())
    }

    /// SIGKILLs a node's container.
    pub async fn kill(&self, node: &NodeRef) -> Result<()> {
        let c = self.names.node_container(self.index_of(node)?);
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

    /// Runs a command in a node.
    pub async fn exec(&self, node: &NodeRef, cmd: &[&str]) -> Result<ExecOutput> {
        let c = self.names.node_container(self.index_of(node)?);
        exec_in(&self.docker, &c, cmd).await
    }

    /// `None` when the node's container runs, else what Docker says about it (state, exit
    /// code).
    pub async fn not_running(&self, node: &NodeRef) -> Result<Option<String>> {
        let c = self.names.node_container(self.index_of(node)?);
        let info = ctx(
            format!("inspecting {c}"),
            self.docker
                .inspect_container(&c, None::<InspectContainerOptions>)
                .await,
        )?;
        let st = info.state.unwrap_or_default();
        if st.running == Some(true) {
            return Ok(None);
        }
        Ok(Some(format!(
            "its container {c} is {} (exit code {}){}",
            st.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "not running".into()),
            st.exit_code.unwrap_or(-1),
            st.error
                .filter(|e| !e.is_empty())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )))
    }

    /// The hosts file of a node as text, or why it could not be read.
    pub async fn read_hosts(&self, node: &NodeRef) -> std::result::Result<String, String> {
        let file = self.profile.judge.hosts_file.as_str();
        match self.exec(node, &["cat", file]).await {
            Ok(out) if out.code == 0 => Ok(out.stdout),
            Ok(out) => Err(format!(
                "cat {file} exited {}: {}",
                out.code,
                out.stderr.trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What a node's etcd member says about itself, asked from the host.
    pub async fn member_status(&self, node: &NodeRef) -> std::result::Result<MemberStatus, String> {
        let endpoint = format!("http://{}:{}", node.ip, self.profile.judge.etcd_client_port);
        let fut = async {
            let mut client = agent::etcd::connect(&endpoint)
                .await
                .map_err(|e| format!("etcd at {endpoint} unreachable: {e}"))?;
            let st = client
                .status()
                .await
                .map_err(|e| format!("etcd status from {endpoint}: {e}"))?;
            let member_id = st
                .header()
                .map(|h| h.member_id())
                .ok_or_else(|| format!("etcd at {endpoint} sent no header"))?;
            Ok(MemberStatus {
                member_id,
                leader_id: st.leader(),
                term: st.raft_term(),
            })
        };
        match tokio::time::timeout(Duration::from_secs(2), fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("etcd at {endpoint} did not answer within 2 s")),
        }
    }

    /// Asks a node's leader-service port for the profile's path.
    pub async fn probe_service(&self, node: &NodeRef) -> ServiceProbe {
        http_status(
            &format!("{}:{}", node.ip, self.profile.judge.service_port),
            &self.profile.judge.service_path,
            Duration::from_secs(2),
        )
        .await
    }

    /// The last `lines` lines of every node's output.
    pub async fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.plan.nodes {
            let c = self.names.node_container(i);
            let text = crate::cluster::logs_tail(&self.docker, &c, lines).await;
            if !text.is_empty() {
                out.push_str(&format!("[{c}]\n{}\n", text.trim_end()));
            }
        }
        out
    }

    /// Removes every object of this cluster (by label, like `harness down`).
    pub async fn down(&self) -> Result<usize> {
        crate::cluster::down(&self.docker, &self.names.cluster).await
    }
}

/// Sends `GET path` over a bare TCP connection and returns the response's status, or why
/// there was none. No HTTP client library: any server that speaks HTTP/1.x counts.
pub async fn http_status(addr: &str, path: &str, timeout: Duration) -> ServiceProbe {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| connect_error(&e))?;
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sending the request failed: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        parse_status_line(&buf)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(code)) => ServiceProbe::Http(code),
        Ok(Err(why)) => ServiceProbe::Silent(why),
        Err(_) => ServiceProbe::Silent(format!("no answer within {} s", timeout.as_secs())),
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => format!("cannot connect: {e}"),
    }
}

/// The status code of an HTTP/1.x status line.
pub fn parse_status_line(buf: &[u8]) -> std::result::Result<u16, String> {
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && (100..=599).contains(&code) => Ok(code),
        _ if line.is_empty() => Err("closed the connection without an answer".into()),
        _ => Err(format!(
            "answered something that is not HTTP: {:?}",
            truncate(line, 60)
        )),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.0 200 OK\r\n"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\nX: y"),
            Ok(503)
        );
        assert!(parse_status_line(b"")
            .unwrap_err()
            .contains("without an answer"));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("not HTTP"));
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }

    #[tokio::test]
    async fn http_status_against_local_listeners() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /x HTTP/1.0"));
            s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(
            http_status(&addr, "/x", Duration::from_secs(2)).await,
            ServiceProbe::Http(204)
        );
        server.await.unwrap();
        // Nothing listens there any more.
        let p = http_status(&addr, "/", Duration::from_secs(2)).await;
        assert_eq!(p, ServiceProbe::Silent("connection refused".into()));
    }

    #[test]
    fn context_dir_is_sorted_skips_hidden_and_keeps_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        let run = d.path().join("bin/run");
        std::fs::write(&run, "#!/bin/sh").unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.path().join(".hidden"), "x").unwrap();
        let files = read_context_dir(d.path()).unwrap();
        let names: Vec<(&str, u32)> = files.iter().map(|(n, _, m)| (n.as_str(), *m)).collect();
        assert_eq!(names, [("Dockerfile", 0o644), ("bin/run", 0o755)]);
    }

    #[test]
    fn node_body_follows_the_templates() {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let mut p = Profile {
            name: "fx".into(),
            ..Default::default()
        };
        p.node.command = vec!["python3".into(), "d.py".into(), "{ip}".into(), "{n}".into()];
        p.node.env.insert("PEERS".into(), "{peers}".into());
        p.node.data_mount = "/data".into();
        let plan = IpPlan {
            subnet: "10.79.1.0/24".parse().unwrap(),
            first_offset: 20,
            nodes: 3,
        };
        let c = SubmissionCluster::new(&docker, &p, "img", "g-fx", plan);
        let b = c.node_body(1).unwrap();
        assert_eq!(b.cmd.unwrap(), ["python3", "d.py", "10.79.1.21", "3"]);
        assert_eq!(b.entrypoint, None);
        assert_eq!(
            b.env.unwrap(),
            ["PEERS=node0=10.79.1.20,node1=10.79.1.21,node2=10.79.1.22"]
        );
        assert_eq!(b.hostname.as_deref(), Some("node1"));
        let hc = b.host_config.unwrap();
        assert_eq!(
            hc.binds.unwrap(),
            ["g-fx-shared:/mnt", "g-fx-node1-data:/data"]
        );
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_CLUSTER], "g-fx");
        assert_eq!(labels[LABEL_NODE], "node1");
    }
}
