//! The health API on every node: `/health` (the agent's view of its node and its plugins:
//! 200 while etcd answers, else 503) and `/leader` (200 only while this node's etcd member
//! leads, else 503).
//!
//! `/health`'s JSON is the node's [`NodeStatus`] with three fields added: `status` (`ok`,
//! `degraded` while a plugin is in a crash loop, `unavailable` while etcd does not answer),
//! `problems` (one line per reason for not being `ok`) and `plugins` (each plugin's
//! [`PluginReport`]). A degraded node still answers 200: it serves, but needs a look.
//!
//! `/metrics` serves [`crate::metrics`] (Prometheus text).

use crate::node::NodeStatus;
use crate::supervise::{PluginHealth, PluginReport};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clusterlab_core::schema::Role;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AppState {
    status: watch::Receiver<NodeStatus>,
    plugins: PluginHealth,
    /// A leadership not re-confirmed within this long is not reported.
    fresh: Duration,
}

/// The health API's routes.
pub fn router(
    status: watch::Receiver<NodeStatus>,
    plugins: PluginHealth,
    fresh: Duration,
) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/leader", get(leader))
        .with_state(AppState {
            status,
            plugins,
            fresh,
        })
}

/// The JSON of `/health`.
#[derive(Debug, Serialize)]
pub struct Health {
    #[serde(flatten)]
    pub node: NodeStatus,
    /// `ok`, `degraded` or `unavailable`.
    pub status: &'static str,
    /// Why the status is not `ok`, one line per reason.
    pub problems: Vec<String>,
    pub plugins: Vec<PluginReport>,
}

/// What `/health` answers for this node status and these plugins.
pub fn health_of(node: NodeStatus, plugins: Vec<PluginReport>) -> (StatusCode, Health) {
    let mut problems = Vec::new();
    if !node.etcd_ok {
        problems.push(match &node.last_error {
            Some(e) => format!("etcd does not answer: {e}"),
            None => "etcd does not answer".to_string(),
        });
    }
    for p in plugins.iter().filter(|p| p.crash_loop) {
        problems.push(format!(
            "plugin {} is in a crash loop: {} quick exits in a row, last: {}",
            p.name,
            p.quick_exits,
            p.last_exit.as_deref().unwrap_or("unknown")
        ));
    }
    let (code, status) = if !node.etcd_ok {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if !problems.is_empty() {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        code,
        Health {
            node,
            status,
            problems,
            plugins,
        },
    )
}

/// Serves the health API, with `extra` routes merged in (the failure detector's, see
/// [`crate::detect::routes`]), until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<NodeStatus>,
    plugins: PluginHealth,
    fresh: Duration,
    extra: Router,
    metrics: crate::metrics::AgentMetrics,
    stop: CancellationToken,
) {
    let app = router(status, plugins.clone(), fresh).merge(extra).route(
        crate::metrics::METRICS_PATH,
        get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    crate::metrics::CONTENT_TYPE,
                )],
                metrics.render(&plugins),
            )
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "health API stopped");
    }
}

async fn health(State(st): State<AppState>) -> impl IntoResponse {
    let s = st.status.borrow().clone();
    let (code, body) = health_of(s, st.plugins.reports());
    (code, Json(body))
}

async fn leader(State(st): State<AppState>) -> impl IntoResponse {
    let s = st.status.borrow().clone();
    if s.is_leader_within(st.fresh) {
        (StatusCode::OK, format!("{} is the leader\n", s.name))
    } else {
        let role = s
            .role
            .map(|r: Role| r.to_string())
            .unwrap_or("unknown".into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not the leader (role: {role})\n", s.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(etcd_ok: bool) -> NodeStatus {
        NodeStatus {
            name: "node1".into(),
            ip: "10.77.0.11".into(),
            member_id: "abc".into(),
            role: Some(Role::Follower),
            raft_leader: Some("def".into()),
            raft_term: 2,
            lease_id: Some("7".into()),
            etcd_ok,
            last_error: (!etcd_ok).then(|| "deadline exceeded".into()),
            leader_confirmed_at: None,
            cut_off_at: None,
        }
    }

    fn plugin(name: &str, crash_loop: bool) -> PluginReport {
        PluginReport {
            name: name.into(),
            running: !crash_loop,
            pid: (!crash_loop).then_some(42),
            starts: if crash_loop { 6 } else { 1 },
            quick_exits: if crash_loop { 5 } else { 0 },
            last_exit: crash_loop.then(|| "exit status: 1".into()),
            crash_loop,
        }
    }

    #[test]
    fn a_crash_looping_plugin_degrades_health_and_keeps_the_old_fields() {
        let (code, h) = health_of(
            node(true),
            vec![plugin("hostsgen", false), plugin("sshkeys", true)],
        );
        assert_eq!(code, StatusCode::OK);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["status"], "degraded");
        // Every field the old /health had is still at the top level.
        for key in [
            "name",
            "ip",
            "member_id",
            "role",
            "raft_leader",
            "raft_term",
            "lease_id",
            "etcd_ok",
            "last_error",
        ] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
        assert_eq!(json["name"], "node1");
        assert_eq!(json["plugins"][1]["name"], "sshkeys");
        assert_eq!(json["plugins"][1]["crash_loop"], true);
        assert_eq!(json["plugins"][1]["quick_exits"], 5);
        let problems = json["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{json}");
        let p = problems[0].as_str().unwrap();
        assert!(
            p.contains("sshkeys") && p.contains("5 quick exits") && p.contains("exit status: 1"),
            "{p}"
        );
    }

    #[test]
    fn health_is_ok_with_healthy_plugins_and_unavailable_without_etcd() {
        let (code, h) = health_of(node(true), vec![plugin("hostsgen", false)]);
        assert_eq!((code, h.status), (StatusCode::OK, "ok"));
        assert!(h.problems.is_empty());
        let (code, h) = health_of(node(false), vec![plugin("hostsgen", true)]);
        assert_eq!(
            (code, h.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(h.problems.len(), 2, "{:?}", h.problems);
        assert!(h.problems[0].contains("deadline exceeded"));
    }
}
