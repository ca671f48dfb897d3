//! Protection: what this agent publishes in gossip and metrics about its partner, its
//! protection, the transport in use and the snapshot it receives.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tandem_common::schema::{NodeState, ReplTransport};

use super::{Inner, names};

impl Inner {
    /// Publishes the partner, protection and sync status in gossip and metrics.
    ///
    /// The values are read when the update runs, not when it was asked for, so updates
    /// that overtake each other still leave the latest state published.
    pub(super) fn publish_protection(self: &Arc<Self>) {
        let inner = self.clone();
        tokio::spawn(async move {
            let Some(gossip) = inner.gossip.clone() else {
                return;
            };
            let updater = inner.clone();
            gossip
                .update(Box::new(move |advert| {
                    let inner = updater;
                    let state = inner.state.lock();
                    let partner = state.link.as_ref().map(|l| l.partner.clone());
                    let (lagging, multicasting) =
                        state.link.as_ref().map_or((false, false), |link| {
                            let core = link.shared.core.lock();
                            (core.lagging(), core.multicasting())
                        });
                    let unprotected = partner.is_none() || lagging;
                    metrics::gauge!(names::UNPROTECTED).set(if unprotected { 1.0 } else { 0.0 });
                    metrics::gauge!(names::PAIRED).set(if partner.is_some() { 1.0 } else { 0.0 });
                    let transport = partner.as_ref().map(|_| {
                        if multicasting {
                            ReplTransport::Multicast
                        } else {
                            ReplTransport::Quic
                        }
                    });
                    for kind in [ReplTransport::Quic, ReplTransport::Multicast] {
                        metrics::gauge!(names::TRANSPORT, "transport" => kind.to_string())
                            .set(if transport == Some(kind) { 1.0 } else { 0.0 });
                    }
                    advert.partner = partner;
                    advert.unprotected = unprotected;
                    advert.transport = transport;
                    // Only a serving node moves between syncing and ready.
                    if matches!(advert.state, NodeState::Ready | NodeState::Syncing) {
                        advert.state = if inner.syncing.load(Ordering::Relaxed) {
                            NodeState::Syncing
                        } else {
                            NodeState::Ready
                        };
                    }
                }))
                .await;
        });
    }

    pub(super) fn set_syncing(self: &Arc<Self>, syncing: bool) {
        self.syncing.store(syncing, Ordering::Relaxed);
        self.publish_protection();
    }
}
