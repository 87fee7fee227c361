//! Runs a submission that was not built to clusterlab's contract: its image (made from a
//! Dockerfile on top of the base image when asked), and a cluster of its containers started
//! from the profile's command template, with the same names, labels, network and volumes as
//! [`crate::cluster`], so `harness down` removes a graded cluster too. Also the outside
//! probes the judge needs: etcd status from the host, the hosts file by `docker exec`, and
//! the leader service by a bare HTTP request.

use super::judge::{NodeRef, ServiceProbe};
use super::profile::{capability, render, ImageSource, IpPlan, Limits, Profile, TemplateError};
use super::text::{self, clean};
use crate::cluster::{
    probe_member, ClusterObjects, Confinement, ContainerRole, ContainerSpec, ExecOutput,
    ProbeError, Stopped,
};
use crate::docker::{ctx, HarnessError, Result};
use crate::images::{ensure_base, ensure_images, image_exists, ImageOptions, NodeContext};
use crate::names::ClusterNames;
use crate::oracle::MemberStatus;
use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use clusterlab_core::fsread::{read_small_bytes, SmallFileError};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Repository of images built from a profile's Dockerfile directory; the tag is a hash.
pub const SUBMISSION_REPO: &str = "clusterlab-submission";
/// Label on the network of a graded cluster, naming the profile.
pub const LABEL_GRADE: &str = "clusterlab.grade";
/// Bound of one command the grader runs in a node (SSH commands have their own,
/// `limits.ssh_command_s`).
pub const EXEC_STEP: Duration = Duration::from_secs(10);
/// Bound of one Docker call about a container (inspect, kill, stats, a log read).
pub const DOCKER_STEP: Duration = Duration::from_secs(10);
/// Bound of creating and starting a graded cluster's objects.
pub const UP_STEP: Duration = Duration::from_secs(120);
/// Bound of removing a graded cluster.
pub const DOWN_STEP: Duration = Duration::from_secs(60);
/// Most bytes of one node's log put into a report.
pub const LOG_BYTES: usize = 16 * 1024;
/// Log files Docker keeps per node (each at most `limits.log_mb`).
pub const LOG_FILES: u32 = 2;
/// A node this close to its pids limit is reported as at it.
pub const PIDS_MARGIN: u64 = 2;

/// Lines of build output kept for a report when a build fails or is cancelled.
pub const BUILD_OUTPUT_LINES: usize = 20;
/// Widest build output line kept, in characters.
const BUILD_LINE_WIDTH: usize = 300;

/// Why the image to grade could not be had. Every scenario is then reported as an error
/// with this reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("the image build timed out: building {what} did not finish within {limit_s} s (limits.build_s) and was cancelled; last build output:\n{output}")]
    BuildTimedOut {
        what: String,
        limit_s: u64,
        output: String,
    },
    #[error("the image build failed: building {what}: {reason}; last build output:\n{output}")]
    BuildFailed {
        what: String,
        reason: String,
        output: String,
    },
}

/// The image to grade, made or found as the profile says. `override_image` (the command
/// line's `--image`) wins over the profile. A build is bounded by `limits.build_s`.
pub async fn prepare_image(
    docker: &Docker,
    profile: &Profile,
    opts: &ImageOptions,
    override_image: Option<&str>,
) -> Result<String, ImageError> {
    let source = match override_image {
        Some(i) => ImageSource::Image(i.to_string()),
        None => profile.image_source(),
    };
    match source {
        ImageSource::Image(name) => {
            if image_exists(docker, &name).await? {
                Ok(name)
            } else {
                Err(HarnessError::ImageMissing { image: name }.into())
            }
        }
        ImageSource::Build(dir) => {
            // The folder is checked and packed before Docker is asked for anything.
            let context = submission_context(&dir)?;
            let base = ensure_base(docker, opts).await?;
            build_dir_image_within(docker, &dir, context, &base, &profile.name, &profile.limits)
                .await
        }
        ImageSource::ClusterlabNode => Ok(ensure_images(docker, opts).await?.node),
    }
}

/// The most a submission's build context may hold, in bytes of file content.
pub const MAX_CONTEXT_BYTES: u64 = 256 * 1024 * 1024;
/// The most files and directories a submission's build context may hold.
pub const MAX_CONTEXT_FILES: usize = 10_000;

