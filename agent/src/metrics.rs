//! `/metrics` on the health port: the agent's own figures in Prometheus' text exposition format
//! (OpenMetrics 1.0, which Prometheus reads), made with `prometheus-client`.
//!
//! - `clusterlab_agent_lease_keepalive_seconds`: histogram of one lease renewal (send and
//!   reply), successful or not;
//! - `clusterlab_agent_etcd_status_seconds`: histogram of one member Status call of the key
//!   loop (every `leader_poll_ms`);
//! - `clusterlab_agent_role_changes_total{to}`: times this node's member changed role, by the
//!   role it took (`leader`, `follower`); the first role after start is not a change;
//! - `clusterlab_agent_plugin_restarts_total{plugin}`: starts of each plugin after its first;
//! - `clusterlab_agent_is_leader`: 1 while this node's member reports itself leader.
//!
//! The figures are kept in the shared handles of [`AgentMetrics`] (a few atomics each); the
//! text is made at each scrape.

use crate::supervise::PluginHealth;
use clusterlab_core::schema::Role;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Where the metrics are served on the health port.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// The agent's metric handles; clones share the figures.
#[derive(Clone)]
pub struct AgentMetrics {
    pub lease_keepalive: Histogram,
    pub etcd_status: Histogram,
    role_changes: Family<Labels, Counter>,
    is_leader: Gauge,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            // 1 ms … 2 s: an etcd call of the key loop times out at 2 s.
            lease_keepalive: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            etcd_status: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            role_changes: Family::default(),
            is_leader: Gauge::default(),
        }
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One lease renewal took `d`.
    pub fn observe_keepalive(&self, d: Duration) {
        self.lease_keepalive.observe(d.as_secs_f64());
    }

    /// One Status call took `d`.
    pub fn observe_status(&self, d: Duration) {
        self.etcd_status.observe(d.as_secs_f64());
    }

    /// The member now reports `role` (every poll); `changed` when it differs from before.
    pub fn role(&self, role: Role, changed: bool) {
        self.is_leader.set(i64::from(role == Role::Leader));
        if changed {
            self.role_changes
                .get_or_create(&vec![("to".to_string(), role.to_string())])
                .inc();
        }
    }

    /// The metrics now, as text; plugin restarts are read from `plugins`.
    pub fn render(&self, plugins: &PluginHealth) -> String {
        let mut reg = Registry::with_prefix("clusterlab_agent");
        reg.register(
            "lease_keepalive_seconds",
            "Seconds one lease renewal (keep-alive and its reply) took",
            self.lease_keepalive.clone(),
        );
        reg.register(
            "etcd_status_seconds",
            "Seconds one member Status call of the key loop took",
            self.etcd_status.clone(),
        );
        reg.register(
            "role_changes",
            "Times this node's etcd member changed role, by the role it took",
            self.role_changes.clone(),
        );
        reg.register(
            "is_leader",
            "1 while this node's etcd member reports itself leader",
            self.is_leader.clone(),
        );
        let restarts = Family::<Labels, Counter>::default();
        for p in plugins.reports() {
            restarts
                .get_or_create(&vec![("plugin".to_string(), p.name.clone())])
                .inc_by(p.starts.saturating_sub(1));
        }
        reg.register(
            "plugin_restarts",
            "Starts of each plugin after its first",
            restarts,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_every_figure() {
        let m = AgentMetrics::new();
        m.observe_keepalive(Duration::from_millis(3));
        m.observe_keepalive(Duration::from_millis(5));
        m.observe_status(Duration::from_millis(1));
        m.role(Role::Follower, false);
        m.role(Role::Leader, true);
        m.role(Role::Leader, false);
        let plugins = PluginHealth::new(&[]);
        let text = m.render(&plugins);
        for line in [
            "clusterlab_agent_lease_keepalive_seconds_count 2",
            "clusterlab_agent_etcd_status_seconds_count 1",
            "clusterlab_agent_role_changes_total{to=\"leader\"} 1",
            "clusterlab_agent_is_leader 1",
            "# TYPE clusterlab_agent_plugin_restarts counter",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("to=\"follower\""), "{text}");
    }
}
