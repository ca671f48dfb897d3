//! The Tandem balancer: joins the cluster, derives sticky routes from gossip, and proxies
//! users' HTTP requests to the agents' apps.

pub mod proxy;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tandem_cluster::{NodeRuntime, PreparedNode, StartError, stopped};
use tandem_common::config::BalancerConfig;
use tandem_common::routing::RoutingTable;
use tandem_common::schema::{NodeAdvert, NodeState, Role};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::proxy::{MAX_HEADER_BYTES, Proxy, ProxySettings};

/// The balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("listen address {addr}/tcp")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cookie secret file {path}")]
    Secret {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cookie secret file {0} is empty")]
    EmptySecret(std::path::PathBuf),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The route cookie secret: from the file, or random (`true`: balancers with different
/// secrets do not honour each other's cookies, which the caller warns about once started).
fn cookie_secret(config: &BalancerConfig) -> Result<(Vec<u8>, bool), BalancerError> {
    match &config.cookie_secret_file {
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| BalancerError::Secret {
                path: path.clone(),
                source,
            })?;
            let secret = text.trim_ascii().to_vec();
            if secret.is_empty() {
                return Err(BalancerError::EmptySecret(path.clone()));
            }
            Ok((secret, false))
        }
        None => Ok((rand::random::<[u8; 32]>().to_vec(), true)),
    }
}

/// Runs a balancer until SIGTERM or SIGINT.
///
/// # Errors
/// [`BalancerError`] when the configuration is invalid or an address cannot be bound.
pub async fn run(config: BalancerConfig) -> Result<(), BalancerError> {
    let (secret, random_secret) = cookie_secret(&config)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| BalancerError::Listen {
                addr: config.listen,
                source,
            })?;
    let proxy = Proxy::new(ProxySettings {
        cookie_name: config.cookie_name.clone(),
        cookie_secret: secret,
        cookie_max_age: config.cookie_max_age,
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        max_body_bytes: config.max_body_bytes,
    });
    let routes = axum::Router::new()
        .route("/v1/routes", axum::routing::get(routes_json))
        .route(
            "/status",
            axum::routing::get(|| async { axum::response::Html(STATUS_PAGE) }),
        )
        .with_state(proxy.clone());
    let prepared = PreparedNode::prepare(&config.node)
        .await?
        .with_admin_routes(routes);
    let mut advert = NodeAdvert::new(Role::Balancer, tandem_common::VERSION);
    advert.state = NodeState::Joining;
    let runtime = prepared.start(advert).await?;
    if random_secret {
        warn!(
            "no --cookie-secret-file: route cookies are signed with a random secret that \
             other balancers (and this one after a restart) will not accept"
        );
    }
    let refresher = spawn_table_refresh(&runtime, proxy.clone());
    info!(node_id = %runtime.gossip.node_id(), listen = %config.listen, "balancer started");
    let server = tokio::spawn(serve(listener, proxy, runtime.stopping()));
    runtime.run_until_stopped().await;
    refresher.abort();
    let _ = server.await;
    Ok(())
}

/// The live topology page (`GET /status` on the admin port): it polls `/v1/members` and
/// `/v1/routes` every second and draws pairs side by side.
const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /v1/routes`: the routing table this balancer uses now.
async fn routes_json(
    axum::extract::State(proxy): axum::extract::State<Arc<Proxy>>,
) -> axum::Json<serde_json::Value> {
    let table = proxy.table();
    let backends: Vec<_> = table.backends().collect();
    axum::Json(serde_json::json!({ "backends": backends }))
}

/// Rebuilds the routing table from the gossip view every gossip interval; the proxy reads
/// whichever table is current without a lock.
fn spawn_table_refresh(runtime: &NodeRuntime, proxy: Arc<Proxy>) -> tokio::task::JoinHandle<()> {
    let gossip = runtime.gossip.clone();
    let interval = gossip.tuning().gossip_interval;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let members = gossip.members().await;
            proxy.set_table(RoutingTable::build(&members));
        }
    })
}

/// Accepts users until `stop` turns true; open connections finish their requests.
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Read buffers may hold a full request head plus pipelined bytes.
    builder
        .http1()
        .max_buf_size(4 * MAX_HEADER_BYTES)
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(request, remote).await) }
            });
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                debug!(%remote, error = %err, "user connection ended with an error");
            }
        });
    }
}
