//! The Docker client (bollard, API version negotiated with the engine) and the harness's
//! typed errors: one variant per kind of failure, each saying what was being done.

use bollard::Docker;

/// Everything the harness library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "cannot reach the Docker engine: {0}\n  hint: is the daemon running and is /var/run/docker.sock (or DOCKER_HOST) accessible to you?"
    )]
    Connect(#[source] bollard::errors::Error),
    #[error("{what}: {source}")]
    Docker {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A field of a cluster spec (or of a command line that makes one) is out of bounds.
    #[error("{field}: {reason}")]
    BadSpec { field: String, reason: String },
    /// A cluster name that cannot prefix Docker object names.
    #[error(transparent)]
    BadClusterName(#[from] crate::names::BadClusterName),
    /// The host could not be shut off from a graded cluster's bridge.
    #[error(transparent)]
    Firewall(#[from] crate::cluster::firewall::FirewallError),
    /// A submission's folder could not be packed as a build context.
    #[error(transparent)]
    Context(#[from] crate::grade::runner::ContextError),
    /// A node that the cluster does not have.
    #[error("no node {node:?} in cluster {cluster} (nodes: {known})")]
    UnknownNode {
        cluster: String,
        node: String,
        known: String,
    },
    #[error("cluster {name:?} already exists; remove it with `harness down --name {name}` or pick another --name")]
    ClusterExists { name: String },
    #[error("no cluster named {name:?} (network {network} not found); start one with `harness up --name {name}`")]
    NoSuchCluster { name: String, network: String },
    /// The cluster's network lacks (or has a bad) label this harness puts there.
    #[error("network {network} has no valid {label} label: it was not made by this harness")]
    ForeignNetwork { network: String, label: String },
    /// Another network already uses an address range overlapping the wanted subnet.
    #[error("subnet {subnet} overlaps network {network} ({other}); pick another --subnet")]
    SubnetTaken {
        subnet: crate::names::Subnet,
        network: String,
        other: String,
    },
    /// Bringing a cluster up failed; what was created is removed again.
    #[error("{source}\n--- node logs ---\n{logs}")]
    UpFailed {
        #[source]
        source: Box<HarnessError>,
        logs: String,
    },
    /// A command run in a container exited non-zero.
    #[error("{command} in {container} exited {code}: {stderr}")]
    ExecFailed {
        container: String,
        command: String,
        code: i64,
        stderr: String,
    },
    #[error("{container} publishes no port {port}")]
    NoPublishedPort { container: String, port: String },
    /// A local program the image build needs is missing.
    #[error("{program} not found: it is needed to make the base image from Debian packages.\n  fix: apt-get install {package}   (or load a base image and pass --base-image NAME)")]
    ToolMissing {
        program: &'static str,
        package: &'static str,
    },
    #[error("making the base image needs root (mmdebstrap or debootstrap, and chroot).\n  fix: run `sudo harness images` once; later runs reuse the image")]
    NeedsRoot,
    /// A host program run while building an image failed.
    #[error("{command} failed ({status}); last output:\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    /// Docker's image build reported an error.
    #[error("building {what}: {output}")]
    ImageBuild { what: String, output: String },
    #[error("image {image} is not present locally and nothing can be pulled here; load it with `docker load` or give the submission's Dockerfile directory as `build`")]
    ImageMissing { image: String },
    #[error("{dir} has no Dockerfile (the profile's submission.build must name a directory holding one)")]
    NoDockerfile { dir: String },
    #[error("the workspace binaries do not run in {image} (exit {code}):\n{output}\n  hint: the binaries are built on this host and need a C library at least as new as the host's. Make the base image from the host's Debian release (`harness images --rebuild --suite <codename>`), or see README \"Images\" for hosts of other distributions.")]
    SmokeTest {
        image: String,
        code: i64,
        output: String,
    },
    #[error(transparent)]
    Wait(#[from] crate::wait::WaitError),
    /// A step of the grader (a Docker call, a command in a container) took longer than its
    /// bound and was abandoned.
    #[error("{what} did not finish within {secs} s")]
    StepTimedOut { what: String, secs: u64 },
}

/// Result alias for the harness library.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Wraps a bollard error with what was being done.
pub fn ctx<T>(what: impl Into<String>, r: Result<T, bollard::errors::Error>) -> Result<T> {
    r.map_err(|source| HarnessError::Docker {
        what: what.into(),
        source,
    })
}

/// Connects to the local engine and negotiates the API version (the engine here speaks
/// 1.41; bollard's default is newer), then pings it.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults().map_err(HarnessError::Connect)?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(HarnessError::Connect)?;
    docker.ping().await.map_err(HarnessError::Connect)?;
    Ok(docker)
}

/// True when the error is Docker's "no such object" (404).
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
