//! Pairing: each round turns the pure pairing decision into a proposal, a link put in
//! place with its tasks, or a link ended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tandem_common::frame::Frame;
use tandem_common::pairing::{AgentView, PairingDecision, decide};
use tandem_common::schema::{NodeState, PartnerRef, Protocol, Role};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::anti_entropy::Exchange;
use super::link::{self, LinkMulticast};
use super::proto::{CoreConfig, LinkCore};
use super::transport::{Channel, TransportError};
use super::{Inner, Link, LinkShared, ReplicationMode, names};

impl Inner {
    /// One round: read the view, decide, act.
    pub(super) async fn pairing_round(self: &Arc<Self>) {
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let members = gossip.members().await;
        let view: Vec<AgentView> = members
            .iter()
            .filter(|m| m.role == Some(Role::Agent))
            .map(|m| AgentView {
                id: m.id.clone(),
                live: m.live,
                state: m.state.unwrap_or(NodeState::Joining),
                ha_on: m.ha.is_none_or(|ha| ha.on),
                partner: m.partner.clone(),
                subnet: m.subnet.as_ref().map(|s| s.cidr.clone()),
                protocol: m.protocol.unwrap_or(Protocol::FIRST),
            })
            .collect();
        let repl_addrs: HashMap<&str, Option<&String>> = members
            .iter()
            .map(|m| (m.id.as_str(), m.repl.as_ref()))
            .collect();
        let my_partner = self.state.lock().link.as_ref().map(|l| l.partner.clone());
        match decide(&self.config.node_id, my_partner.as_ref(), &view) {
            PairingDecision::Keep { .. } => {
                self.state.lock().confirming_since = None;
            }
            PairingDecision::Confirming { partner } => {
                let expired = {
                    let mut state = self.state.lock();
                    let since = *state
                        .confirming_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    since.elapsed() > self.config.confirm_timeout
                };
                if expired {
                    warn!(%partner, "the partner never advertised this pair; abandoning it");
                    self.drop_link(None, "pair not confirmed");
                }
            }
            PairingDecision::Unpair { partner } => {
                info!(%partner, "HA is switched off: ending the pair; the sessions stay here");
                self.drop_link(None, "HA switched off");
            }
            PairingDecision::PartnerLost { partner } => {
                warn!(%partner, "partner lost; its sessions are served here from now on");
                metrics::counter!(names::FAILOVERS).increment(1);
                self.drop_link(None, "partner lost");
            }
            PairingDecision::Propose { to } => {
                let addr = repl_addrs
                    .get(to.as_str())
                    .copied()
                    .flatten()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                let Some(addr) = addr else {
                    debug!(%to, "no replication address for the agent to pair with yet");
                    return;
                };
                {
                    let mut state = self.state.lock();
                    if state.proposing.is_some() || state.link.is_some() {
                        return;
                    }
                    state.proposing = Some(to.clone());
                }
                let inner = self.clone();
                tokio::spawn(async move {
                    if let Err(error) = inner.propose(&to, addr).await {
                        info!(%to, %error, "pair proposal not accepted");
                    }
                    inner.state.lock().proposing = None;
                });
            }
            PairingDecision::Alone => {
                let mut state = self.state.lock();
                if !state.said_alone {
                    state.said_alone = true;
                    warn!("no lone agent to pair with: serving unprotected until one appears");
                }
            }
            PairingDecision::AwaitProposal { .. } | PairingDecision::Ineligible => {}
        }
    }

