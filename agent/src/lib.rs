//! The Tandem agent: runs beside an app server, joins the cluster and (in later layers)
//! holds and replicates the app's sessions.

pub mod api;
pub mod demo_app;
pub mod replication;
pub mod resp;
pub mod scripting;
pub mod sessions;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use tandem_cluster::{PreparedNode, StartError};
use tandem_common::config::{AgentConfig, MulticastMode};
use tandem_common::schema::{NodeAdvert, ReplTransport, Role, Subnet};
use tandem_common::secret::read_secret_file;
use tracing::{info, warn};

use crate::api::ApiServer;
use crate::demo_app::DemoApp;
use crate::replication::multicast::{self, Multicast, MulticastConfig};
use crate::replication::tls::{NodeTls, TlsError};
use crate::replication::transport::{QuicTransport, Transport, TransportError};
use crate::replication::{REPROBE_AFTER, ReplicationConfig, ReplicationMode, Replicator};
use crate::resp::{RespLimits, RespServer};
use crate::sessions::Sessions;
use crate::store::{Limits, SessionStore, SystemClock};

/// How often the agent publishes its session count and replication lag in gossip.
const SESSIONS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("app URL {url:?}: {reason}")]
    AppUrl { url: String, reason: &'static str },
    #[error(transparent)]
    Bind(#[from] tandem_cluster::net::BindError),
    #[error("TLS material in {dir}")]
    Tls {
        dir: std::path::PathBuf,
        #[source]
        source: TlsError,
    },
    #[error("replication endpoint on {addr}/udp")]
    Replication {
        addr: SocketAddr,
        #[source]
        source: TransportError,
    },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Secret(#[from] tandem_common::secret::SecretError),
    #[error(transparent)]
    Scripting(#[from] scripting::ScriptingError),
}

/// Runs an agent until SIGTERM or SIGINT.
///
/// # Errors
/// [`AgentError`] when the configuration is invalid or an address cannot be bound.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let mut advert = NodeAdvert::new(Role::Agent, tandem_common::VERSION);
    advert.protocol = config.node.protocol;
    if let Some(url) = &config.app_url {
        check_app_url(url)?;
        advert.app = Some(url.clone());
    }
    let limits = Limits {
        max_value_bytes: usize::try_from(config.max_value_bytes).unwrap_or(usize::MAX),
        max_memory_bytes: config
            .max_memory_bytes
            .map_or_else(default_memory_limit, |bytes| {
                usize::try_from(bytes).unwrap_or(usize::MAX)
            }),
        max_keys: usize::try_from(config.max_keys).unwrap_or(usize::MAX),
        databases: config.databases.clamp(1, store::keyspace::MAX_DATABASES),
    };
    let store = SessionStore::new(&config.node.node_id, limits, SystemClock)
        .with_busy_threshold(config.script_time_limit);
    let scripts =
        scripting::Scripts::new(usize::try_from(config.script_memory_bytes).unwrap_or(usize::MAX))?;

    // Every listener is bound before the node joins, so a port in use fails start-up.
    let secret = |what, path: &Option<std::path::PathBuf>| {
        path.as_deref()
            .map(|path| read_secret_file(what, path))
            .transpose()
    };
    let password = secret("RESP password", &config.requirepass_file)?;
    let api_token = secret("HTTP session API token", &config.api_token_file)?;
    let resp = RespServer::bind(
        config.resp_addr,
        RespLimits {
            max_clients: config.max_clients,
            ..RespLimits::for_value_limit(limits.max_value_bytes)
        },
        password,
    )
    .await?;
    let api = ApiServer::bind(config.api_addr, limits.max_value_bytes, api_token).await?;
    let repl_socket =
        std::net::UdpSocket::bind(config.repl_addr).map_err(|source| AgentError::Replication {
            addr: config.repl_addr,
            source: TransportError::Io(source),
        })?;
    let demo = match config.demo_app {
        Some(addr) => Some(DemoApp::bind(addr).await?),
        None => None,
    };
    let prepared = PreparedNode::prepare(&config.node).await?;
    // The recorder is installed now.
    register_metrics();
    // Certificates last: a start that fails for another reason creates nothing.
    let tls = NodeTls::load(&config.tls_dir, &config.node.node_id, true).map_err(|source| {
        AgentError::Tls {
            dir: config.tls_dir.clone(),
            source,
        }
    })?;
    let transport = QuicTransport::from_socket(repl_socket, &tls).map_err(|source| {
        AgentError::Replication {
            addr: config.repl_addr,
            source,
        }
    })?;
    let repl_bound = transport.local_addr();
    // Listeners on 0.0.0.0 are advertised at the node's gossip address.
    let node_ip = prepared.advertise_ip();
    advert.repl = Some(reachable(repl_bound, node_ip).to_string());
    if config.app_url.is_none()
        && let Some(addr) = demo.as_ref().and_then(|d| d.local_addr().ok())
    {
        advert.app = Some(format!("http://{}", reachable(addr, node_ip)));
    }
    let multicast = join_multicast(&config, node_ip);
    if multicast.is_some() {
        advert.subnet = Some(Subnet {
            cidr: String::new(),
            multicast: true,
        });
    }
    let runtime = prepared.start(advert).await?;
    info!(
        node_id = %runtime.gossip.node_id(),
        app = ?runtime.gossip.advert().app,
        max_memory_bytes = limits.max_memory_bytes,
        "agent started"
    );
    let replicator = Replicator::new(
        ReplicationConfig {
            node_id: config.node.node_id.clone(),
            cluster: config.node.cluster.clone(),
            mode: match config.replication {
                tandem_common::config::ReplicationMode::Sync => ReplicationMode::Sync,
                tandem_common::config::ReplicationMode::Async => ReplicationMode::Async,
            },
            sync_timeout: config.sync_timeout,
            // A pair half-formed for longer than a few detection times is abandoned.
            confirm_timeout: config.node.gossip.gossip_interval * 25,
            anti_entropy_interval: config.anti_entropy_interval,
            reprobe_after: REPROBE_AFTER,
            protocol: config.node.protocol,
        },
        store.clone(),
        Some(std::sync::Arc::new(transport)),
        Some(std::sync::Arc::new(runtime.gossip.clone())),
    );
    let replicator = match multicast {
        Some(multicast) => replicator.with_multicast(multicast),
        None => replicator,
    };
    // Scripts are kept on the partner too: EVALSHA works there after a failover.
    replicator.share_scripts(std::sync::Arc::new(scripts.clone()));
    {
        // Handed over by a task: a script is loaded with the keyspace held, and the link's
        // state is taken before the keyspace when a pair forms.
        let (replicator, runtime) = (replicator.clone(), tokio::runtime::Handle::current());
        scripts.on_new_script(move |body| {
            let replicator = replicator.clone();
            runtime.spawn(async move { replicator.share_script(body) });
        });
    }
    let replication_tasks = replicator.spawn(config.node.gossip.gossip_interval);
    let sessions = Sessions::new(store.clone(), replicator.clone());
    let sweeper = store.spawn_sweeper();
    tokio::spawn(resp.serve(sessions.clone(), scripts, runtime.stopping()));
    tokio::spawn(api.serve(sessions.clone(), runtime.stopping()));
    if let Some(demo) = demo {
        tokio::spawn(demo.serve(sessions.clone(), runtime.gossip.clone(), runtime.stopping()));
    }
    let publisher = {
        let (gossip, store, replicator) =
            (runtime.gossip.clone(), store.clone(), replicator.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SESSIONS_PUBLISH_INTERVAL);
            loop {
                ticker.tick().await;
                store.gate().idle().await;
                let sessions = store.stats().0 as u64;
                let lag = replicator.lag();
                gossip
                    .update(|advert| {
                        advert.sessions = sessions;
                        advert.lag = lag;
                    })
                    .await;
            }
        })
    };
    // Draining, the agent leaves once its partner holds all it has.
    runtime
        .run_until_stopped(replicator.partner_caught_up())
        .await;
    publisher.abort();
    sweeper.abort();
    for task in replication_tasks {
        task.abort();
    }
    Ok(())
}

