//! The Docker client (bollard, API version negotiated with the engine) and the harness's
//! typed errors: one variant per kind of operation, each saying what was being done.

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
    #[error("{0}")]
    Image(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Wait(#[from] crate::wait::WaitError),
    #[error("{what}: {reason}")]
    Etcd { what: String, reason: String },
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
