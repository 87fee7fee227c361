//! clusterlab's node agent: the main process of every node container.
//!
//! # Layout
//! Node configuration, the etcd key schema, the etcd connection and signal/tracing set-up
//! come from `clusterlab_core`, shared with every plugin that runs on a node.
//!
//! - [`etcd`]: etcd's flags, the child process and readiness; a member's startup plan (no etcd).
//! - [`keys`]: the decisions of the key loop (lease, node key, leader key), without effects.
//! - [`node`]: the node's life: etcd, the key loop's effects, health, plugins, shutdown.
//! - [`health`]: the health API on :8008.
//! - [`detect`]: failure detection faster than the lease (peer probes, the leader's checks).
//! - [`supervise`]: plugin processes, restarted with backoff.
//! - [`leader_service`]: the service that runs on the leader only.
//! - [`metrics`]: `/metrics` on the health port (Prometheus text).

pub mod detect;
pub mod etcd;
pub mod health;
pub mod keys;
pub mod leader_service;
pub mod metrics;
pub mod node;
pub mod supervise;

pub use clusterlab_core::config::Config;
pub use clusterlab_core::{init_tracing, shutdown_signal};
pub use node::run;
