//! The leader-only service. Filled in by the leader-service issue; for now it does nothing
//! but wait for shutdown, so the agent's wiring is already in place.

use crate::config::Config;
use crate::node::NodeStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs the leader service while this node leads, until `stop` is cancelled.
pub async fn run(_config: Config, _status: watch::Receiver<NodeStatus>, stop: CancellationToken) {
    stop.cancelled().await;
}
