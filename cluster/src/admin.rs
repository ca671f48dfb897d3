//! The admin HTTP endpoint every process serves: health, readiness, members, metrics.
//!
//! Read-only endpoints; state-changing admin actions (authenticated) are added by the
//! components that own that state.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tandem_common::member::MembersResponse;
use tandem_common::schema::NodeState;
use tokio::net::TcpListener;

use crate::gossip::GossipNode;
use crate::net::{BindError, bind_tcp};

/// The admin listener, bound before the node joins so a port conflict fails start-up.
pub struct AdminServer {
    listener: TcpListener,
}

#[derive(Clone)]
struct AdminState {
    gossip: GossipNode,
    metrics: PrometheusHandle,
}

impl AdminServer {
    /// # Errors
    /// When the address cannot be bound (in use, not local, no permission).
    pub async fn bind(addr: SocketAddr) -> Result<Self, BindError> {
        let listener = bind_tcp("admin endpoint", addr).await?;
        Ok(AdminServer { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    ///
    /// # Errors
    /// When accepting connections fails for good.
    pub async fn serve(
        self,
        gossip: GossipNode,
        metrics: PrometheusHandle,
        extra: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router(AdminState { gossip, metrics })
            .merge(extra)
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/members", get(members))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let node_state = state.gossip.advert().state;
    let status = if node_state == NodeState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{node_state}\n")).into_response()
}

async fn members(State(state): State<AdminState>) -> Json<MembersResponse> {
    Json(MembersResponse {
        cluster: state.gossip.cluster().to_string(),
        self_id: state.gossip.node_id().to_string(),
        members: state.gossip.members().await,
    })
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