    /// Makes `channel` the link to `partner`, which speaks `protocol`, unless another link
    /// won the race.
    pub(super) fn install_link(
        self: &Arc<Self>,
        channel: Channel,
        partner: PartnerRef,
        protocol: Protocol,
    ) {
        // What both sides speak decides what the link uses, whichever side decides.
        let protocol = self.config.protocol.common(protocol);
        let id = self.next_link_id.fetch_add(1, Ordering::Relaxed);
        // The partner gets every cached script, and then each new one.
        let scripts = protocol >= Protocol::SCRIPTS;
        let cached = self
            .scripts
            .get()
            .filter(|_| scripts)
            .map(|cache| cache.bodies())
            .unwrap_or_default();
        let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
        {
            let mut state = self.state.lock();
            if state.link.is_some() {
                warn!(partner = %partner.node_id, "already paired; dropping the second link");
                return;
            }
            // Before the snapshot reads the store, and with the state locked until the link
            // is in place: a write is either in the snapshot, or recorded and handed to the
            // link as its hold of the store ends (the store's sink).
            let Channel {
                sender, receiver, ..
            } = channel;
            let (inbox_tx, inbox_rx) = mpsc::channel(link::INBOX);
            let (anti_entropy_tx, anti_entropy_rx) = mpsc::channel(Exchange::INBOX);
            let multicast = LinkMulticast::new(partner.epoch, &self.config.node_id, inbox_tx);
            let core = LinkCore::new(CoreConfig {
                mode: self.config.mode,
                sync_timeout: self.config.sync_timeout,
                datagram_header: multicast.header_len(),
                multicast_window: self.multicast.as_ref().map(|socket| socket.recv_window()),
            });
            let shared = Arc::new(LinkShared {
                core: Mutex::new(core),
                outbound: outbound_tx,
                acked: link::AckSignal::default(),
                multicast,
                anti_entropy: anti_entropy_tx,
                snapshot_keys: AtomicU64::new(0),
                unsent: Mutex::default(),
                mutations_sent: self.mutations_sent.clone(),
                lag: (self.config.mode == ReplicationMode::Async).then(|| self.lag.clone()),
                delta_bases: protocol >= Protocol::DELTA_BASES,
            });
            self.store.set_sink(Some(shared.clone()));
            let writer =
                tokio::spawn(
                    self.clone()
                        .write_frames(id, shared.clone(), sender, outbound_rx),
                );
            let reader =
                tokio::spawn(
                    self.clone()
                        .read_frames(id, shared.clone(), receiver, inbox_rx),
                );
            let timer = tokio::spawn(self.clone().time_out_waits(shared.clone()));
            let snapshot = tokio::spawn(self.clone().send_snapshot(id, partner.node_id.clone()));
            let probe = tokio::spawn(
                self.clone()
                    .probe_multicast(shared.clone(), partner.node_id.clone()),
            );
            if !cached.is_empty() {
                let _ = shared
                    .outbound
                    .send(Frame::Scripts { bodies: cached }.into());
            }
            // One side of the pair starts the comparisons; both answer them.
            let starts = self.config.node_id < partner.node_id;
            let anti_entropy = tokio::spawn(self.clone().anti_entropy(
                shared.outbound.clone(),
                anti_entropy_rx,
                starts,
                protocol >= Protocol::DELTA_BASES,
            ));
            let tasks = vec![writer, reader, timer, snapshot, probe, anti_entropy];
            state.link = Some(Link {
                id,
                partner: partner.clone(),
                shared,
                scripts,
                tasks,
            });
            state.confirming_since = None;
            state.said_alone = false;
        }
        // Syncing until the partner's whole snapshot has arrived.
        self.syncing.store(true, Ordering::Relaxed);
        metrics::counter!(names::PAIRS_FORMED).increment(1);
        info!(partner = %partner.node_id, epoch = partner.epoch, "paired; sending a snapshot");
        self.publish_protection();
    }

    /// Ends the link `id` (or whatever link runs, for `None`) and becomes lone.
    pub(super) fn drop_link(self: &Arc<Self>, id: Option<u64>, reason: &str) {
        let dropped = {
            let mut state = self.state.lock();
            match &state.link {
                Some(link) if id.is_none_or(|id| id == link.id) => {
                    state.confirming_since = None;
                    self.store.set_sink(None);
                    state.link.take()
                }
                _ => None,
            }
        };
        if let Some(link) = dropped {
            info!(partner = %link.partner.node_id, %reason, "replication link closed");
            self.syncing.store(false, Ordering::Relaxed);
            self.publish_snapshot(None);
            // Dropping the link aborts its tasks; from a task of its own, after this returns.
            tokio::spawn(async move { drop(link) });
            self.publish_protection();
        }
    }

    /// The link `id` failed while doing `what` (`read frame`, `write frame` …): logged
    /// with its cause, counted by reason, and dropped.
    pub(super) fn link_failed(self: &Arc<Self>, id: u64, what: &str, error: &TransportError) {
        let partner = self
            .state
            .lock()
            .link(id)
            .map(|link| link.partner.node_id.clone());
        if let Some(partner) = partner {
            warn!(
                %partner,
                reason = error.reason(),
                "replication link to {partner} failed: {what}: {error}"
            );
            metrics::counter!(names::LINK_FAILURES, "reason" => error.reason()).increment(1);
            self.drop_link(Some(id), "link failed");
        }
    }
}
