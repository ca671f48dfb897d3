//! The Tandem agent: runs beside an app server, joins the cluster and (in later layers)
//! holds and replicates the app's sessions.

pub mod api;
pub mod demo_app;
pub mod resp;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use tandem_cluster::{NodeRuntime, StartError};
use tandem_common::config::AgentConfig;
use tandem_common::schema::{NodeAdvert, Role};
use tracing::info;

use crate::api::{ApiBindError, ApiServer};
use crate::demo_app::{DemoApp, DemoBindError};
use crate::resp::{RespBindError, RespLimits, RespServer};
use crate::store::{Limits, SessionStore, SystemClock};

/// How often the agent publishes its session count in gossip.
const SESSIONS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("app URL {url:?}: {reason}")]
    AppUrl { url: String, reason: &'static str },
    #[error(transparent)]
    Resp(#[from] RespBindError),
    #[error(transparent)]
    Api(#[from] ApiBindError),
    #[error(transparent)]
    Demo(#[from] DemoBindError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs an agent until SIGTERM or SIGINT.
///
/// # Errors
/// [`AgentError`] when the configuration is invalid or an address cannot be bound.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let mut advert = NodeAdvert::new(Role::Agent, tandem_common::VERSION);
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
    };
    let store = SessionStore::new(&config.node.node_id, limits, SystemClock);

    // Every listener is bound before the node joins, so a port in use fails start-up.
    let resp = RespServer::bind(
        config.resp_addr,
        RespLimits::for_value_limit(limits.max_value_bytes),
    )
    .await?;
    let api = ApiServer::bind(config.api_addr, limits.max_value_bytes).await?;
    let demo = match config.demo_app {
        Some(addr) => Some(DemoApp::bind(addr).await?),
        None => None,
    };
    if advert.app.is_none()
        && let Some(demo) = &demo
        && let Ok(addr) = demo.local_addr()
    {
        advert.app = Some(format!(
            "http://{}",
            reachable(addr, config.node.advertise_addr)
        ));
    }

    let runtime = NodeRuntime::start(&config.node, advert).await?;
    info!(
        node_id = %runtime.gossip.node_id(),
        app = ?runtime.gossip.advert().app,
        max_memory_bytes = limits.max_memory_bytes,
        "agent started"
    );
    let sweeper = store.spawn_sweeper();
    tokio::spawn(resp.serve(store.clone(), runtime.stopping()));
    tokio::spawn(api.serve(store.clone(), runtime.stopping()));
    if let Some(demo) = demo {
        tokio::spawn(demo.serve(store.clone(), runtime.gossip.clone(), runtime.stopping()));
    }
    let publisher = {
        let (gossip, store) = (runtime.gossip.clone(), store.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SESSIONS_PUBLISH_INTERVAL);
            loop {
                ticker.tick().await;
                let sessions = store.stats().0 as u64;
                gossip.update(|advert| advert.sessions = sessions).await;
            }
        })
    };
    runtime.run_until_stopped().await;
    publisher.abort();
    sweeper.abort();
    Ok(())
}

/// An address other hosts can use for a listener bound to `bound`: an unspecified IP is
/// replaced by the advertised one (or loopback when none is configured).
fn reachable(bound: SocketAddr, advertise: Option<SocketAddr>) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = advertise.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip());
    SocketAddr::new(ip, bound.port())
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
