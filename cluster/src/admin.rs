//! The admin HTTP endpoint every process serves: health, readiness, members, metrics, the
//! gossip keyring, the cluster-wide HA switch and the drain.
//!
//! Read-only endpoints are open to whoever reaches the admin address. State-changing ones
//! (the keyring here; components add their own) pass [`AdminAuth::guard`]: they need the
//! admin token when one is configured, and otherwise accept calls from loopback only.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tandem_common::member::MembersResponse;
use tandem_common::schema::{HaSwitch, NodeState};
use tandem_common::secret::bearer_matches;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::gossip::GossipNode;
use crate::keyring::{ClusterKey, KeyId, Keyring, KeyringView};
use crate::metrics::names;
use crate::net::{BindError, bind_tcp};

/// Who may make state-changing admin calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// No token configured: callers on loopback only.
    LoopbackOnly,
    /// Callers presenting `Authorization: Bearer <token>`.
    Token(String),
}

impl AdminAuth {
    /// Whether a call from `peer` carrying `headers` may change state; the reason if not.
    pub fn check(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), &'static str> {
        match self {
            AdminAuth::LoopbackOnly if peer.ip().is_loopback() => Ok(()),
            AdminAuth::LoopbackOnly => Err(
                "state-changing admin calls are accepted from loopback only on this node \
                 (it has no --admin-token-file)",
            ),
            AdminAuth::Token(token) => {
                let authorization = headers.get(header::AUTHORIZATION);
                if bearer_matches(authorization.and_then(|v| v.to_str().ok()), token) {
                    Ok(())
                } else {
                    Err("a missing or wrong admin token (Authorization: Bearer TOKEN)")
                }
            }
        }
    }

    /// `routes`, answering 401 to callers [`AdminAuth::check`] refuses (counted in
    /// `tandem_admin_refused_total` and logged).
    pub fn guard(&self, routes: Router) -> Router {
        routes.route_layer(axum::middleware::from_fn_with_state(self.clone(), guard))
    }
}

async fn guard(
    State(auth): State<AdminAuth>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(reason) => {
            metrics::counter!(names::ADMIN_REFUSED).increment(1);
            warn!(%peer, path = %request.uri().path(), reason, "refused an admin call");
            (StatusCode::UNAUTHORIZED, format!("{reason}\n")).into_response()
        }
    }
}

/// What the admin endpoint shows and acts on.
pub struct AdminNode {
    pub gossip: GossipNode,
    pub metrics: PrometheusHandle,
    pub keyring: Arc<Keyring>,
    /// Set to start draining the node.
    pub drain: watch::Sender<bool>,
}

/// The admin listener, bound before the node joins so a port conflict fails start-up.
pub struct AdminServer {
    listener: TcpListener,
}

#[derive(Clone)]
struct AdminState {
    gossip: GossipNode,
    metrics: PrometheusHandle,
    keyring: Arc<Keyring>,
    drain: watch::Sender<bool>,
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
        node: AdminNode,
        extra: Router,
        auth: AdminAuth,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let AdminNode {
            gossip,
            metrics,
            keyring,
            drain,
        } = node;
        let state = AdminState {
            gossip,
            metrics,
            keyring,
            drain,
        };
        let app = router(state.clone(), &auth)
            .merge(extra)
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

fn router(state: AdminState, auth: &AdminAuth) -> Router {
    let changes = Router::new()
        .route("/v1/keyring/install", post(install_key))
        .route("/v1/keyring/use", post(use_key))
        .route("/v1/keyring/remove", post(remove_key))
        .route("/v1/keyring/plain", post(accept_plain))
        .route("/v1/ha", post(set_ha))
        .route("/v1/drain", post(drain))
        .with_state(state.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/members", get(members))
        .route("/metrics", get(render_metrics))
        .route("/v1/keyring", get(keyring))
        .route("/v1/ha", get(ha))
        .with_state(state)
        .merge(auth.guard(changes))
}

/// Body of `POST /v1/ha`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct HaRequest {
    pub on: bool,
}

/// Body of the answer to `POST /v1/drain`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrainReply {
    pub node_id: String,
    /// The node's state when the call arrived (`draining` once it drains).
    pub state: NodeState,
}

async fn ha(State(state): State<AdminState>) -> Json<HaSwitch> {
    Json(state.gossip.ha())
}

async fn set_ha(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<HaRequest>,
) -> Json<HaSwitch> {
    info!(%peer, on = request.on, "HA switch requested");
    Json(state.gossip.set_ha(request.on).await)
}

async fn drain(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> (StatusCode, Json<DrainReply>) {
    if !state.drain.send_replace(true) {
        info!(%peer, "drain requested");
    }
    let reply = DrainReply {
        node_id: state.gossip.node_id().to_string(),
        state: state.gossip.advert().state,
    };
    (StatusCode::ACCEPTED, Json(reply))
}

/// Body of the keyring calls.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyringRequest {
    /// The key to install (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key id to use or remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whether unsealed gossip is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<bool>,
}

type KeyringReply = Result<Json<KeyringView>, (StatusCode, String)>;

fn bad_request(err: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, format!("{err}\n"))
}

fn key_id(request: &KeyringRequest) -> Result<KeyId, (StatusCode, String)> {
    request
        .id
        .as_deref()
        .ok_or_else(|| bad_request("the body needs the key's \"id\""))?
        .parse()
        .map_err(bad_request)
}

async fn keyring(State(state): State<AdminState>) -> Json<KeyringView> {
    Json(state.keyring.view())
}

async fn install_key(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<KeyringRequest>,
) -> KeyringReply {
    // The admin endpoint speaks plain HTTP: a key sent from another host would cross the
    // network in clear, token or not.
    if !peer.ip().is_loopback() {
        metrics::counter!(names::ADMIN_REFUSED).increment(1);
        warn!(%peer, "refused a gossip key sent from another host");
        return Err((
            StatusCode::FORBIDDEN,
            "keys are installed from the node's own host only (tandem keyring install \
             --admin http://127.0.0.1:PORT): over the network the key would travel in clear\n"
                .into(),
        ));
    }
    let text = request
        .key
        .as_deref()
        .ok_or_else(|| bad_request("the body needs the \"key\" (base64)"))?;
    let id = state
        .keyring
        .install(ClusterKey::parse(text).map_err(bad_request)?);
    info!(key = %id, "gossip key installed");
    Ok(Json(state.keyring.view()))
}

async fn use_key(
    State(state): State<AdminState>,
    Json(request): Json<KeyringRequest>,
) -> KeyringReply {
    let id = key_id(&request)?;
    state.keyring.use_key(id).map_err(bad_request)?;
    info!(key = %id, "gossip is sealed with this key from now on");
    Ok(Json(state.keyring.view()))
}

async fn remove_key(
    State(state): State<AdminState>,
    Json(request): Json<KeyringRequest>,
) -> KeyringReply {
    let id = key_id(&request)?;
    state.keyring.remove(id).map_err(bad_request)?;
    info!(key = %id, "gossip key removed");
    Ok(Json(state.keyring.view()))
}

async fn accept_plain(
    State(state): State<AdminState>,
    Json(request): Json<KeyringRequest>,
) -> KeyringReply {
    let accept = request
        .accept
        .ok_or_else(|| bad_request("the body needs \"accept\": true or false"))?;
    state.keyring.accept_plain(accept).map_err(bad_request)?;
    if accept {
        warn!("unsealed gossip is accepted again");
    } else {
        info!("unsealed gossip is refused from now on");
    }
    Ok(Json(state.keyring.view()))
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
