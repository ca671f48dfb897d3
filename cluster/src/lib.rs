//! The runtime every Tandem process shares: gossip membership, the admin endpoint, metrics
//! and a drain on SIGTERM (or `POST /v1/drain`) before a graceful leave.

pub mod admin;
pub mod gossip;
pub mod keyring;
pub mod metrics;
pub mod net;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_common::config::NodeConfig;
use tandem_common::schema::{NodeAdvert, NodeState};
use tandem_common::secret::read_secret_file;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::admin::{AdminAuth, AdminNode, AdminServer};
use crate::gossip::{GossipNode, GossipSettings};
use crate::keyring::{ClusterKey, Keyring};

/// A process could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node id must not be empty")]
    EmptyNodeId,
    #[error("gossip address {0}: a fixed port is required (other nodes must know it)")]
    GossipPortZero(SocketAddr),
    #[error(transparent)]
    Seed(#[from] net::SeedError),
    #[error(transparent)]
    Bind(#[from] net::BindError),
    #[error(transparent)]
    Gossip(#[from] gossip::GossipError),
    #[error("metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("gossip key: {0}")]
    Key(#[from] keyring::KeyError),
    #[error(transparent)]
    AdminToken(#[from] tandem_common::secret::SecretError),
}

/// The cluster keys from the key file or the environment (the file wins).
fn load_keys(config: &NodeConfig) -> Result<Vec<ClusterKey>, StartError> {
    if let Some(path) = &config.gossip_key_file {
        return Ok(ClusterKey::read_file(path)?);
    }
    match &config.gossip_key {
        Some(text) => Ok(vec![ClusterKey::parse(text)?]),
        None => Ok(Vec::new()),
    }
}

/// Who may make state-changing admin calls: holders of the token in the file, or, without
/// one, callers on loopback.
fn load_admin_auth(config: &NodeConfig) -> Result<AdminAuth, StartError> {
    match &config.admin_token_file {
        Some(path) => Ok(AdminAuth::Token(read_secret_file("admin token", path)?)),
        None => Ok(AdminAuth::LoopbackOnly),
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in the caller's task.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Gossip rounds a draining node waits, advertising `draining`, before it settles: time
/// for every balancer to see it and send its users elsewhere.
const DRAIN_NOTICE_ROUNDS: u32 = 5;

/// A started process: in the cluster, serving its admin endpoint.
pub struct NodeRuntime {
    pub gossip: GossipNode,
    /// Where the admin endpoint actually listens.
    pub admin_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    drain_tx: watch::Sender<bool>,
    drain_timeout: Duration,
    admin_task: tokio::task::JoinHandle<std::io::Result<()>>,
    watch_task: tokio::task::JoinHandle<()>,
}

/// A node whose configuration is checked and whose admin endpoint is bound, not yet in
/// the cluster: components bind their own listeners between the two steps, so that any
/// error stops the process before it has joined or changed anything.
pub struct PreparedNode {
    config: NodeConfig,
    admin: AdminServer,
    admin_addr: SocketAddr,
    advertise_addr: SocketAddr,
    seeds: Vec<String>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    admin_routes: axum::Router,
    keyring: Arc<Keyring>,
    admin_auth: AdminAuth,
}

impl PreparedNode {
    /// Checks the node id and seeds and binds the admin endpoint.
    ///
    /// # Errors
    /// [`StartError`] for an invalid configuration, an unusable seed or an address in use.
    pub async fn prepare(config: &NodeConfig) -> Result<Self, StartError> {
        if config.node_id.trim().is_empty() {
            return Err(StartError::EmptyNodeId);
        }
        if config.gossip_addr.port() == 0 && config.advertise_addr.is_none() {
            return Err(StartError::GossipPortZero(config.gossip_addr));
        }
        let keyring = Arc::new(Keyring::new(&config.cluster, load_keys(config)?));
        let admin_auth = load_admin_auth(config)?;
        let prometheus = metrics::install()?;
        let resolved_seeds = net::resolve_seeds(&config.join).await?;
        let advertise_addr =
            net::advertise_addr(config.gossip_addr, config.advertise_addr, &resolved_seeds);
        // A node listed among its own seeds (a common, convenient configuration: the same
        // seed list on every host) does not wait for itself.
        let seeds = if resolved_seeds.iter().all(|seed| *seed == advertise_addr) {
            Vec::new()
        } else {
            config.join.clone()
        };
        let admin = AdminServer::bind(config.admin_addr).await?;
        let admin_addr = admin.local_addr().map_err(|source| net::BindError {
            what: "admin endpoint",
            addr: config.admin_addr,
            source,
        })?;
        Ok(PreparedNode {
            config: config.clone(),
            admin,
            admin_addr,
            advertise_addr,
            seeds,
            prometheus,
            admin_routes: axum::Router::new(),
            keyring,
            admin_auth,
        })
    }

    /// The keyring gossip is sealed with (other secrets are derived from its primary key).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Adds a component's own endpoints to the admin endpoint.
    pub fn with_admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = self.admin_routes.merge(routes);
        self
    }

    /// The IP other nodes reach this node at.
    pub fn advertise_ip(&self) -> std::net::IpAddr {
        self.advertise_addr.ip()
    }

    /// Joins gossip with `advert` (its `admin` and `subnet` are filled here, keeping the
    /// subnet's `multicast` flag if the caller set one) and serves the admin endpoint.
    ///
    /// # Errors
    /// The gossip address cannot be bound; signal handlers cannot be installed.
    pub async fn start(self, mut advert: NodeAdvert) -> Result<NodeRuntime, StartError> {
        let PreparedNode {
            config,
            admin,
            admin_addr,
            advertise_addr,
            seeds,
            prometheus,
            admin_routes,
            keyring,
            admin_auth,
        } = self;
        let config = &config;
        let admin_advertised = if admin_addr.ip().is_unspecified() {
            SocketAddr::new(advertise_addr.ip(), admin_addr.port())
        } else {
            admin_addr
        };
        advert.admin = Some(admin_advertised.to_string());
        // The caller says whether it joined the subnet's multicast group.
        let multicast = advert.subnet.as_ref().is_some_and(|s| s.multicast);
        advert.subnet = net::subnet_of(advertise_addr.ip()).map(|mut subnet| {
            subnet.multicast = multicast;
            subnet
        });

        let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;

        let gossip = GossipNode::start(
            GossipSettings {
                node_id: config.node_id.clone(),
                cluster: config.cluster.clone(),
                listen_addr: config.gossip_addr,
                advertise_addr,
                seeds,
                tuning: config.gossip.clone(),
                keyring: keyring.clone(),
            },
            advert,
        )
        .await?;
        let watch_task = gossip.spawn_watch();

        let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
        let (drain_tx, _) = watch::channel(false);
        let admin_shutdown = {
            let mut rx = shutdown_rx.clone();
            async move { stopped(&mut rx).await }
        };
        if keyring.primary().is_none() {
            warn!(
                "gossip is not sealed: anyone who reaches the gossip port can join the cluster \
                 and change what its nodes see; create a key with `tandem keygen` and pass it \
                 with --gossip-key-file"
            );
        }
        if admin_auth == AdminAuth::LoopbackOnly {
            warn!(
                "no --admin-token-file: state-changing admin calls are accepted from loopback \
                 only, without authentication"
            );
        }
        let admin_task = tokio::spawn(admin.serve(
            AdminNode {
                gossip: gossip.clone(),
                metrics: prometheus,
                keyring,
                drain: drain_tx.clone(),
            },
            admin_routes,
            admin_auth,
            admin_shutdown,
        ));
        info!(admin = %admin_addr, "admin endpoint listening");

        // The first signal drains the node; a second one stops it at once.
        let (signal_drain, signal_stop) = (drain_tx.clone(), shutdown_tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = terminate.recv() => info!("SIGTERM received"),
                    _ = interrupt.recv() => info!("SIGINT received"),
                    _ = stopped(&mut shutdown_rx) => return,
                }
                if *signal_drain.borrow() {
                    warn!("stopping at once, without waiting for the drain to end");
                    let _ = signal_stop.send(true);
                    return;
                }
                let _ = signal_drain.send(true);
            }
        });

        Ok(NodeRuntime {
            gossip,
            admin_addr,
            shutdown_tx,
            drain_tx,
            drain_timeout: config.drain_timeout,
            admin_task,
            watch_task,
        })
    }
}

impl NodeRuntime {
    /// A receiver that turns `true` when the process is asked to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Asks the node to drain, as SIGTERM does.
    pub fn drain(&self) {
        let _ = self.drain_tx.send(true);
    }

    /// Runs until the node is asked to drain (SIGTERM, SIGINT, `POST /v1/drain`), then
    /// drains: advertises `draining` so that balancers send its users elsewhere, waits a few
    /// gossip rounds for them to see it, runs `settle` (the component's own last duties),
    /// all within the drain timeout; then leaves the cluster and stops the servers. A second
    /// signal cuts the drain short.
    pub async fn run_until_stopped(self, settle: impl Future<Output = ()>) {
        let mut stop = self.stopping();
        let mut drain = self.drain_tx.subscribe();
        tokio::select! {
            () = stopped(&mut drain) => {}
            () = stopped(&mut stop) => {}
        }
        if !*stop.borrow() {
            ::metrics::gauge!(crate::metrics::names::DRAINING).set(1.0);
            info!(
                timeout = ?self.drain_timeout,
                "draining: balancers send no new users here, and this node's users go on at \
                 its partner"
            );
            self.gossip
                .update(|advert| advert.state = NodeState::Draining)
                .await;
            let notice = self.gossip.tuning().gossip_interval * DRAIN_NOTICE_ROUNDS;
            let drain = async {
                tokio::time::sleep(notice).await;
                settle.await;
            };
            tokio::select! {
                done = tokio::time::timeout(self.drain_timeout, drain) => {
                    if done.is_err() {
                        warn!(timeout = ?self.drain_timeout, "the drain did not finish in time; leaving anyway");
                    } else {
                        info!("drained");
                    }
                }
                () = stopped(&mut stop) => {}
            }
        }
        self.gossip.leave().await;
        let _ = self.shutdown_tx.send(true);
        self.watch_task.abort();
        match self.admin_task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(error = %err, "admin endpoint failed"),
            Err(err) => warn!(error = %err, "admin endpoint task failed"),
        }
        info!("stopped");
    }
}
