//! The Tandem balancer: joins the cluster and derives sticky routes from gossip.

use tandem_cluster::{NodeRuntime, StartError};
use tandem_common::config::BalancerConfig;
use tandem_common::schema::{NodeAdvert, Role};
use tracing::{info, warn};

/// The balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs a balancer until SIGTERM or SIGINT.
///
/// # Errors
/// [`BalancerError`] when the configuration is invalid or an address cannot be bound.
pub async fn run(config: BalancerConfig) -> Result<(), BalancerError> {
    let advert = NodeAdvert::new(Role::Balancer, tandem_common::VERSION);
    let runtime = NodeRuntime::start(&config.node, advert).await?;
    info!(node_id = %runtime.gossip.node_id(), "balancer started");
    warn!(listen = %config.listen, "this build does not proxy user traffic yet; the listen address is not served");
    runtime.run_until_stopped().await;
    Ok(())
}