/// Why a submission's folder could not be packed as a build context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("reading directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inspecting {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link (to {target}): a submission's build context may not hold symlinks, which could reach outside its folder; put the file itself in the folder")]
    Symlink { path: PathBuf, target: String },
    #[error("the build context {dir} holds more than {limit} files and directories (at {path})")]
    TooManyFiles {
        dir: PathBuf,
        path: PathBuf,
        limit: usize,
    },
    #[error("the build context {dir} is larger than {limit} bytes (at {path})")]
    TooLarge {
        dir: PathBuf,
        path: PathBuf,
        limit: u64,
    },
    #[error("packing {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: SmallFileError,
    },
}

/// Every regular file below `dir` as (relative path, content, mode), sorted by path.
/// Hidden files and directories are left out, and so are FIFOs, sockets and devices. The
/// walk never leaves `dir`: a symlink anywhere in it is refused (never followed), and the
/// context is capped at [`MAX_CONTEXT_BYTES`] and [`MAX_CONTEXT_FILES`].
pub fn read_context_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>, u32)>, ContextError> {
    read_context_dir_within(dir, MAX_CONTEXT_BYTES, MAX_CONTEXT_FILES)
}

fn read_context_dir_within(
    dir: &Path,
    max_bytes: u64,
    max_files: usize,
) -> Result<Vec<(String, Vec<u8>, u32)>, ContextError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let (mut bytes, mut entries) = (0u64, 0usize);
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let abs = dir.join(&rel);
        let read_dir_err = |source| ContextError::ReadDir {
            path: abs.clone(),
            source,
        };
        for entry in std::fs::read_dir(&abs).map_err(read_dir_err)? {
            let entry = entry.map_err(read_dir_err)?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // lstat: a symlink is seen as a symlink, never as what it points to.
            let meta = std::fs::symlink_metadata(&path).map_err(|source| ContextError::Stat {
                path: path.clone(),
                source,
            })?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(ContextError::Symlink { path, target });
            }
            if !ft.is_dir() && !ft.is_file() {
                continue;
            }
            entries += 1;
            if entries > max_files {
                return Err(ContextError::TooManyFiles {
                    dir: dir.to_path_buf(),
                    path,
                    limit: max_files,
                });
            }
            if ft.is_dir() {
                pending.push(rel.join(&name));
                continue;
            }
            let too_large = |path: PathBuf| ContextError::TooLarge {
                dir: dir.to_path_buf(),
                path,
                limit: max_bytes,
            };
            let budget = max_bytes - bytes;
            if meta.len() > budget {
                return Err(too_large(path));
            }
            // Opened without following a symlink and checked to be a regular file again:
            // the entry may have been swapped since the lstat.
            let data = match read_small_bytes(&path, budget) {
                Ok(data) => data,
                Err(SmallFileError::TooLarge { .. }) => return Err(too_large(path)),
                Err(source) => return Err(ContextError::Read { path, source }),
            };
            bytes += data.len() as u64;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            files.push((rel.join(&name).display().to_string(), data, mode));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// The build context of a submission's folder ([`read_context_dir`]), which must hold a
/// Dockerfile.
pub fn submission_context(dir: &Path) -> Result<NodeContext, HarnessError> {
    if !dir.join("Dockerfile").is_file() {
        return Err(HarnessError::NoDockerfile {
            dir: dir.display().to_string(),
        });
    }
    Ok(NodeContext {
        files: read_context_dir(dir)?,
        links: Vec::new(),
    })
}