/// Joins the subnet's multicast group on the interface of the node's address, when
/// multicast is on; without it (an IPv6 address, no multicast route) pairs use QUIC.
fn join_multicast(config: &AgentConfig, node_ip: std::net::IpAddr) -> Option<Multicast> {
    if config.multicast == MulticastMode::Off {
        return None;
    }
    let std::net::IpAddr::V4(interface) = node_ip else {
        info!(%node_ip, "multicast replication needs an IPv4 address; using QUIC");
        return None;
    };
    let group = config
        .multicast_group
        .unwrap_or_else(|| multicast::default_group(&config.node.cluster));
    let settings = MulticastConfig {
        group,
        port: config.multicast_port,
        interface,
    };
    match Multicast::bind(settings) {
        Ok(multicast) => {
            info!(%group, port = config.multicast_port, %interface, "joined the subnet's multicast group");
            Some(multicast)
        }
        Err(err) => {
            warn!(%group, port = config.multicast_port, %interface, error = %err,
                "cannot join the multicast group; partners replicate over QUIC");
            None
        }
    }
}

/// An address other hosts can use for a listener bound to `bound`: an unspecified IP is
/// replaced by the node's own.
fn reachable(bound: SocketAddr, node_ip: std::net::IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(node_ip, bound.port())
    } else {
        bound
    }
}

