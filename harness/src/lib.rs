//! clusterlab's harness: builds the images with no registry, brings up N-node clusters on a
//! bridge network, breaks them, and checks what it sees.
//!
//! # Layout
//! - [`names`]: Docker object names, labels and the IP plan (the only place that knows them).
//! - [`docker`]: the bollard client (API version negotiated) and the typed errors.
//! - [`images`]: base image from Debian packages, node image by content hash.
//! - [`cli`]: the `harness` command line.
//! - [`cluster`]: spec, the one owner of a cluster's Docker objects, status; up, kill,
//!   start, exec, down.
//! - [`faults`]: network partitions (iptables DROP inside the nodes) and healing them.
//! - [`wait`]: waiting for a condition with a deadline, reporting the last observation.
//! - [`trial`]: fixtures for full-cluster trials (used by `cargo test` and by grading).
//! - [`bench_hosts`]: hosts-file probes shared with the hosts trials; `harness bench hosts`.
//! - [`bench_failover`]: HTTP probes shared with the proxy trials; `harness bench failover`.
//! - [`bench_proxy`]: `harness bench proxy`.
//! - [`grade`]: `harness grade`: profiles, a submission's cluster, scenarios judged from
//!   outside, report.json and junit.xml.
//! - [`progress`]: timed step lines and spinners for long steps.
//! - [`shutdown`]: Ctrl-C/SIGTERM removes what the interrupted run created.

pub mod bench_failover;
pub mod bench_hosts;
pub mod bench_proxy;
pub mod cli;
pub mod cluster;
pub mod docker;
pub mod faults;
pub mod grade;
pub mod images;
pub mod names;
pub mod oracle;
pub mod progress;
pub mod shutdown;
pub mod trial;
pub mod wait;

pub use cluster::{Cluster, ClusterSpec, ClusterStatus, ExecOutput, NodeState};
pub use docker::{HarnessError, Result};
pub use wait::wait_for;