/// Builds the image of a directory holding a Dockerfile (its `context`), on top of `base` (passed as the
/// build argument BASE), tagged `clusterlab-submission-<label>:<content hash>` and reused
/// while neither the directory nor the base image changes. The build runs with no network,
/// within the memory and CPU limits of `limits`, and is cancelled after `limits.build_s`.
pub async fn build_dir_image_within(
    docker: &Docker,
    dir: &Path,
    context: NodeContext,
    base: &str,
    label: &str,
    limits: &Limits,
) -> Result<String, ImageError> {
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
    let what = format!("{tag} from {} on {base}", clean(&dir.display().to_string()));
    let step = crate::progress::Step::start(format!("building {what}"));
    let memory = (limits.memory_mb.min(2047) * 1024 * 1024) as i32;
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.clone()),
        rm: true,
        forcerm: true,
        buildargs: Some(HashMap::from([("BASE".to_string(), base.to_string())])),
        labels: Some(HashMap::from([(
            "clusterlab.image".to_string(),
            "submission".to_string(),
        )])),
        // Nothing to fetch: the base image has what a submission may use.
        networkmode: Some("none".into()),
        memory: Some(memory),
        memswap: Some(memory),
        cpuperiod: Some(100_000),
        cpuquota: Some((limits.cpus * 100_000.0).round().max(1_000.0) as i32),
        ..Default::default()
    };
    let body = bollard::body_full(context.tar()?.into());
    let mut output = String::new();
    let mut stream = docker.build_image(options, None, Some(body));
    let build = async {
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(e) => return Err(e.to_string()),
            };
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(detail);
            }
            if let Some(s) = info.stream {
                keep_output(&mut output, &s);
                if let Some(last) = output.lines().last() {
                    step.detail(&clean(last));
                }
            }
        }
        Ok(())
    };
    let limit = Duration::from_secs(limits.build_s);
    let r = tokio::time::timeout(limit, build).await;
    // Dropping the stream closes the connection; Docker then cancels the build and removes
    // its intermediate container.
    drop(stream);
    let tail = || {
        let t = text::last_lines(&output, BUILD_OUTPUT_LINES, BUILD_LINE_WIDTH);
        if t.is_empty() {
            "(none)".to_string()
        } else {
            t
        }
    };
    match r {
        Ok(Ok(())) => {
            step.done();
            Ok(tag)
        }
        Ok(Err(reason)) => Err(ImageError::BuildFailed {
            what,
            reason: clean(&reason),
            output: tail(),
        }),
        Err(_) => Err(ImageError::BuildTimedOut {
            what,
            limit_s: limits.build_s,
            output: tail(),
        }),
    }
}

/// Keeps the end of a build's output: at most 64 KiB, cut at a line start.
fn keep_output(output: &mut String, more: &str) {
    const KEEP: usize = 64 * 1024;
    output.push_str(more);
    if output.len() > 2 * KEEP {
        let mut cut = output.len() - KEEP;
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        output.drain(..cut);
    }
}

/// Why a submission's cluster could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A profile template could not be filled in for a node.
    #[error("filling in the profile's {field} for {node}: {reason}")]
    Template {
        field: String,
        node: String,
        #[source]
        reason: TemplateError,
    },
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// The grader could not cause the scenario's fault (e.g. etcd refused to move its leader).
    #[error("causing the fault ({what}): {reason}")]
    Fault { what: String, reason: String },
}

/// One scenario's cluster of a submission's containers: the profile, its IP plan and image,
/// and the owner of the cluster's Docker objects (the same owner, names and labels as
/// `harness up`, so `harness down` removes a graded cluster too). Run-scoped: a later run
/// sweeps it if this process dies before removing it.
#[derive(Debug, Clone)]
pub struct GradedCluster {
    pub profile: Profile,
    pub image: String,
    pub plan: IpPlan,
    pub objects: ClusterObjects,
    /// The image of the profile's gateway, when this cluster starts one.
    pub gateway_image: Option<String>,
}

/// A container's command, entrypoint and environment (`KEY=value`), rendered.
type Rendered = (Vec<String>, Vec<String>, Vec<String>);

