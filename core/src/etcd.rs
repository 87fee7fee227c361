//! The etcd connection every clusterlab program uses: its timeouts, and (feature `etcd`) an
//! etcd-client connection that applies them.

use std::time::Duration;

/// How long establishing a connection to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Interval of gRPC keep-alive pings. etcd answers pings closer than 5 s apart with GOAWAY
/// ("too many pings"), which would cut long-lived watches and keep-alive streams: 10 s stays
/// well above that.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered before the connection counts as dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd-client options with clusterlab's timeouts and keep-alive; callers add what is
/// theirs (e.g. `with_require_leader`).
#[cfg(feature = "etcd")]
pub fn options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
}

/// A client for one endpoint with short timeouts suited to a cluster lab.
#[cfg(feature = "etcd")]
pub async fn connect(endpoint: &str) -> Result<etcd_client::Client, etcd_client::Error> {
    etcd_client::Client::connect([endpoint], Some(options())).await
}
