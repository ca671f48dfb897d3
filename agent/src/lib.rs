//! The Tandem agent: runs beside an app server, joins the cluster and (in later layers)
//! holds and replicates the app's sessions.

pub mod store;

use tandem_cluster::{NodeRuntime, StartError};
use tandem_common::config::AgentConfig;
use tandem_common::schema::{NodeAdvert, Role};
use tracing::info;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("app URL {url:?}: {reason}")]
    AppUrl { url: String, reason: &'static str },
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
    let runtime = NodeRuntime::start(&config.node, advert).await?;
    info!(node_id = %runtime.gossip.node_id(), app = ?config.app_url, "agent started");
    runtime.run_until_stopped().await;
    Ok(())
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