/// A profile section's command, entrypoint and environment (`KEY=value`) with `vars` filled
/// in; an error names the key (`<section>.command`, `<section>.env.KEY`) and `who` it was for.
fn render_section(
    section: &str,
    who: &str,
    vars: &std::collections::BTreeMap<&'static str, String>,
    command: &[String],
    entrypoint: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> Result<Rendered, UpError> {
    let fill = |field: String, template: &str| {
        render(template, vars).map_err(|reason| UpError::Template {
            field,
            node: who.to_string(),
            reason,
        })
    };
    let fill_all = |key: &str, list: &[String]| {
        list.iter()
            .map(|t| fill(format!("{section}.{key}"), t))
            .collect::<Result<Vec<_>, _>>()
    };
    let env = env
        .iter()
        .map(|(k, v)| Ok(format!("{k}={}", fill(format!("{section}.env.{k}"), v)?)))
        .collect::<Result<Vec<_>, UpError>>()?;
    Ok((
        fill_all("command", command)?,
        fill_all("entrypoint", entrypoint)?,
        env,
    ))
}

impl GradedCluster {
    /// A handle; nothing is created yet.
    pub fn new(
        docker: &Docker,
        profile: &Profile,
        image: &str,
        cluster: &str,
        plan: IpPlan,
    ) -> Self {
        GradedCluster {
            profile: profile.clone(),
            image: image.to_string(),
            plan,
            objects: ClusterObjects::new(docker, cluster)
                .run_scoped()
                .internal_network(),
            gateway_image: None,
        }
    }

    /// Starts the profile's gateway from `image` with the nodes.
    pub fn with_gateway(mut self, image: &str) -> Self {
        self.gateway_image = Some(image.to_string());
        self
    }

    pub fn names(&self) -> &ClusterNames {
        &self.objects.names
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

    /// The container of a node.
    pub fn container(&self, node: &NodeRef) -> Result<String, HarnessError> {
        ClusterNames::node_index(&node.name)
            .filter(|i| *i < self.plan.nodes)
            .map(|i| self.names().node_container(i))
            .ok_or_else(|| HarnessError::UnknownNode {
                cluster: self.names().cluster.clone(),
                node: node.name.clone(),
                known: self
                    .nodes()
                    .iter()
                    .map(|n| n.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Creates the network, the shared volume, per-node volumes (when the profile mounts
    /// one) and the containers, then starts every container.
    pub async fn up(&self) -> Result<(), UpError> {
        let n = self.names();
        let mut volumes = vec![(n.shared_volume(), None)];
        if !self.profile.node.data_mount.is_empty() {
            volumes.extend(
                (0..self.plan.nodes).map(|i| (n.node_volume(i), Some(ClusterNames::node_name(i)))),
            );
        }
        let mut containers = (0..self.plan.nodes)
            .map(|i| self.node_container(i))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(g) = self.gateway_container()? {
            containers.push(g);
        }
        Ok(bounded(
            format!("starting cluster {}", n.cluster),
            UP_STEP,
            self.objects.create_all(
                self.plan.subnet,
                &[(LABEL_GRADE, self.profile.name.clone())],
                &volumes,
                &containers,
            ),
        )
        .await?)
    }

    /// The container of node `i`, from the profile's templates.
    pub fn node_container(&self, i: usize) -> Result<ContainerSpec, UpError> {
        let t = &self.profile.node;
        let n = self.names();
        let node = ClusterNames::node_name(i);
        let vars = self.plan.node_vars(i, &n.cluster);
        let (command, entrypoint, env) =
            render_section("node", &node, &vars, &t.command, &t.entrypoint, &t.env)?;
        let mut mounts = vec![(n.shared_volume(), t.shared_mount.clone())];
        if !t.data_mount.is_empty() {
            mounts.push((n.node_volume(i), t.data_mount.clone()));
        }
        Ok(ContainerSpec {
            container: n.node_container(i),
            role: ContainerRole::Node,
            node: Some(node.clone()),
            image: self.image.clone(),
            hostname: Some(node.clone()),
            command,
            entrypoint,
            env,
            mounts,
            cap_add: t
                .cap_add
                .iter()
                .map(|c| capability(c).unwrap_or_else(|_| c.clone()))
                .collect(),
            ip: Some(self.plan.node_ip(i)),
            stop_timeout_s: Some(5),
            init: true,
            confinement: Some(self.confinement()),
            ..Default::default()
        })
    }

    /// The limits every node's container runs with, from the profile's `[limits]`.
    pub fn confinement(&self) -> Confinement {
        let l = &self.profile.limits;
        Confinement {
            memory_bytes: (l.memory_mb * 1024 * 1024) as i64,
            pids: l.pids as i64,
            nano_cpus: (l.cpus * 1e9).round() as i64,
            log_file_bytes: l.log_mb * 1024 * 1024,
            log_files: LOG_FILES,
        }
    }

    /// The gateway's container from the profile's `[gateway]`, when this cluster has one.
    pub fn gateway_container(&self) -> Result<Option<ContainerSpec>, UpError> {
        let (Some(image), Some(t)) = (&self.gateway_image, &self.profile.gateway) else {
            return Ok(None);
        };
        let n = self.names();
        let vars = self
            .plan
            .gateway_vars(&n.cluster, self.profile.judge.etcd_client_port);
        let (command, entrypoint, env) = render_section(
            "gateway",
            "the gateway",
            &vars,
            &t.command,
            &t.entrypoint,
            &t.env,
        )?;
        Ok(Some(ContainerSpec {
            container: n.gateway(),
            role: ContainerRole::Gateway,
            image: image.clone(),
            hostname: Some("gateway".into()),
            command,
            entrypoint,
            env,
            // The gateway only reads the shared table, and runs held in like the nodes
            // (no capability at all: it needs none to forward).
            read_only_mounts: vec![(n.shared_volume(), self.profile.node.shared_mount.clone())],
            ip: Some(self.plan.gateway_ip()),
            stop_timeout_s: Some(5),
            init: true,
            confinement: Some(self.confinement()),
            ..Default::default()
        }))
    }

    /// `None` while the gateway's container runs, else what Docker says about it.
    pub async fn gateway_not_running(&self) -> Result<Option<Stopped>> {
        self.objects.not_running(&self.names().gateway()).await
    }

    /// Starts a node's stopped container again (same container, same data).
    pub async fn start(&self, node: &NodeRef) -> Result<()> {
        self.objects.start(&self.container(node)?).await
    }

    /// Takes a node's container off the cluster's network: from then on it reaches nothing
    /// and nothing reaches it, without any help from inside.
    pub async fn disconnect(&self, node: &NodeRef) -> Result<()> {
        let container = self.container(node)?;
        let network = self.names().network();
        ctx(
            format!("disconnecting {container} from {network}"),
            self.objects
                .docker
                .disconnect_network(
                    &network,
                    bollard::models::NetworkDisconnectRequest {
                        container,
                        force: Some(true),
                    },
                )
                .await,
        )
    }

    /// Puts a disconnected node back on the cluster's network at its own address.
    pub async fn reconnect(&self, node: &NodeRef) -> Result<()> {
        let container = self.container(node)?;
        let network = self.names().network();
        ctx(
            format!("reconnecting {container} to {network} at {}", node.ip),
            self.objects
                .docker
                .connect_network(
                    &network,
                    bollard::models::NetworkConnectRequest {
                        container,
                        endpoint_config: Some(bollard::models::EndpointSettings {
                            ipam_config: Some(bollard::models::EndpointIpamConfig {
                                ipv4_address: Some(node.ip.to_string()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    },
                )
                .await,
        )
    }

    /// Asks etcd's leader `from` (from the host, through etcd's maintenance API) to hand
    /// its leadership to the member of node `to`.
    pub async fn move_leader(&self, from: &NodeRef, to: &NodeRef) -> Result<(), UpError> {
        let fault = |reason: String| UpError::Fault {
            what: format!("moving etcd's leadership from {from} to {to}"),
            reason,
        };
        let target = self
            .member_status(to)
            .await
            .map_err(|e| fault(e.to_string()))?
            .member_id;
        let endpoint = format!("http://{}:{}", from.ip, self.profile.judge.etcd_client_port);
        let fut = async {
            let mut client = clusterlab_core::etcd::connect(&endpoint)
                .await
                .map_err(|e| fault(format!("connecting to {endpoint}: {e}")))?;
            client
                .move_leader(target)
                .await
                .map_err(|e| fault(format!("MoveLeader at {endpoint}: {e}")))
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(fault(format!(
                "MoveLeader at {endpoint} did not answer within 10 s"
            ))),
        }
    }

    /// SIGKILLs a node's container.
    pub async fn kill(&self, node: &NodeRef) -> Result<()> {
        let c = self.container(node)?;
        bounded(format!("killing {c}"), DOCKER_STEP, self.objects.kill(&c)).await
    }

    /// Runs a command in a node, for at most [`EXEC_STEP`]; its output is cleaned
    /// ([`clean`]) and capped.
    pub async fn exec(&self, node: &NodeRef, cmd: &[&str]) -> Result<ExecOutput> {
        self.exec_within(node, cmd, EXEC_STEP).await
    }

    /// Runs a command in a node for at most `limit`.
    pub async fn exec_within(
        &self,
        node: &NodeRef,
        cmd: &[&str],
        limit: Duration,
    ) -> Result<ExecOutput> {
        let c = self.container(node)?;
        let out = bounded(
            format!("running {} in {c}", clean(&cmd.join(" "))),
            limit,
            self.objects.exec(&c, cmd),
        )
        .await?;
        Ok(ExecOutput {
            stdout: clean(&out.stdout),
            stderr: clean(&out.stderr),
            ..out
        })
    }

    /// `None` when the node's container runs, else what Docker says about it.
    pub async fn not_running(&self, node: &NodeRef) -> Result<Option<Stopped>> {
        let c = self.container(node)?;
        let st = bounded(
            format!("inspecting {c}"),
            DOCKER_STEP,
            self.objects.not_running(&c),
        )
        .await?;
        Ok(st.map(|s| Stopped {
            error: s.error.as_deref().map(clean),
            ..s
        }))
    }

    /// Nodes whose container holds as many processes as `limits.pids` allows (or within
    /// [`PIDS_MARGIN`] of it), as sentences naming the node and the limit.
    pub async fn at_pids_limit(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes() {
            let Ok(c) = self.container(&n) else { continue };
            let Ok((current, limit)) =
                bounded(format!("stats of {c}"), DOCKER_STEP, self.objects.pids(&c)).await
            else {
                continue;
            };
            if limit > 0 && current + PIDS_MARGIN >= limit {
                out.push(format!(
                    "{n} is at its pids limit: {current} processes and threads of {limit} allowed (limits.pids); new processes cannot start there"
                ));
            }
        }
        out
    }

    /// The hosts file of a node as text (cleaned, at most 1 MiB).
    pub async fn read_hosts(&self, node: &NodeRef) -> Result<String, HarnessError> {
        let file = self.profile.judge.hosts_file.as_str();
        let out = self.exec(node, &["cat", file]).await?;
        if out.code == 0 {
            Ok(out.stdout)
        } else {
            Err(HarnessError::ExecFailed {
                container: self.container(node)?,
                command: format!("cat {file}"),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// What a node's etcd member says about itself, asked from the host.
    pub async fn member_status(&self, node: &NodeRef) -> Result<MemberStatus, ProbeError> {
        let endpoint = format!("http://{}:{}", node.ip, self.profile.judge.etcd_client_port);
        probe_member(&endpoint, None).await.map(|p| p.status)
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

    /// The last `lines` lines of every node's output, each node's at most [`LOG_BYTES`],
    /// cleaned, each read bounded by [`DOCKER_STEP`].
    pub async fn logs_tail(&self, lines: usize) -> String {
        let mut containers: Vec<String> = (0..self.plan.nodes)
            .map(|i| self.names().node_container(i))
            .collect();
        if self.gateway_image.is_some() {
            containers.push(self.names().gateway());
        }
        let mut out = String::new();
        for c in containers {
            let read = self.objects.logs_tail_capped(&c, lines, LOG_BYTES);
            let text = match tokio::time::timeout(DOCKER_STEP, read).await {
                Ok(t) => clean(&t),
                Err(_) => format!("[reading the log took over {} s]", DOCKER_STEP.as_secs()),
            };
            if !text.trim().is_empty() {
                out.push_str(&format!("[{c}]\n{}\n", text.trim_end()));
            }
        }
        out
    }

    /// Removes every object of this cluster (by label, like `harness down`), within
    /// [`DOWN_STEP`].
    pub async fn down(&self) -> Result<usize> {
        bounded(
            format!("removing cluster {}", self.names().cluster),
            DOWN_STEP,
            self.objects.remove(),
        )
        .await
    }
}

/// Runs a Docker step for at most `limit`; a step that takes longer is abandoned.
async fn bounded<T>(
    what: String,
    limit: Duration,
    step: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r,
        Err(_) => Err(HarnessError::StepTimedOut {
            what,
            secs: limit.as_secs(),
        }),
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
        parse_status_line(&buf).map_err(|e| e.to_string())
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

/// Why an answer has no HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusLineError {
    #[error("closed the connection without an answer")]
    Empty,
    #[error("answered something that is not HTTP: {0:?}")]
    NotHttp(String),
}

/// The status code of an HTTP/1.x status line.
pub fn parse_status_line(buf: &[u8]) -> std::result::Result<u16, StatusLineError> {
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && (100..=599).contains(&code) => Ok(code),
        _ if line.is_empty() => Err(StatusLineError::Empty),
        _ => Err(StatusLineError::NotHttp(truncate(line, 60))),
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
    use crate::names::{LABEL_CLUSTER, LABEL_NODE, LABEL_PID};

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.0 200 OK\r\n"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\nX: y"),
            Ok(503)
        );
        assert_eq!(parse_status_line(b""), Err(StatusLineError::Empty));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .to_string()
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
    fn a_symlink_out_of_the_context_is_refused_without_being_followed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("loot")).unwrap();
        let e = read_context_dir(d.path()).unwrap_err();
        match &e {
            ContextError::Symlink { path, target } => {
                assert_eq!(path, &d.path().join("loot"));
                assert_eq!(target, "/etc");
            }
            other => panic!("expected a symlink refusal, got {other}"),
        }
        assert!(e.to_string().contains("loot"), "{e}");
        // Through the grader's error type, with the same message.
        let h: HarnessError = e.into();
        assert!(h.to_string().contains("symbolic link"), "{h}");
        // A symlink to a file inside the folder is refused too: the check is on the link,
        // not on where it points.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("../Dockerfile", d.path().join("sub/df")).unwrap();
        assert!(matches!(
            read_context_dir(d.path()),
            Err(ContextError::Symlink { .. })
        ));
    }

    #[test]
    fn link_loops_terminate_with_a_refusal() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        // A directory that contains itself, and two links pointing at each other.
        std::os::unix::fs::symlink("..", d.path().join("sub/up")).unwrap();
        let e = read_context_dir(d.path()).unwrap_err();
        assert!(matches!(e, ContextError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("sub/up"), "{e}");
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", d.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("b")).unwrap();
        let e = read_context_dir(d.path()).unwrap_err();
        assert!(matches!(e, ContextError::Symlink { .. }), "{e}");
    }

    #[test]
    fn an_oversized_context_is_refused_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        std::fs::write(d.path().join("a"), vec![b'a'; 60]).unwrap();
        std::fs::write(d.path().join("b"), vec![b'b'; 60]).unwrap();
        // Each file fits, the sum does not.
        assert_eq!(read_context_dir_within(d.path(), 200, 10).unwrap().len(), 3);
        let e = read_context_dir_within(d.path(), 100, 10).unwrap_err();
        assert!(
            matches!(e, ContextError::TooLarge { limit: 100, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains(&d.path().display().to_string()),
            "{e}"
        );
        // Too many files.
        let e = read_context_dir_within(d.path(), 1000, 2).unwrap_err();
        assert!(
            matches!(e, ContextError::TooManyFiles { limit: 2, .. }),
            "{e}"
        );
        // With the real cap: a sparse file beyond it is refused before it is read.
        let big = d.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_CONTEXT_BYTES + 1)
            .unwrap();
        match read_context_dir(d.path()).unwrap_err() {
            ContextError::TooLarge { path, limit, .. } => {
                assert_eq!(path, big);
                assert_eq!(limit, MAX_CONTEXT_BYTES);
            }
            other => panic!("expected a size refusal, got {other}"),
        }
    }

    #[test]
    fn special_files_are_left_out_and_the_fixtures_still_pack() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        nix::unistd::mkfifo(
            &d.path().join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let files = read_context_dir(d.path()).unwrap();
        assert_eq!(files.len(), 1);
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        for name in [
            "good",
            "faulty",
            "sticky-service",
            "no-rejoin",
            "forwarder-exits",
            "last-digit",
            "no-shared-table",
        ] {
            let files = read_context_dir(&fixtures.join(name)).unwrap();
            assert!(files.iter().any(|(n, _, _)| n == "Dockerfile"), "{name}");
        }
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
        let c = GradedCluster::new(&docker, &p, "img", "g-fx", plan);
        let spec = c.node_container(1).unwrap();
        let b = spec.body(&c.names().network(), c.objects.labels(&[]));
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
        assert_eq!(hc.network_mode.as_deref(), Some("g-fx-net"));
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_CLUSTER], "g-fx");
        assert_eq!(labels[LABEL_NODE], "node1");
        assert_eq!(labels[LABEL_PID], std::process::id().to_string());
        let ep = b.networking_config.unwrap().endpoints_config.unwrap();
        let ip = ep["g-fx-net"]
            .ipam_config
            .as_ref()
            .unwrap()
            .ipv4_address
            .clone();
        assert_eq!(ip.as_deref(), Some("10.79.1.21"));
        // A template naming an unknown variable is refused with the field and node.
        p.node.command = vec!["{nope}".into()];
        let c = GradedCluster::new(&docker, &p, "img", "g-fx", plan);
        let e = c.node_container(0).unwrap_err().to_string();
        assert!(e.contains("node.command") && e.contains("node0"), "{e}");
    }
}
