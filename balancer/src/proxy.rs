//! The reverse proxy: sticky routing by signed cookie, failover to the partner, passive
//! health, streaming bodies and upgrades (WebSocket) passed through.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tandem_cluster::keyring::Keyring;
use tandem_common::cookie::{self, RouteCookie};
use tandem_common::routing::{Route, RouteReason, RoutingTable};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::body::{BodyLimits, ClientBody, ClientFault};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Largest request head (headers, names and values together) accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Requests with a body up to this size are kept so they can be sent again to the partner.
const REPLAYABLE_BODY: u64 = 64 * 1024;
/// How long a node this balancer could not reach is avoided before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// Most nodes one request is tried on.
const MAX_ATTEMPTS: usize = 3;
/// Requests carrying this header may be retried after they were sent: the app promises to
/// apply each key once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header naming the node that served the request.
pub const NODE_HEADER: &str = "x-tandem-node";
const NODE_HEADER_NAME: HeaderName = HeaderName::from_static(NODE_HEADER);

/// Metric names of the proxy.
pub mod names {
    /// Counter: requests answered, by `node` and status `class` (2xx…5xx).
    pub const REQUESTS: &str = "tandem_proxy_requests_total";
    /// Histogram: seconds until the app server's response headers arrived.
    pub const UPSTREAM_SECONDS: &str = "tandem_proxy_upstream_seconds";
    /// Counter: requests sent to another node than their cookie's.
    pub const FAILOVERS: &str = "tandem_proxy_failovers_total";
    /// Counter: attempts repeated on another node after an error.
    pub const RETRIES: &str = "tandem_proxy_retries_total";
    /// Counter: user connections refused, by `reason` (`max_connections`,
    /// `max_connections_per_client`, `proxy_protocol`).
    pub const CONNECTIONS_REFUSED: &str = "tandem_proxy_connections_refused_total";
    /// Counter: routing table rebuilds.
    pub const TABLE_REBUILDS: &str = "tandem_proxy_route_table_rebuilds_total";
    /// Counter: nodes marked down by this balancer after a connect failure.
    pub const MARKED_DOWN: &str = "tandem_proxy_nodes_marked_down_total";
}

/// Registers every metric of the proxy, so that `/metrics` lists each from the start;
/// values already counted stay. (Requests by app node appear as nodes do.)
pub fn register_metrics() {
    for counter in [
        names::FAILOVERS,
        names::RETRIES,
        names::TABLE_REBUILDS,
        names::MARKED_DOWN,
    ] {
        metrics::counter!(counter).increment(0);
    }
    // The balancer's own answers: the user's faults and its 5xx.
    for class in ["4xx", "5xx"] {
        metrics::counter!(names::REQUESTS, "node" => "none", "class" => class).increment(0);
    }
    let _ = metrics::histogram!(names::UPSTREAM_SECONDS);
}

/// The secrets route cookies are signed with: the first signs, any verifies.
pub struct CookieSecrets {
    /// Where the secrets come from when they follow the cluster's keys.
    keyring: Option<Arc<Keyring>>,
    current: ArcSwap<Secrets>,
}

struct Secrets {
    /// The keyring generation they were derived at.
    generation: u64,
    list: Vec<Vec<u8>>,
}

impl CookieSecrets {
    /// One secret, from a file (or random).
    pub fn fixed(secret: Vec<u8>) -> Self {
        CookieSecrets {
            keyring: None,
            current: ArcSwap::from_pointee(Secrets {
                generation: 0,
                list: vec![secret],
            }),
        }
    }

    /// Secrets derived from the cluster's keys, following their rotation: a cookie signed
    /// with a key still installed is honoured (and signed again with the primary's).
    pub fn derived(keyring: Arc<Keyring>) -> Self {
        let secrets = CookieSecrets {
            keyring: Some(keyring),
            current: ArcSwap::from_pointee(Secrets {
                generation: u64::MAX,
                list: Vec::new(),
            }),
        };
        secrets.get();
        secrets
    }

    fn get(&self) -> Arc<Secrets> {
        let current = self.current.load_full();
        let Some(keyring) = &self.keyring else {
            return current;
        };
        let generation = keyring.generation();
        if generation == current.generation {
            return current;
        }
        let list = keyring
            .derive_all(COOKIE_PURPOSE)
            .iter()
            .map(|s| s.to_vec())
            .collect();
        let fresh = Arc::new(Secrets { generation, list });
        self.current.store(fresh.clone());
        fresh
    }
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = if self.keyring.is_some() {
            "derived"
        } else {
            "fixed"
        };
        write!(f, "CookieSecrets({source})")
    }
}

