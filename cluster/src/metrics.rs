//! The Prometheus recorder and the names of the metrics this crate records.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names. Every Tandem metric starts with `tandem_`.
pub mod names {
    /// Gauge: cluster members by `role` and `liveness` (`live`, `dead`).
    pub const MEMBERS: &str = "tandem_members";
    /// Gauge: 1 for this process, labelled with `node_id`, `role`, `version`.
    pub const NODE_INFO: &str = "tandem_node_info";
    /// Gauge: 1 for this process's current `state`, 0 for the others.
    pub const NODE_STATE: &str = "tandem_node_state";
    /// Gauge: 1 while the cluster-wide HA switch is on (as this node knows it).
    pub const HA_ON: &str = "tandem_ha_on";
    /// Gauge: 1 while this process drains (from the drain call or signal until it exits).
    pub const DRAINING: &str = "tandem_draining";
    /// Counter: membership changes seen, by `event` (`joined`, `died`, `refused` for a
    /// node of an incompatible protocol).
    pub const MEMBER_EVENTS: &str = "tandem_member_events_total";
    pub const GOSSIP_MESSAGES_SENT: &str = "tandem_gossip_messages_sent_total";
    pub const GOSSIP_BYTES_SENT: &str = "tandem_gossip_bytes_sent_total";
    pub const GOSSIP_MESSAGES_RECEIVED: &str = "tandem_gossip_messages_received_total";
    pub const GOSSIP_BYTES_RECEIVED: &str = "tandem_gossip_bytes_received_total";
    pub const GOSSIP_SEND_ERRORS: &str = "tandem_gossip_send_errors_total";
    /// Counter: failed receives on the gossip socket (gossip goes on).
    pub const GOSSIP_RECV_ERRORS: &str = "tandem_gossip_recv_errors_total";
    /// Counter: gossip datagrams refused, by `reason` (`unsealed`, `unknown_key`,
    /// `forged`, `malformed`; `too_large` for messages too big to send once sealed).
    pub const GOSSIP_REFUSED: &str = "tandem_gossip_refused_total";
    /// Counter: state-changing admin calls refused (no or a wrong token, not loopback).
    pub const ADMIN_REFUSED: &str = "tandem_admin_refused_total";
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Registers every metric of this crate, so that `/metrics` lists each from the start
/// (an alert on `increase()` sees the first event); values already counted stay.
pub fn register() {
    use names::*;
    for event in ["joined", "died", "refused"] {
        metrics::counter!(MEMBER_EVENTS, "event" => event).increment(0);
    }
    for name in [
        GOSSIP_MESSAGES_SENT,
        GOSSIP_BYTES_SENT,
        GOSSIP_MESSAGES_RECEIVED,
        GOSSIP_BYTES_RECEIVED,
        GOSSIP_SEND_ERRORS,
        GOSSIP_RECV_ERRORS,
        ADMIN_REFUSED,
    ] {
        metrics::counter!(name).increment(0);
    }
    // The keyring's refusals, and the transport's own: undecodable, too large to send.
    let keyring = crate::keyring::Refused::ALL.map(crate::keyring::Refused::label);
    for reason in keyring.into_iter().chain(["malformed", "too_large"]) {
        metrics::counter!(GOSSIP_REFUSED, "reason" => reason).increment(0);
    }
    for gauge in [HA_ON, DRAINING] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
///
/// # Errors
/// When another metrics recorder was installed first.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    register();
    Ok(HANDLE.get_or_init(|| handle).clone())
}
