//! Probes: how the harness looks at a running cluster from outside, shared by the trials and
//! the benchmarks (neither imports the other). What the observations mean is the oracle's
//! ([`crate::oracle`]); the probes read, wait and hand over.
//!
//! - [`hosts`]: each node's /etc/hosts by `docker exec cat`, and waits for the expected table.
//! - [`http`]: a keep-alive HTTP client, the leader service and gateway probes, and a steady
//!   stream of GETs read around a leader kill.

pub mod hosts;
pub mod http;

use crate::docker::HarnessError;
use crate::wait::WaitError;

/// What a probe can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// Reading a file on a node: `cat` ran and failed.
    #[error("cat {path} on {node} exited {code}: {stderr}")]
    Cat {
        node: String,
        path: String,
        code: i64,
        stderr: String,
    },
}