/// What the cookie secret derived from a cluster key is for.
const COOKIE_PURPOSE: &str = "route-cookie";

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub cookie_name: String,
    pub cookie_secrets: Arc<CookieSecrets>,
    pub cookie_max_age: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How large a request body may be, and how slowly it may arrive.
    pub body: BodyLimits,
    /// Users connect over TLS: cookies are `Secure`, `X-Forwarded-Proto` is `https`.
    pub tls: bool,
}

/// Why an attempt failed, and whether the request may go to another node.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    /// Nothing was sent: always safe to retry elsewhere.
    #[error("connect to {node}: {reason}")]
    Connect { node: String, reason: String },
    /// The request may have reached the app: retry only when that is harmless.
    #[error("{node} failed after the request was sent: {reason}")]
    AfterSend { node: String, reason: String },
    #[error("{node} did not answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    /// The node died (per gossip) while the request waited for it: its partner has the
    /// session; retry there when that is harmless.
    #[error("{node} died while answering")]
    NodeGone { node: String },
}

/// The shared state of the proxy.
pub struct Proxy {
    settings: ProxySettings,
    table: ArcSwap<RoutingTable>,
    /// Nodes this balancer could not reach, until when.
    down: ArcSwap<HashMap<String, Instant>>,
    /// Users this balancer placed since the table was last rebuilt, by node: spreads a
    /// burst of new users arriving within one gossip interval.
    placements: Mutex<HashMap<String, u64>>,
    /// Request counters by node and status class, registered when a node first appears.
    counters: ArcSwap<HashMap<String, [metrics::Counter; 5]>>,
    /// Registered once: a registry lookup per request costs more than the recording.
    upstream_seconds: metrics::Histogram,
    /// Told each time the routing table changes: a request waiting for a node that
    /// vanished without a word (power, network) leaves it as soon as gossip declares it
    /// dead, instead of after the whole request timeout, with no timer of its own.
    table_changed: tokio::sync::watch::Sender<()>,
}

thread_local! {
    /// One upstream pool per serving thread: a request and its upstream connection stay on
    /// the thread that accepted the user's connection.
    static CLIENT: std::cell::OnceCell<Client<ResetOnClose, Body>> = const { std::cell::OnceCell::new() };
}

fn upstream_client(connect_timeout: Duration) -> Client<ResetOnClose, Body> {
    CLIENT.with(|cell| {
        cell.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .build(ResetOnClose(connector))
        })
        .clone()
    })
}

/// Upstream connections that are reset, not shut down, when the balancer closes them
/// (`SO_LINGER` 0, as HAProxy's `option nolinger`). A request the balancer gave up on (its
/// node was declared dead, or it timed out) and sent to the partner instead may still sit
/// unsent in the connection's buffer; closed normally, the kernel would keep sending it
/// and deliver it once the network comes back, a late write on a stale copy of the
/// session that would then be newer than the partner's. A reset drops it. Connections
/// closed in the normal course are idle ones leaving the pool, and upgraded ones once both
/// sides have ended them: nothing is waiting in them to be lost.
#[derive(Clone)]
struct ResetOnClose(HttpConnector);

impl tower_service::Service<Uri> for ResetOnClose {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?;
            if let Err(err) = stream.inner().set_zero_linger() {
                debug!(error = %err, "cannot make an upstream connection reset on close");
            }
            Ok(stream)
        })
    }
}

impl Proxy {
    pub fn new(settings: ProxySettings) -> Arc<Self> {
        Arc::new(Proxy {
            settings,
            table: ArcSwap::from_pointee(RoutingTable::default()),
            down: ArcSwap::from_pointee(HashMap::new()),
            placements: Mutex::new(HashMap::new()),
            counters: ArcSwap::from_pointee(HashMap::new()),
            upstream_seconds: metrics::histogram!(names::UPSTREAM_SECONDS),
            table_changed: tokio::sync::watch::Sender::new(()),
        })
    }

