//! The Tandem balancer: joins the cluster, derives sticky routes from gossip, and proxies
//! users' HTTP requests to the agents' apps.

mod admission;
mod body;
pub mod proxy;
mod proxy_protocol;
mod user_stream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tandem_cluster::keyring::Keyring;
use tandem_cluster::net::ConnectionLimit;
use tandem_cluster::{NodeRuntime, PreparedNode, StartError, stopped};
use tandem_common::config::BalancerConfig;
use tandem_common::routing::RoutingTable;
use tandem_common::schema::{NodeAdvert, NodeState, Role};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::body::BodyLimits;
use crate::proxy::{CookieSecrets, MAX_HEADER_BYTES, Proxy, ProxySettings};
use crate::user_stream::UserStream;

/// The balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("listen address {addr}/tcp")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] tandem_common::secret::SecretError),
    #[error("TLS certificate or key {path}: {reason}")]
    Tls {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "no route cookie secret: give the balancer the cluster key (--gossip-key-file) or \
         --cookie-secret-file, or every restart would move its users away from their sessions"
    )]
    NoCookieSecret,
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The route cookie secrets: from the file, else derived from the cluster keys (following
/// their rotation). Without either there is none the balancers of a cluster, or this one
/// after a restart, would agree on, and the balancer refuses to start.
fn cookie_secrets(
    config: &BalancerConfig,
    keyring: &Arc<Keyring>,
) -> Result<CookieSecrets, BalancerError> {
    match &config.cookie_secret_file {
        Some(path) => {
            let secret = tandem_common::secret::read_secret_file("route cookie secret", path)?;
            Ok(CookieSecrets::fixed(secret.into_bytes()))
        }
        None if keyring.primary().is_some() => Ok(CookieSecrets::derived(keyring.clone())),
        None => Err(BalancerError::NoCookieSecret),
    }
}

/// The TLS configuration for users' connections: the certificate chain and key from PEM
/// files, HTTP/2 and HTTP/1.1 offered by ALPN.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, BalancerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &std::path::Path, reason: String| BalancerError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| bad(cert, err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| bad(cert, err.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|err| bad(key, err.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| bad(cert, err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|err| bad(cert, err.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Runs a balancer until SIGTERM or SIGINT.
///
/// # Errors
/// [`BalancerError`] when the configuration is invalid or an address cannot be bound.
pub async fn run(config: BalancerConfig) -> Result<(), BalancerError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listen_error = |source| BalancerError::Listen {
        addr: config.listen,
        source,
    };
    let first_listener = bind_shared(config.listen).map_err(listen_error)?;
    let prepared = PreparedNode::prepare(&config.node).await?;
    // The recorder is installed now.
    proxy::register_metrics();
    let secrets = cookie_secrets(&config, prepared.keyring())?;
    let proxy = Proxy::new(ProxySettings {
        cookie_name: config.cookie_name.clone(),
        cookie_secrets: Arc::new(secrets),
        cookie_max_age: config.cookie_max_age,
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        body: BodyLimits {
            max_bytes: config.max_body_bytes,
            min_rate: config.min_body_rate,
            grace: config.header_timeout,
        },
        tls: tls.is_some(),
    });
    let routes = axum::Router::new()
        .route("/v1/routes", axum::routing::get(routes_json))
        .route(
            "/status",
            axum::routing::get(|| async { axum::response::Html(STATUS_PAGE) }),
        )
        .with_state(proxy.clone());
    let prepared = prepared.with_admin_routes(routes);
    let mut advert = NodeAdvert::new(Role::Balancer, tandem_common::VERSION);
    advert.state = NodeState::Joining;
    let runtime = prepared.start(advert).await?;
    let refresher = spawn_table_refresh(&runtime, proxy.clone());
    info!(node_id = %runtime.gossip.node_id(), listen = %config.listen, "balancer started");
    // One serving thread per core, each with its own listener on the same address
    // (SO_REUSEPORT), its own single-threaded runtime and its own upstream pool: a request
    // never changes threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One admission for every serving thread.
    let admission = Admission::new(
        ConnectionLimit::new(config.max_connections),
        config.max_connections_per_client,
        config.header_timeout,
    );
    let mut listeners = vec![first_listener];
    for _ in 1..threads {
        listeners.push(bind_shared(config.listen).map_err(listen_error)?);
    }
    let servers: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let (tls, proxy, stop) = (tls.clone(), proxy.clone(), runtime.stopping());
            let admission = admission.clone();
            let proxy_protocol = config.proxy_protocol;
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a single-threaded runtime");
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                serve(listener, tls, proxy, admission, proxy_protocol, stop).await
                            }
                            Err(err) => warn!(error = %err, "proxy thread could not listen"),
                        }
                    });
                })
        })
        .collect::<Result<_, _>>()
        .map_err(listen_error)?;
    runtime.run_until_stopped(async {}).await;
    refresher.abort();
    for server in servers {
        let _ = tokio::task::spawn_blocking(move || server.join()).await;
    }
    Ok(())
}