/// A quarter of the host's memory (from /proc/meminfo), or 1 GiB where that is unknown.
fn default_memory_limit() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        });
    total_kib.map_or(1 << 30, |kib| kib.saturating_mul(1024) / 4)
}

/// Balancers proxy to this URL, so it must be an absolute http(s) URL with a host.
fn check_app_url(url: &str) -> Result<(), AgentError> {
    let bad = |reason| AgentError::AppUrl {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    if authority.contains(char::is_whitespace) {
        return Err(bad("host contains white space"));
    }
    Ok(())
}

/// Registers every metric of the agent, so that `/metrics` lists each from the start (an
/// alert on `increase()` or `rate()` sees the first event); values already counted stay.
pub fn register_metrics() {
    use replication::names as repl;
    use resp::names as resp;
    for counter in [
        repl::MUTATIONS_SENT,
        repl::MUTATIONS_RECEIVED,
        repl::BYTES_SENT,
        repl::SYNC_TIMEOUTS,
        repl::FAILOVERS,
        repl::PAIRS_FORMED,
        repl::SNAPSHOT_KEYS_SENT,
        repl::SNAPSHOT_KEYS_RECEIVED,
        repl::REFUSED,
        repl::ANTI_ENTROPY_ROUNDS,
        repl::REPAIRED_KEYS,
        repl::REPAIR_KEYS_SENT,
        repl::DIVERGED_KEYS,
        repl::MULTICAST_SENT,
        repl::MULTICAST_RECEIVED,
        resp::COMMANDS,
        resp::PROTOCOL_ERRORS,
        resp::REFUSED,
        resp::AUTH_FAILURES,
        resp::OVERSIZED,
        crate::resp::pubsub::names::MESSAGES,
        crate::resp::pubsub::names::OVERFLOWS,
        scripting::names::SCRIPTS,
        scripting::names::KILLED,
        store::names::MUTATIONS,
        store::names::EXPIRED,
        api::UNAUTHORIZED,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for reason in ["missing", "timeout"] {
        metrics::counter!(repl::MULTICAST_RETRANSMITS, "reason" => reason).increment(0);
    }
    for reason in replication::transport::TransportError::REASONS {
        metrics::counter!(repl::LINK_FAILURES, "reason" => reason).increment(0);
    }
    for dropped in replication::multicast::Dropped::ALL {
        metrics::counter!(repl::MULTICAST_DROPPED, "reason" => dropped.label()).increment(0);
    }
    for transport in [ReplTransport::Quic, ReplTransport::Multicast] {
        metrics::gauge!(repl::TRANSPORT, "transport" => transport.to_string()).set(0.0);
    }
    for gauge in [
        repl::UNPROTECTED,
        repl::PAIRED,
        repl::LAG,
        resp::CONNECTIONS,
        store::names::KEYS,
        store::names::USED_BYTES,
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_urls() {
        for good in [
            "http://10.0.0.5:8000",
            "https://app.example/base",
            "http://h",
        ] {
            assert!(check_app_url(good).is_ok(), "{good}");
        }
        for bad in [
            "10.0.0.5:8000",
            "ftp://h",
            "http://",
            "http:///x",
            "http://a b",
        ] {
            assert!(check_app_url(bad).is_err(), "{bad}");
        }
    }
}
