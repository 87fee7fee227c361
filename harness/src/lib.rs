//! clusterlab's harness: builds the images with no registry, brings up N-node clusters on a
//! bridge network, breaks them, and checks what it sees.
//!
//! # Layout
//! From the top down; a module calls only modules below it, and nothing calls [`cli`].
//! - [`cli`]: the `harness` command line, the only place with clap and `anyhow`: parses
//!   flags into the option structs below, prints, turns errors into the exit message.
//! - [`bench`]: `harness bench hosts|failover|proxy`, each on a cluster of its own.
//! - [`grade`]: `harness grade`: profiles, a submission's cluster, scenarios judged from
//!   outside, report.json and junit.xml.
//! - [`view`]: the live page (`harness view`): the cluster drawn from [`events`], live,
//!   with kill/start/isolate/heal buttons behind a per-run token, on 127.0.0.1 only.
//! - [`trial`]: fixtures for full-cluster trials (used by `cargo test`).
//! - [`probe`]: looking at a running cluster from outside (hosts files, HTTP, a stream of
//!   GETs), shared by the trials and the benchmarks.
//! - [`events`]: one typed, time-stamped stream of what changes in a cluster (Docker events,
//!   etcd watches, raft term/leader), for `harness events`, the live view and timelines.
//! - [`faults`]: network partitions (iptables DROP inside the nodes) and healing them.
//! - [`cluster`]: the cluster spec, the one owner of a cluster's Docker objects
//!   (`cluster::objects`), status; up, kill, start, exec, down.
//! - [`images`]: base image from Debian packages, node image by content hash.
//! - [`oracle`]: pure rules over observations, no Docker: container state, member role, the
//!   raft-leader rule, the hosts-table expectations, the benchmarks' statistics.
//! - [`wait`]: waiting for a condition with a deadline, reporting the last observation.
//! - [`progress`]: timed step lines and spinners for long steps.
//! - [`names`]: Docker object names, labels and the IP plan (the only place that knows them).
//! - [`docker`]: the bollard client (API version negotiated) and the typed errors.
//! - [`shutdown`]: Ctrl-C/SIGTERM removes what the interrupted run created.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod docker;
pub mod events;
pub mod faults;
pub mod grade;
pub mod images;
pub mod names;
pub mod oracle;
pub mod probe;
pub mod progress;
pub mod shutdown;
pub mod trial;
pub mod view;
pub mod wait;

pub use cluster::{Cluster, ClusterSpec, ClusterStatus, ExecOutput, NodeKind, NodeState};
pub use docker::{HarnessError, Result};
pub use wait::wait_for;