/// A listening socket on `addr` that other sockets of this process may share
/// (SO_REUSEPORT: the kernel spreads connections over them).
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
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
    axum::Json(serde_json::json!({ "backends": backends, "ha_on": table.ha_on() }))
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

/// How long a user's TLS handshake may take; slower ones are cut off.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every user connection of a serving thread shares.
struct Serving {
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    admission: Admission,
    /// Connections start with a PROXY protocol header naming the client.
    proxy_protocol: bool,
    http: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

/// Accepts users until `stop` turns true; open connections finish their requests.
async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    admission: Admission,
    proxy_protocol: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Read buffers may hold a full request head plus pipelined bytes.
    http.http1()
        .max_buf_size(4 * MAX_HEADER_BYTES)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(admission.header_timeout());
    http.http2().max_header_list_size(MAX_HEADER_BYTES as u32);
    let serving = Arc::new(Serving {
        tls,
        proxy,
        admission,
        proxy_protocol,
        http,
    });
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
        let plain = serving.tls.is_none();
        // Behind a PROXY header the client is known only once the header is read.
        let admitted = if serving.proxy_protocol {
            serving.admission.admit_any().map(Admitted::Pending)
        } else {
            serving.admission.admit(remote.ip()).map(Admitted::Client)
        };
        match admitted {
            Ok(admitted) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serving.clone().user(stream, remote, admitted));
            }
            Err(refusal) => refusal.answer(stream, plain),
        }
    }
}

/// A connection's admission so far.
enum Admitted {
    /// Its place among `--max-connections`; the client's place waits for its PROXY header.
    Pending(tokio::sync::OwnedSemaphorePermit),
    Client(admission::Admitted),
}

impl Serving {
    /// Serves one user connection to its end.
    async fn user(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, admitted: Admitted) {
        let header_timeout = self.admission.header_timeout();
        let (remote, rest, _admitted) = match admitted {
            Admitted::Client(admitted) => (peer, Vec::new(), admitted),
            Admitted::Pending(total) => {
                let accepted =
                    match proxy_protocol::read_header(&mut stream, peer, header_timeout).await {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            Refusal::ProxyHeader.counter().increment(1);
                            warn!(%peer, error = %err, "closed a connection: bad PROXY header");
                            return;
                        }
                    };
                match self.admission.admit_client(total, accepted.client.ip()) {
                    Ok(admitted) => (accepted.client, accepted.rest, admitted),
                    Err(refusal) => {
                        refusal.answer(stream, self.tls.is_none());
                        return;
                    }
                }
            }
        };
        let proxy = self.proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, remote).await) }
        });
        let served = match &self.tls {
            None => {
                let stream = UserStream::new(stream, rest, Some(header_timeout));
                self.http
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
            }
            Some(acceptor) => {
                let stream = UserStream::new(stream, rest, None);
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Err(_) => {
                        debug!(%remote, "TLS handshake took too long");
                        return;
                    }
                    Ok(Ok(stream)) => {
                        let stream = UserStream::new(stream, Vec::new(), Some(header_timeout));
                        self.http
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Ok(Err(err)) => {
                        debug!(%remote, error = %err, "TLS handshake failed");
                        return;
                    }
                }
            }
        };
        if let Err(err) = served {
            debug!(%remote, error = %err, "user connection ended with an error");
        }
    }
}