    /// The current table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Swaps in a new table (when membership changed).
    pub fn set_table(&self, table: RoutingTable) {
        if **self.table.load() != table {
            let missing: Vec<String> = table
                .backends()
                .map(|b| b.id.clone())
                .filter(|id| !self.counters.load().contains_key(id))
                .collect();
            if !missing.is_empty() {
                let mut counters = (**self.counters.load()).clone();
                for node in missing {
                    let counter = |class: &'static str| metrics::counter!(names::REQUESTS, "node" => node.clone(), "class" => class);
                    let set = [
                        counter("1xx"),
                        counter("2xx"),
                        counter("3xx"),
                        counter("4xx"),
                        counter("5xx"),
                    ];
                    counters.insert(node, set);
                }
                self.counters.store(Arc::new(counters));
            }
            self.table.store(Arc::new(table));
            self.placements.lock().clear();
            metrics::counter!(names::TABLE_REBUILDS).increment(1);
            self.table_changed.send_replace(());
        }
    }

    fn is_down(&self, node: &str) -> bool {
        self.down
            .load()
            .get(node)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Whether gossip still has `node` serving (live and taking users).
    fn serves(&self, node: &str) -> bool {
        self.table.load().backend(node).is_some_and(|b| b.usable)
    }

    fn mark_down(&self, node: &str) {
        warn!(%node, "app server unreachable: sending its users to the partner");
        metrics::counter!(names::MARKED_DOWN).increment(1);
        let until = Instant::now() + DOWN_FOR;
        self.down.rcu(|current| {
            let mut next: HashMap<String, Instant> = current
                .iter()
                .filter(|(_, until)| Instant::now() < **until)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            next.insert(node.to_string(), until);
            next
        });
    }

    fn route(&self, cookie: Option<&RouteCookie>, excluded: &HashSet<String>) -> Option<Route> {
        let table = self.table.load();
        let down = |id: &str| excluded.contains(id) || self.is_down(id);
        // The placement counts are read only when a user is placed: a sticky request takes
        // no lock.
        let load = |b: &tandem_common::routing::Backend| {
            b.sessions + self.placements.lock().get(&b.id).copied().unwrap_or(0)
        };
        let route = table.route(cookie, down, load)?;
        if route.reason == RouteReason::Placed {
            *self
                .placements
                .lock()
                .entry(route.node.clone())
                .or_default() += 1;
        }
        Some(route)
    }

    /// Handles one request from a user.
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Body> {
        let head_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if head_bytes > MAX_HEADER_BYTES {
            return text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large\n",
            );
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let secrets = self.settings.cookie_secrets.get();
        // The cookie, and whether it was signed with the secret that signs now.
        let (cookie, current_secret) = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|value| cookie::find(value, &self.settings.cookie_name))
            .and_then(|value| {
                secrets.list.iter().enumerate().find_map(|(i, secret)| {
                    let max_age = self.settings.cookie_max_age.as_secs();
                    RouteCookie::decode(value, secret, now, max_age).map(|c| (c, i == 0))
                })
            })
            .unzip();
        let resign = current_secret == Some(false);
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.settings.body.max_bytes) {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let upgrade = is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let retry_after_send =
            is_idempotent(request.method()) || request.headers().contains_key(IDEMPOTENCY_KEY);
        let (mut parts, body) = request.into_parts();
        // HTTP/2 carries the host in the URI (`:authority`); apps read it from `Host`.
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        prepare_headers(&mut parts.headers, remote, upgrade, self.settings.tls);
        // Apps speak HTTP/1.1 whatever the user spoke; the pool keeps the connections open.
        parts.version = hyper::Version::HTTP_11;

        // A small body is kept so that the request can be repeated on the partner.
        let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let client_fault = Arc::new(Mutex::new(None));
        let body = ClientBody::new(body, self.settings.body, client_fault.clone());
        let mut replay: Option<Bytes> = None;
        let mut stream: Option<ClientBody> = None;
        if !chunked && declared.unwrap_or(0) <= REPLAYABLE_BODY {
            match body.collect().await {
                Ok(collected) => replay = Some(collected.to_bytes()),
                Err(_) => {
                    let fault = client_fault.lock().unwrap_or(ClientFault::Malformed);
                    return fault.answer(remote);
                }
            }
        } else {
            stream = Some(body);
        }

        let mut excluded = HashSet::new();
        let mut last_error = None;
        for attempt in 0..MAX_ATTEMPTS {
            let Some(route) = self.route(cookie.as_ref(), &excluded) else {
                break;
            };
            let body: Body = match (&replay, stream.take()) {
                (Some(bytes), _) => Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed(),
                (None, Some(streamed)) => streamed.boxed(),
                // A streamed body was consumed by the first attempt; it cannot be repeated.
                (None, None) => break,
            };
            let mut upstream = Request::from_parts(parts.clone(), body);
            *upstream.uri_mut() = match upstream_uri(&route.app, &parts.uri) {
                Some(uri) => uri,
                None => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        "invalid app URL in the cluster view\n",
                    );
                }
            };
            if attempt > 0 {
                metrics::counter!(names::RETRIES).increment(1);
            }
            match self.send(&route, upstream).await {
                Ok(response) => {
                    if let RouteReason::Failover { from } = &route.reason {
                        debug!(%from, to = %route.node, "failover");
                        metrics::counter!(names::FAILOVERS).increment(1);
                    }
                    let mut response =
                        self.respond(response, &route, cookie.as_ref(), resign, &secrets, now);
                    if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        response = splice_upgrade(response, client_upgrade).await;
                    }
                    return response;
                }
                Err(_) if client_fault.lock().is_some() => break,
                Err(err) => {
                    let retry = match &err {
                        UpstreamError::Connect { .. } => {
                            self.mark_down(&route.node);
                            true
                        }
                        UpstreamError::AfterSend { .. }
                        | UpstreamError::Timeout { .. }
                        | UpstreamError::NodeGone { .. } => retry_after_send,
                    };
                    warn!(error = %err, retry, "upstream request failed");
                    excluded.insert(route.node.clone());
                    last_error = Some(err);
                    if !retry {
                        break;
                    }
                }
            }
        }
        let fault = *client_fault.lock();
        if let Some(fault) = fault {
            return fault.answer(remote);
        }
        // Answered by the balancer itself: counted with the apps' answers, as node `none`.
        metrics::counter!(names::REQUESTS, "node" => "none", "class" => "5xx").increment(1);
        match last_error {
            Some(UpstreamError::Timeout { .. }) => text(
                StatusCode::GATEWAY_TIMEOUT,
                "the app server did not answer in time\n",
            ),
            Some(err) => text(StatusCode::BAD_GATEWAY, &format!("{err}\n")),
            None => {
                let mut response = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no app server is available right now; retry shortly\n",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                response
            }
        }
    }

    async fn send(
        &self,
        route: &Route,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let answer = upstream_client(self.settings.connect_timeout).request(request);
        tokio::pin!(answer);
        let mut table_changed = self.table_changed.subscribe();
        let node_gone = async {
            while table_changed.changed().await.is_ok() {
                if !self.serves(&route.node) {
                    return;
                }
            }
            std::future::pending().await
        };
        let result = tokio::select! {
            biased;
            result = &mut answer => Ok(result),
            () = node_gone => return Err(UpstreamError::NodeGone { node: route.node.clone() }),
            () = tokio::time::sleep_until(deadline) => Err(()),
        };
        self.upstream_seconds
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is_connect() => Err(UpstreamError::Connect {
                node: route.node.clone(),
                reason: source_text(&err),
            }),
            Ok(Err(err)) => Err(UpstreamError::AfterSend {
                node: route.node.clone(),
                reason: source_text(&err),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                node: route.node.clone(),
                timeout: self.settings.request_timeout,
            }),
        }
    }

    /// The app's response, with the route cookie (re)written where needed: a new or moved
    /// route, a cookie half its age, or one signed with a secret that no longer signs.
    fn respond(
        &self,
        response: Response<Incoming>,
        route: &Route,
        cookie: Option<&RouteCookie>,
        resign: bool,
        secrets: &Secrets,
        now: u64,
    ) -> Response<Body> {
        // 1xx..5xx → 0..4, the order the counters were registered in.
        let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        if let Some(counters) = self.counters.load().get(&route.node) {
            counters[class].increment(1);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(
            &mut parts.headers,
            parts.status == StatusCode::SWITCHING_PROTOCOLS,
        );
        let refresh = match cookie {
            None => true,
            Some(cookie) => {
                resign
                    || cookie.node != route.node
                    || cookie.partner != route.partner
                    || now.saturating_sub(cookie.issued_at)
                        > self.settings.cookie_max_age.as_secs() / 2
            }
        };
        if refresh {
            let value = RouteCookie {
                node: route.node.clone(),
                partner: route.partner.clone(),
                issued_at: now,
            }
            .encode(&secrets.list[0]);
            let secure = if self.settings.tls { "; Secure" } else { "" };
            let set_cookie = format!(
                "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                self.settings.cookie_name,
                self.settings.cookie_max_age.as_secs()
            );
            if let Ok(value) = HeaderValue::from_str(&set_cookie) {
                parts.headers.append(header::SET_COOKIE, value);
            }
        }
        if let Ok(node) = HeaderValue::from_str(&route.node) {
            parts.headers.insert(NODE_HEADER_NAME, node);
        }
        Response::from_parts(parts, body.map_err(Into::into).boxed())
    }
}

