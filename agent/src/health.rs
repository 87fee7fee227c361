//! The health API on every node: `/health` (the agent's view of its node, always 200 while
//! the agent runs) and `/leader` (200 only while this node's etcd member leads, else 503).

use crate::node::NodeStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clusterlab_core::schema::Role;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AppState {
    status: watch::Receiver<NodeStatus>,
    /// A leadership not re-confirmed within this long is not reported.
    fresh: Duration,
}

/// The health API's routes.
pub fn router(status: watch::Receiver<NodeStatus>, fresh: Duration) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/leader", get(leader))
        .with_state(AppState { status, fresh })
}

/// Serves the health API until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<NodeStatus>,
    fresh: Duration,
    stop: CancellationToken,
) {
    let app = router(status, fresh);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "health API stopped");
    }
}

async fn health(State(st): State<AppState>) -> impl IntoResponse {
    let s = st.status.borrow().clone();
    let code = if s.etcd_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(s))
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