/// Connects the user's upgraded connection with the app's (WebSocket and the like).
async fn splice_upgrade(
    response: Response<Body>,
    client: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let mut upstream_response = Response::from_parts(parts.clone(), ());
    let upstream = hyper::upgrade::on(&mut upstream_response);
    if let Some(client) = client {
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    if let Err(err) =
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        debug!(error = %err, "upgraded connection ended");
                    }
                }
                Err(err) => warn!(error = %err, "upgrade failed"),
            }
        });
    }
    Response::from_parts(parts, body)
}

fn source_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A plain-text response made by the balancer itself.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Hop-by-hop headers belong to one connection, not to the request.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && *name == header::UPGRADE))
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Headers that concern one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers and adds the X-Forwarded-* ones.
fn prepare_headers(headers: &mut HeaderMap, remote: SocketAddr, upgrade: bool, tls: bool) {
    let host = headers.get(header::HOST).cloned();
    // Keep the transfer-encoding decision to hyper: the body is re-framed for the app.
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    strip_hop_by_hop(headers, upgrade);
    if chunked {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// The app's URL for a request's path and query.
fn upstream_uri(app: &str, original: &Uri) -> Option<Uri> {
    let base = app.trim_end_matches('/');
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    format!("{base}{path}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uris_join_the_app_url_and_the_path() {
        let uri: Uri = "/api/counter?x=1".parse().unwrap();
        assert_eq!(
            upstream_uri("http://10.0.0.5:8000", &uri)
                .unwrap()
                .to_string(),
            "http://10.0.0.5:8000/api/counter?x=1"
        );
        assert_eq!(
            upstream_uri("http://h:1/base/", &uri).unwrap().to_string(),
            "http://h:1/base/api/counter?x=1"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        prepare_headers(
            &mut headers,
            "198.51.100.7:5000".parse().unwrap(),
            false,
            true,
        );
        assert!(headers.get("x-private").is_none() && headers.get("keep-alive").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 198.51.100.7");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    /// A closed upstream connection is reset, so that nothing left in its buffer reaches the
    /// app later: the app reads a reset, not the end of the stream.
    #[tokio::test]
    async fn upstream_connections_are_reset_when_closed() {
        use tokio::io::AsyncReadExt;
        use tower_service::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let mut connector = ResetOnClose(HttpConnector::new());
        let stream = connector.call(uri).await.unwrap();
        let (mut app, _) = listener.accept().await.unwrap();
        drop(stream);
        let mut buf = [0u8; 16];
        let read = app.read(&mut buf).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "the app saw the connection end normally"
        );
    }

    #[test]
    fn upgrades_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&headers));
        let mut kept = headers.clone();
        strip_hop_by_hop(&mut kept, true);
        assert!(kept.contains_key(header::UPGRADE));
        headers.remove(header::CONNECTION);
        assert!(!is_upgrade(&headers));
    }
}

#[cfg(test)]
mod cookie_secrets {
    use tandem_cluster::keyring::ClusterKey;

    use super::*;

    #[test]
    fn derived_secrets_follow_the_keyring_through_a_rotation() {
        let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
        let keyring = Arc::new(Keyring::new("c", vec![old.clone()]));
        let secrets = CookieSecrets::derived(keyring.clone());
        let list = |secrets: &CookieSecrets| secrets.get().list.clone();
        assert_eq!(list(&secrets), vec![old.derive(COOKIE_PURPOSE).to_vec()]);
        let cookie = RouteCookie {
            node: "agent-1".into(),
            partner: None,
            issued_at: 1_000,
        };
        let signed_before = cookie.encode(&list(&secrets)[0]);

        keyring.install(new.clone());
        keyring.use_key(new.id()).unwrap();
        let during = list(&secrets);
        assert_eq!(
            during[0],
            new.derive(COOKIE_PURPOSE).to_vec(),
            "the new key signs"
        );
        // A cookie from before the switch is still honoured, by the old key's secret.
        let verified = during
            .iter()
            .position(|s| RouteCookie::decode(&signed_before, s, 1_000, 60).is_some());
        assert_eq!(verified, Some(1));

        keyring.remove(old.id()).unwrap();
        assert_eq!(list(&secrets), vec![new.derive(COOKIE_PURPOSE).to_vec()]);
        // A fixed secret never changes.
        let fixed = CookieSecrets::fixed(b"a secret from a file".to_vec());
        assert_eq!(list(&fixed), vec![b"a secret from a file".to_vec()]);
    }
}
