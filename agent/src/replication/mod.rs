//! Replication: pairing with a partner and keeping its copy of our sessions current.
//!
//! Every agent is primary for the sessions its app writes and holds its partner's as a
//! replica. The pairing loop turns the pure decision of `tandem_common::pairing` into
//! actions; a link (one ordered channel per pair) carries each side's writes, as versioned
//! mutations, and a full snapshot when the pair forms. In sync mode a write is acknowledged
//! to the app only once the partner has applied it, or once the sync timeout has passed —
//! then the agent says it is unprotected rather than blocking the app.

#[cfg(test)]
mod conformance;
mod link;
pub mod membership;
#[cfg(test)]
pub mod memory;
pub mod multicast;
mod proto;
#[cfg(test)]
mod sim;
pub mod tls;
pub mod transport;

use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use parking_lot::Mutex;
use tandem_common::frame::{Frame, Writes};
use tandem_common::ops::Mutation;
use tandem_common::pairing::{AgentView, PairingDecision, decide};
use tandem_common::schema::{NodeState, PartnerRef, Protocol, ReplTransport, Role, SyncProgress};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::link::{Batch, LinkMulticast, Outgoing};
use self::membership::Membership;
use self::multicast::Multicast;
use self::proto::{Action, Arrived, CoreConfig, LinkCore, SNAPSHOT_WINDOW, Waited};
use self::transport::{Channel, FrameReceiver, FrameSender, Transport, TransportError};
use crate::store::keyspace::SHARDS;
use crate::store::{SessionStore, WriteSink};

/// Keys per snapshot frame.
const SNAPSHOT_CHUNK_KEYS: usize = 1_000;
/// About the most bytes of one snapshot or repair frame: the keys read at once are sent in
/// frames of about this size, far below the frame limit whatever their values' sizes.
const CHUNK_BYTES: usize = 8 << 20;
/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Multicast probes sent when a pair forms, this far apart, before giving up on it.
const PROBE_ATTEMPTS: usize = 10;
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// The default of [`ReplicationConfig::reprobe_after`].
pub const REPROBE_AFTER: Duration = Duration::from_secs(5);
/// The most the re-probe delay grows to, as a multiple of the first.
const REPROBE_MAX: u32 = 64;
/// Multicast that kept working this long resets the re-probe delay.
const MULTICAST_HEALTHY: Duration = Duration::from_secs(60);

/// When a write is acknowledged to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// Once the partner has applied it (or the sync timeout passed).
    Sync,
    /// At once; the partner catches up from a queue (lag is a metric).
    Async,
}

/// How replication behaves.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub node_id: String,
    pub cluster: String,
    pub mode: ReplicationMode,
    /// How long a sync write waits for the partner.
    pub sync_timeout: Duration,
    /// How long a pair may stay half-formed before it is abandoned.
    pub confirm_timeout: Duration,
    /// How often partners compare digests of their stores and repair differences.
    pub anti_entropy_interval: Duration,
    /// How long after multicast failed (an unanswered probe, a degraded path) a pair
    /// probes it again; doubled on each failure up to [`REPROBE_MAX`] times this.
    pub reprobe_after: Duration,
    /// The protocol this agent speaks (peers must be compatible).
    pub protocol: Protocol,
}

/// Metric names of replication.
pub mod names {
    /// Gauge: 1 while this agent has no partner or the partner is not keeping up.
    pub const UNPROTECTED: &str = "tandem_repl_unprotected";
    /// Gauge: 1 while paired.
    pub const PAIRED: &str = "tandem_repl_paired";
    /// Counter: mutations sent to the partner.
    pub const MUTATIONS_SENT: &str = "tandem_repl_mutations_sent_total";
    /// Counter: mutations received from the partner (applied or already known).
    pub const MUTATIONS_RECEIVED: &str = "tandem_repl_mutations_received_total";
    /// Counter: bytes of replication frames sent.
    pub const BYTES_SENT: &str = "tandem_repl_bytes_sent_total";
    /// Gauge: mutations sent but not yet acknowledged.
    pub const LAG: &str = "tandem_repl_lag_mutations";
    /// Counter: sync writes the partner did not acknowledge in time.
    pub const SYNC_TIMEOUTS: &str = "tandem_repl_sync_timeouts_total";
    /// Counter: partners lost (their sessions are now served here).
    pub const FAILOVERS: &str = "tandem_repl_failovers_total";
    /// Counter: pairs formed.
    pub const PAIRS_FORMED: &str = "tandem_repl_pairs_formed_total";
    /// Counter: snapshot keys sent / received.
    pub const SNAPSHOT_KEYS_SENT: &str = "tandem_repl_snapshot_keys_sent_total";
    pub const SNAPSHOT_KEYS_RECEIVED: &str = "tandem_repl_snapshot_keys_received_total";
    /// Counter: replication connections refused (wrong certificate, garbage).
    pub const REFUSED: &str = "tandem_repl_refused_total";
    /// Counter: links closed because of an error, by reason.
    pub const LINK_FAILURES: &str = "tandem_repl_link_failures_total";
    /// Counter: anti-entropy comparisons made.
    pub const ANTI_ENTROPY_ROUNDS: &str = "tandem_repl_anti_entropy_rounds_total";
    /// Counter: keys an anti-entropy repair changed.
    pub const REPAIRED_KEYS: &str = "tandem_repl_repaired_keys_total";
    /// Gauge by `transport` (`quic`, `multicast`): 1 for the one live writes take now.
    pub const TRANSPORT: &str = "tandem_repl_transport";
    /// Counter: frames sent by multicast (writes, acknowledgements and probes).
    pub const MULTICAST_SENT: &str = "tandem_repl_multicast_frames_sent_total";
    /// Counter: frames received from the partner by multicast.
    pub const MULTICAST_RECEIVED: &str = "tandem_repl_multicast_frames_received_total";
    /// Counter by `reason`: multicast datagrams dropped (`other_pair` is normal traffic of
    /// other pairs in the subnet; `unauthenticated`, `replayed`, `malformed` are not;
    /// `backlog`, the partner's frames arriving faster than they are applied; `before_key`,
    /// the partner's first datagram overtaking its key).
    pub const MULTICAST_DROPPED: &str = "tandem_repl_multicast_dropped_total";
    /// Counter by `reason`: multicast frames sent again over the stream, because the
    /// partner reported them missing (`missing`) or did not acknowledge them in time
    /// (`timeout`).
    pub const MULTICAST_RETRANSMITS: &str = "tandem_repl_multicast_retransmits_total";
}

/// Shared handle to this agent's replication. Cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

/// The agent's cache of Lua scripts, kept on the partner too.
pub trait ScriptCache: Send + Sync {
    /// Every script cached.
    fn bodies(&self) -> Vec<Bytes>;
    /// Adds the partner's scripts (without sending them back).
    fn learn(&self, bodies: Vec<Bytes>);
}

struct Inner {
    config: ReplicationConfig,
    store: SessionStore,
    transport: Option<Arc<dyn Transport>>,
    /// The subnet's multicast group, when this agent joined it.
    multicast: Option<Arc<Multicast>>,
    gossip: Option<Arc<dyn Membership>>,
    state: Mutex<PairState>,
    /// Sync writes that returned on the timeout rather than on the partner's ack.
    sync_timeouts: AtomicU64,
    /// Set from the moment a pair forms until the partner's whole snapshot has arrived.
    syncing: AtomicBool,
    /// How far the snapshot to the partner has come, while one is being sent.
    snapshot_progress: Mutex<Option<SyncProgress>>,
    next_link_id: AtomicU64,
    /// Registered once: every write and every frame counts.
    mutations_sent: metrics::Counter,
    mutations_received: metrics::Counter,
    lag: metrics::Gauge,
    /// The script cache shared with the partner, once the RESP endpoint has one.
    scripts: std::sync::OnceLock<Arc<dyn ScriptCache>>,
}

#[derive(Default)]
struct PairState {
    link: Option<Link>,
    /// The agent a proposal is in flight to.
    proposing: Option<String>,
    /// When we started waiting for our partner to advertise us back.
    confirming_since: Option<tokio::time::Instant>,
    /// Whether "alone" was already said (said once per lone period).
    said_alone: bool,
}

impl PairState {
    /// The link `id`, while it is the one running (a task of a replaced link finds none).
    fn link(&self, id: u64) -> Option<&Link> {
        self.link.as_ref().filter(|link| link.id == id)
    }
}

/// How a writer waiting for the partner is woken.
type Waker = oneshot::Sender<Waited>;

/// The running link to the partner.
struct Link {
    id: u64,
    partner: PartnerRef,
    shared: Arc<LinkShared>,
    /// Whether the partner keeps this agent's scripts (it speaks [`Protocol::SCRIPTS`]).
    scripts: bool,
    tasks: Vec<JoinHandle<()>>,
}

/// What the tasks of one link share.
///
/// Locks are taken in this order, never the other way: the replicator's `state`, the
/// store's keyspace, `core`, then `unsent`, the multicast sealer or opener (each alone).
/// The store hands a hold's writes to the link ([`WriteSink::record`]) with the keyspace
/// locked, so they reach `core` in the order they were made. No lock is held across an
/// `await`; the core's actions are performed after `core` is let go, except frames for
/// the writer, queued under the lock that orders them.
struct LinkShared {
    /// The order of replication: numbers, acknowledgements, waiting writers, paths.
    core: Mutex<LinkCore<Waker>>,
    /// Frames and live writes for the link's writer, in order.
    outbound: mpsc::UnboundedSender<Outgoing>,
    /// The latest acknowledgement, for the tasks that wait for one (the snapshot window,
    /// the writer holding a frame back).
    acked: watch::Sender<u64>,
    multicast: LinkMulticast,
    /// Keys of the partner's snapshot applied so far.
    snapshot_keys: AtomicU64,
    /// Datagrams of full frames made while the store was locked, to send after it: by
    /// the writer that filled them ([`Replicator::replicated`]) or the link's writer.
    unsent: Mutex<Vec<(u64, BytesMut)>>,
    mutations_sent: metrics::Counter,
    lag: Option<metrics::Gauge>,
}

impl WriteSink for LinkShared {
    fn record(&self, writes: &mut Writes) {
        let count = writes.len() as u64;
        let actions = {
            let mut core = self.core.lock();
            let actions = core.on_write(std::mem::take(writes), tokio::time::Instant::now());
            if let Some(lag) = &self.lag {
                lag.set(core.behind() as f64);
            }
            actions
        };
        self.mutations_sent.increment(count);
        for action in actions {
            match action {
                Action::Stream(outgoing) => {
                    let _ = self.outbound.send(outgoing);
                }
                Action::Datagram { seq, datagram } => self.unsent.lock().push((seq, datagram)),
                other => unreachable!("a write only sends: {other:?}"),
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.core.lock().close();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Replicator {
    /// Replication that never pairs: writes are local only (for front-end tests and for
    /// agents with HA switched off).
    pub fn disabled(store: SessionStore, node_id: &str) -> Self {
        Replicator::new(
            ReplicationConfig {
                node_id: node_id.to_string(),
                cluster: String::new(),
                mode: ReplicationMode::Async,
                sync_timeout: Duration::ZERO,
                confirm_timeout: Duration::ZERO,
                anti_entropy_interval: Duration::MAX,
                reprobe_after: REPROBE_AFTER,
                protocol: Protocol::CURRENT,
            },
            store,
            None,
            None,
        )
    }

    pub fn new(
        config: ReplicationConfig,
        store: SessionStore,
        transport: Option<Arc<dyn Transport>>,
        gossip: Option<Arc<dyn Membership>>,
    ) -> Self {
        // Lone until a link forms: nobody needs the writes as mutations.
        store.set_sink(None);
        Replicator {
            inner: Arc::new(Inner {
                config,
                store,
                transport,
                multicast: None,
                gossip,
                state: Mutex::new(PairState::default()),
                sync_timeouts: AtomicU64::new(0),
                syncing: AtomicBool::new(false),
                snapshot_progress: Mutex::new(None),
                next_link_id: AtomicU64::new(1),
                mutations_sent: metrics::counter!(names::MUTATIONS_SENT),
                mutations_received: metrics::counter!(names::MUTATIONS_RECEIVED),
                lag: metrics::gauge!(names::LAG),
                scripts: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Keeps `cache`'s scripts on the partner too.
    pub fn share_scripts(&self, cache: Arc<dyn ScriptCache>) {
        let _ = self.inner.scripts.set(cache);
    }

    /// Sends a script just added to the cache to the partner, if it keeps them.
    pub fn share_script(&self, body: Bytes) {
        let state = self.inner.state.lock();
        if let Some(link) = state.link.as_ref().filter(|link| link.scripts) {
            let _ = link
                .shared
                .outbound
                .send(Frame::Scripts { bodies: vec![body] }.into());
        }
    }

    /// Replicates live writes by multicast to partners in the subnet that answer a probe.
    ///
    /// # Panics
    /// When called after the replicator was cloned or spawned.
    #[must_use]
    pub fn with_multicast(mut self, multicast: Multicast) -> Self {
        let inner = Arc::get_mut(&mut self.inner)
            .expect("multicast is set before the replicator is shared");
        // This agent's own datagrams loop back to its socket; dropped in the kernel, they
        // cost no wake-up. Without the filter they are skipped on arrival.
        if let Err(err) = multicast.drop_own(&inner.config.node_id) {
            debug!(error = %err, "no socket filter for this agent's own multicast datagrams");
        }
        inner.multicast = Some(Arc::new(multicast));
        self
    }

    /// How many sync writes returned on the timeout instead of the partner's ack.
    pub fn sync_timeouts(&self) -> u64 {
        self.inner.sync_timeouts.load(Ordering::Relaxed)
    }

    /// The partner of the running link, if any.
    pub fn partner(&self) -> Option<PartnerRef> {
        self.inner
            .state
            .lock()
            .link
            .as_ref()
            .map(|l| l.partner.clone())
    }

    /// Called by a writer once its writes are made (they reached the link as the store's
    /// hold ended): sends the frame they closed, if any, and in sync mode returns once the
    /// partner has applied everything written so far, or the sync timeout passed. In
    /// async mode, returns at once unless the partner is too far behind.
    pub async fn replicated(&self) {
        let mut waiting = None;
        let unsent = {
            let state = self.inner.state.lock();
            let Some(link) = state.link.as_ref() else {
                return;
            };
            link.shared
                .core
                .lock()
                .wait(tokio::time::Instant::now(), || {
                    let (waker, waited) = oneshot::channel();
                    waiting = Some(waited);
                    waker
                });
            let has_unsent = !link.shared.unsent.lock().is_empty();
            has_unsent.then(|| link.shared.clone())
        };
        if let Some(shared) = unsent {
            self.inner.send_unsent(&shared);
        }
        if let Some(waiting) = waiting
            && waiting.await.is_err()
        {
            // The link closed while waiting; the pairing loop takes it from here.
            debug!("replication link closed during a sync write");
        }
    }

    /// Write batches sent to the partner and not yet acknowledged.
    pub fn lag(&self) -> u64 {
        let state = self.inner.state.lock();
        state
            .link
            .as_ref()
            .map_or(0, |link| link.shared.core.lock().behind())
    }

    /// Returns once the partner holds everything this agent has (the snapshot and every
    /// write so far acknowledged), or at once without a partner. Says what it waits for.
    pub async fn partner_caught_up(&self) {
        let mut last_report = tokio::time::Instant::now();
        loop {
            let waiting = {
                let state = self.inner.state.lock();
                state.link.as_ref().map(|link| {
                    let core = link.shared.core.lock();
                    (
                        link.partner.node_id.clone(),
                        core.caught_up(),
                        core.behind(),
                    )
                })
            };
            match waiting {
                None => {
                    warn!("no partner holds this agent's sessions: its users start anew elsewhere");
                    return;
                }
                Some((partner, true, _)) => {
                    info!(%partner, "the partner confirms it holds every session of this agent");
                    return;
                }
                Some((partner, false, behind)) => {
                    if last_report.elapsed() >= Duration::from_secs(1) {
                        info!(%partner, batches_unacknowledged = behind, "waiting for the partner to catch up");
                        last_report = tokio::time::Instant::now();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops pairing and closes the link (the agent is going away).
    pub fn shutdown(&self) {
        let link = {
            let mut state = self.inner.state.lock();
            self.inner.store.set_sink(None);
            state.link.take()
        };
        drop(link);
    }

    /// Starts accepting proposals and running the pairing loop.
    pub fn spawn(&self, interval: Duration) -> Vec<JoinHandle<()>> {
        let Some(transport) = self.inner.transport.clone() else {
            return Vec::new();
        };
        let accept = {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                loop {
                    match transport.accept().await {
                        Ok(channel) => {
                            let inner = inner.clone();
                            tokio::spawn(async move { inner.serve_proposal(channel).await });
                        }
                        Err(TransportError::Shutdown) => return,
                        Err(err) => warn!(error = %err, "accepting replication channels failed"),
                    }
                }
            })
        };
        let pairing = {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    inner.pairing_round().await;
                }
            })
        };
        self.inner.publish_protection();
        let mut tasks = vec![accept, pairing];
        if let Some(multicast) = self.inner.multicast.clone() {
            let inner = self.inner.clone();
            tasks.push(tokio::spawn(async move {
                inner.receive_multicast(multicast).await
            }));
        }
        tasks
    }
}

/// Whether the writer may hold the batch back: it only sends the pending frame, which is
/// small, and the partner has frames to acknowledge already (see [`LinkCore::may_hold`]).
fn may_hold(shared: &LinkShared, batch: &Batch) -> bool {
    batch
        .flush
        .filter(|_| batch.may_wait())
        .is_some_and(|first| shared.core.lock().may_hold(first))
}

/// `mutations` cut, in order, into frames of about [`CHUNK_BYTES`] each (a larger mutation
/// alone); one empty frame for none.
fn in_frames(mutations: Vec<Mutation>) -> Vec<Vec<Mutation>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = 0;
    for mutation in mutations {
        let size = mutation.encoded_size();
        if !frame.is_empty() && bytes + size > CHUNK_BYTES {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += size;
        frame.push(mutation);
    }
    if !frame.is_empty() || frames.is_empty() {
        frames.push(frame);
    }
    frames
}

fn malformed(reason: String) -> TransportError {
    TransportError::Frame(tandem_common::frame::FrameError::Malformed(reason))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    /// Publishes the partner, protection and sync status in gossip and metrics.
    ///
    /// The values are read when the update runs, not when it was asked for, so updates
    /// that overtake each other still leave the latest state published.
    fn publish_protection(self: &Arc<Self>) {
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

    fn hello(&self) -> Frame {
        Frame::Hello {
            protocol: self.config.protocol,
            cluster: self.config.cluster.clone(),
            node_id: self.config.node_id.clone(),
        }
    }

    /// Checks the peer's hello; returns its node id and protocol.
    fn check_hello(&self, frame: Frame) -> Result<(String, Protocol), String> {
        match frame {
            Frame::Hello {
                protocol,
                cluster,
                node_id,
            } => {
                if let Some(reason) = self.config.protocol.refusal(protocol) {
                    return Err(format!("peer {node_id} refused: {reason}"));
                }
                if cluster != self.config.cluster {
                    return Err(format!("peer {node_id} belongs to cluster {cluster:?}"));
                }
                Ok((node_id, protocol))
            }
            other => Err(format!("expected a hello, got {other:?}")),
        }
    }

    /// One round: read the view, decide, act.
    async fn pairing_round(self: &Arc<Self>) {
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
                    if let Err(reason) = inner.propose(&to, addr).await {
                        info!(%to, %reason, "pair proposal not accepted");
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

    /// Proposes a pair to `to` over a new channel.
    async fn propose(self: &Arc<Self>, to: &str, addr: SocketAddr) -> Result<(), String> {
        let transport = self.transport.clone().ok_or("replication is disabled")?;
        let mut channel = tokio::time::timeout(HANDSHAKE_TIMEOUT, transport.connect(to, addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|err| err.to_string())?;
        let epoch = now_ms();
        let exchange = async {
            channel.sender.send(&self.hello()).await?;
            channel.sender.send(&Frame::Propose { epoch }).await?;
            let hello = channel.receiver.recv().await?;
            let answer = channel.receiver.recv().await?;
            Ok::<_, TransportError>((hello, answer))
        };
        let (hello, answer) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|err| err.to_string())?;
        let (peer, protocol) = self.check_hello(hello)?;
        if peer != to {
            return Err(format!("reached {peer}, not {to}"));
        }
        match answer {
            Frame::Accept { epoch: accepted } if accepted == epoch => {
                self.install_link(
                    channel,
                    PartnerRef {
                        node_id: peer,
                        epoch,
                    },
                    protocol,
                );
                Ok(())
            }
            Frame::Reject { reason } => Err(reason),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Answers a proposal on an incoming channel.
    async fn serve_proposal(self: &Arc<Self>, mut channel: Channel) {
        let peer_addr = channel.peer;
        let exchange = async {
            let hello = channel.receiver.recv().await?;
            channel.sender.send(&self.hello()).await?;
            let proposal = channel.receiver.recv().await?;
            Ok::<_, TransportError>((hello, proposal))
        };
        let (hello, proposal) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
            Ok(Ok(frames)) => frames,
            Ok(Err(err)) => {
                warn!(peer = %peer_addr, error = %err, "replication handshake failed");
                return;
            }
            Err(_) => {
                warn!(peer = %peer_addr, "replication handshake timed out");
                return;
            }
        };
        let checked = self.check_hello(hello).and_then(|(peer, protocol)| {
            // The certificate, from the cluster CA, must be the claimed node's own: a node
            // cannot pose as another with its certificate.
            if channel.peer_is(&peer) {
                Ok((peer, protocol))
            } else {
                metrics::counter!(names::REFUSED).increment(1);
                Err(format!("the peer's certificate is not for {peer}"))
            }
        });
        let (peer, protocol) = match checked {
            Ok(checked) => checked,
            Err(reason) => {
                warn!(peer = %peer_addr, %reason, "refusing a replication peer");
                channel.refuse(reason).await;
                return;
            }
        };
        let Frame::Propose { epoch } = proposal else {
            warn!(%peer, "expected a pair proposal");
            return;
        };
        let available = {
            let state = self.state.lock();
            state.link.is_none() && state.proposing.is_none()
        };
        if !available {
            channel.refuse("already paired or pairing".into()).await;
            return;
        }
        if channel.sender.send(&Frame::Accept { epoch }).await.is_ok() {
            self.install_link(
                channel,
                PartnerRef {
                    node_id: peer,
                    epoch,
                },
                protocol,
            );
        }
    }

    /// Makes `channel` the link to `partner`, unless another link won the race.
    fn install_link(self: &Arc<Self>, channel: Channel, partner: PartnerRef, protocol: Protocol) {
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
            // is in place: a write is either in the snapshot, or recorded and then handed to
            // `replicate`, which finds the link.
            let Channel {
                sender, receiver, ..
            } = channel;
            let (inbox_tx, inbox_rx) = mpsc::channel(link::INBOX);
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
                acked: watch::Sender::new(0),
                multicast,
                snapshot_keys: AtomicU64::new(0),
                unsent: Mutex::default(),
                mutations_sent: self.mutations_sent.clone(),
                lag: (self.config.mode == ReplicationMode::Async).then(|| self.lag.clone()),
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
            let mut tasks = vec![writer, reader, timer, snapshot, probe];
            // One side of the pair starts the comparisons; both answer them.
            if self.config.node_id < partner.node_id {
                tasks.push(tokio::spawn(
                    self.clone().anti_entropy(shared.outbound.clone()),
                ));
            }
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
    fn drop_link(self: &Arc<Self>, id: Option<u64>, reason: &str) {
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

    fn link_failed(self: &Arc<Self>, id: u64, error: &TransportError) {
        let current = self.state.lock().link(id).is_some();
        if current {
            warn!(error = %error, reason = error.reason(), "replication link failed");
            metrics::counter!(names::LINK_FAILURES, "reason" => error.reason()).increment(1);
            self.drop_link(Some(id), "link failed");
        }
    }

    /// Performs the core's actions: what takes I/O (the link's writer, the socket, the
    /// writers' wake-ups, metrics and gossip). Called with no lock held.
    fn perform(self: &Arc<Self>, shared: &LinkShared, actions: Vec<Action<Waker>>) {
        for action in actions {
            match action {
                Action::Stream(outgoing) => {
                    let _ = shared.outbound.send(outgoing);
                }
                Action::Datagram { seq, datagram } => {
                    self.multicast_datagram(shared, seq, datagram)
                }
                Action::Retransmit { frames, reason } => {
                    metrics::counter!(names::MULTICAST_RETRANSMITS, "reason" => reason)
                        .increment(frames.len() as u64);
                    for frame in frames {
                        let _ = shared.outbound.send(Outgoing::Stream(frame));
                    }
                }
                Action::Wake { writers, waited } => {
                    if waited == Waited::TimedOut {
                        metrics::counter!(names::SYNC_TIMEOUTS).increment(writers.len() as u64);
                        self.sync_timeouts
                            .fetch_add(writers.len() as u64, Ordering::Relaxed);
                    }
                    for writer in writers {
                        // A writer that stopped waiting (its connection closed) is no error.
                        let _ = writer.send(waited);
                    }
                }
                Action::Acked(seq) => {
                    shared.acked.send_replace(seq);
                }
                Action::Apply(ready) => self.apply_arrived(shared, ready),
                Action::Protection { lagging: true } => {
                    warn!(
                        timeout = ?self.config.sync_timeout,
                        "the partner did not acknowledge a write in time; writes are kept \
                         locally and this agent is unprotected until it catches up"
                    );
                    self.publish_protection();
                }
                Action::Protection { lagging: false } => {
                    info!("the partner acknowledges in time again: protected");
                    self.publish_protection();
                }
                Action::MulticastOff => {
                    warn!(
                        "multicast to the partner loses too many frames; replicating over QUIC \
                         for the rest of this pair"
                    );
                    shared.multicast.deactivated.notify_one();
                    self.publish_protection();
                }
            }
        }
    }

    /// Sends the datagrams of full frames made while the store was locked.
    fn send_unsent(&self, shared: &LinkShared) {
        let unsent = std::mem::take(&mut *shared.unsent.lock());
        for (seq, datagram) in unsent {
            self.multicast_datagram(shared, seq, datagram);
        }
    }

    /// Seals and multicasts a frame of live writes; a frame the socket refuses goes over
    /// the stream.
    fn multicast_datagram(&self, shared: &LinkShared, seq: u64, datagram: BytesMut) {
        let sent = self
            .multicast
            .as_deref()
            .is_some_and(|socket| shared.multicast.send(socket, datagram));
        if !sent && let Some(writes) = shared.core.lock().datagram_refused(seq) {
            let _ = shared.outbound.send(Outgoing::Stream(writes));
        }
    }

    /// Ends the sync waits that outlast the timeout: sleeps until the oldest is due, so
    /// that it wakes about once per timeout whatever the load.
    async fn time_out_waits(self: Arc<Self>, shared: Arc<LinkShared>) {
        let timeout = self.config.sync_timeout.max(Duration::from_millis(1));
        loop {
            let now = tokio::time::Instant::now();
            let (actions, next) = {
                let mut core = shared.core.lock();
                (core.on_tick(now), core.next_timeout())
            };
            self.perform(&shared, actions);
            tokio::time::sleep_until(
                next.unwrap_or(now + timeout)
                    .max(now + Duration::from_millis(1)),
            )
            .await;
        }
    }

    /// Sends queued frames in order, in one write per batch; consecutive mutation batches
    /// travel as one frame. While multicast is active, live writes that fit a datagram go
    /// by multicast, and those not acknowledged in time again by the stream.
    async fn write_frames(
        self: Arc<Self>,
        id: u64,
        shared: Arc<LinkShared>,
        mut sender: FrameSender,
        mut outbound: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let socket = self.multicast.as_deref();
        let mut acked = shared.acked.subscribe();
        let mut stream = BytesMut::new();
        let mut ticker = tokio::time::interval(link::RETRANSMIT_AFTER / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A connection that multicasts a frame itself also starts the next pending frame
            // and flushes it, which wakes this loop and brings the timer back.
            let awaiting = shared.core.lock().awaiting_datagrams();
            let first = tokio::select! {
                biased;
                frame = outbound.recv() => match frame {
                    Some(frame) => frame,
                    None => return,
                },
                now = ticker.tick(), if awaiting => {
                    let actions = shared.core.lock().on_tick(now);
                    self.perform(&shared, actions);
                    continue;
                }
            };
            // Let the connections that are running right now queue their writes too: they
            // then share one packet (and the partner's one acknowledgement).
            tokio::task::yield_now().await;
            // Full frames a connection made and has not sent yet go first.
            self.send_unsent(&shared);
            let mut batch = Batch::new(first);
            while !batch.is_full() {
                let Ok(next) = outbound.try_recv() else { break };
                batch.push(next);
            }
            // Under load, while the partner has frames to acknowledge, the pending frame
            // waits a little for more writes to join it (they are waiting for the same
            // answer); a connection whose writes no longer fit it sends it meanwhile.
            if may_hold(&shared, &batch) {
                let hold = tokio::time::sleep(link::BATCH_HOLD);
                tokio::pin!(hold);
                while may_hold(&shared, &batch) {
                    tokio::select! {
                        biased;
                        changed = acked.changed() => if changed.is_err() { break },
                        next = outbound.recv() => match next {
                            Some(next) => batch.push(next),
                            // The link is closing: what is held still goes out.
                            None => break,
                        },
                        () = &mut hold => break,
                    }
                }
            }
            if let Some(first) = batch.flush
                && let Some(pending) = shared.core.lock().take_pending(first)
            {
                batch.push(Outgoing::Writes(pending));
            }
            stream.clear();
            for frame in batch.frames {
                let encoded = match frame {
                    Outgoing::Writes(writes) => {
                        let routed = shared
                            .core
                            .lock()
                            .route(writes, tokio::time::Instant::now());
                        match routed {
                            Ok((seq, datagram)) => {
                                if socket
                                    .is_some_and(|socket| shared.multicast.send(socket, datagram))
                                {
                                    continue;
                                }
                                match shared.core.lock().datagram_refused(seq) {
                                    Some(writes) => writes.encode(&mut stream),
                                    None => continue,
                                }
                            }
                            Err(writes) => writes.encode(&mut stream),
                        }
                    }
                    Outgoing::Stream(writes) => writes.encode(&mut stream),
                    Outgoing::Frame(probe @ Frame::Probe { .. }) => {
                        if let Some(socket) = socket {
                            shared.multicast.send_frame(socket, &probe);
                        }
                        continue;
                    }
                    // The partner's writes are acknowledged the way they came: a datagram
                    // costs both sides less than a packet of the QUIC connection.
                    Outgoing::Frame(ack @ Frame::Ack { seq })
                        if socket.is_some_and(|socket| {
                            shared.core.lock().ack_by_datagram(seq)
                                && shared.multicast.send_frame(socket, &ack)
                        }) =>
                    {
                        continue;
                    }
                    Outgoing::Frame(frame) => frame.encode(&mut stream),
                    Outgoing::Flush(_) => unreachable!("a batch keeps no flush"),
                };
                if let Err(err) = encoded {
                    self.link_failed(id, &TransportError::Frame(err));
                    return;
                }
            }
            if !stream.is_empty()
                && let Err(err) = sender.send_encoded(&stream).await
            {
                self.link_failed(id, &err);
                return;
            }
        }
    }

    /// Offers multicast to the partner when both sit in one subnet where multicast is
    /// enabled: gives it this side's key, then probes until it answers (the reader sees
    /// the answer) or the attempts run out. When the probes go unanswered or the path
    /// degrades later, probes again after a delay that doubles each time.
    async fn probe_multicast(self: Arc<Self>, shared: Arc<LinkShared>, partner: String) {
        if self.multicast.is_none() {
            return;
        }
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let members = gossip.members().await;
        let subnet = |id: &str| {
            members
                .iter()
                .filter(|m| m.id == id && m.live)
                .find_map(|m| m.subnet.clone())
        };
        let (mine, theirs) = (subnet(&self.config.node_id), subnet(&partner));
        let same = matches!((&mine, &theirs), (Some(a), Some(b)) if a.multicast && b.multicast && a.cidr == b.cidr);
        if !same {
            info!(%partner, "partner in another subnet (or without multicast): replicating over QUIC");
            return;
        }
        let key = shared.multicast.send_key.to_vec();
        if shared
            .outbound
            .send(Frame::MulticastKey { key }.into())
            .is_err()
        {
            return;
        }
        let multicasting = || shared.core.lock().multicasting();
        let mut delay = self.config.reprobe_after;
        loop {
            for _ in 0..PROBE_ATTEMPTS {
                let nonce =
                    u64::from_be_bytes(multicast::new_key()[..8].try_into().expect("8 bytes")) | 1;
                let probe = shared.core.lock().start_probe(nonce);
                if shared.outbound.send(probe.into()).is_err() {
                    return;
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
                if multicasting() {
                    break;
                }
            }
            if multicasting() {
                let since = tokio::time::Instant::now();
                shared.multicast.deactivated.notified().await;
                if since.elapsed() >= MULTICAST_HEALTHY {
                    delay = self.config.reprobe_after;
                }
            } else {
                warn!(
                    %partner,
                    retry_in = ?delay,
                    "the partner does not receive this agent's multicast; replicating over QUIC"
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.config.reprobe_after * REPROBE_MAX);
            info!(%partner, "probing multicast to the partner again");
        }
    }

    /// Receives the subnet's multicast and hands the partner's frames to the link.
    async fn receive_multicast(self: Arc<Self>, socket: Arc<Multicast>) {
        let mut buf = vec![0u8; multicast::MAX_DATAGRAM + 1024];
        loop {
            let (len, from) = match socket.recv(&mut buf).await {
                Ok(received) => received,
                Err(err) => {
                    warn!(error = %err, "receiving multicast failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(dropped) = self.take_datagram(&mut buf[..len]) {
                metrics::counter!(names::MULTICAST_DROPPED, "reason" => dropped.label())
                    .increment(1);
                if dropped != multicast::Dropped::OtherPair {
                    debug!(%from, reason = dropped.label(), "dropped a multicast datagram");
                }
            }
        }
    }

    /// Opens the partner's datagram (where it is, in `datagram`) and hands its frame to
    /// the link.
    fn take_datagram(&self, datagram: &mut [u8]) -> Result<(), multicast::Dropped> {
        use multicast::Dropped;
        let header = multicast::header(datagram)?;
        // Headers carry ids cut to what they hold.
        if header.sender == multicast::wire_id(&self.config.node_id) {
            return Ok(()); // our own, looped back
        }
        let link = {
            let state = self.state.lock();
            state
                .link
                .as_ref()
                .filter(|l| {
                    multicast::wire_id(&l.partner.node_id) == header.sender
                        && l.partner.epoch == header.epoch
                })
                .map(|l| l.shared.clone())
        };
        let link = link.ok_or(Dropped::OtherPair)?;
        let plain = {
            let mut opener = link.multicast.opener.lock();
            let opener = opener.as_mut().ok_or(Dropped::BeforeKey)?;
            let seal = header.seal();
            opener.open_in_place(seal, datagram)?
        };
        // Authentic but not one whole frame: a bug on the other side, not an attack.
        let frame = Frame::decode_exact(plain).map_err(|_| Dropped::Malformed)?;
        metrics::counter!(names::MULTICAST_RECEIVED).increment(1);
        // A full inbox drops the frame; the partner sends it again over the stream.
        link.multicast
            .inbox
            .try_send(frame)
            .map_err(|_| Dropped::Backlog)
    }

    /// Applies the partner's frames that are in order, oldest first.
    fn apply_arrived(self: &Arc<Self>, shared: &LinkShared, ready: Vec<Arrived>) {
        for arrived in ready {
            match arrived {
                Arrived::Writes(mutations) => {
                    self.mutations_received.increment(mutations.len() as u64);
                    self.store.apply(mutations);
                }
                Arrived::Snapshot { mutations, last } => {
                    let keys = mutations.len() as u64;
                    metrics::counter!(names::SNAPSHOT_KEYS_RECEIVED).increment(keys);
                    let total = shared.snapshot_keys.fetch_add(keys, Ordering::Relaxed) + keys;
                    self.store.apply(mutations);
                    if last {
                        info!(keys = total, "snapshot from the partner applied");
                        self.set_syncing(false);
                    }
                }
            }
        }
    }

    /// Reads the partner's frames, from the stream and from the multicast inbox, feeds
    /// them to the core and performs what it answers; acknowledges what it applied once
    /// no frame is at hand.
    async fn read_frames(
        self: Arc<Self>,
        id: u64,
        shared: Arc<LinkShared>,
        mut receiver: FrameReceiver,
        mut inbox: mpsc::Receiver<Frame>,
    ) {
        loop {
            // Each frame with the path it took: true for the stream.
            let next = match receiver.buffered() {
                Ok(Some(frame)) => Ok((frame, true)),
                Ok(None) => {
                    // Frames that have already arrived are applied before one
                    // acknowledgement covers them all.
                    if let Some(ack) = shared.core.lock().take_ack() {
                        let _ = shared.outbound.send(ack.into());
                    }
                    tokio::select! {
                        frame = receiver.recv() => frame.map(|frame| (frame, true)),
                        Some(frame) = inbox.recv() => Ok((frame, false)),
                    }
                }
                Err(err) => Err(err),
            };
            let (frame, by_stream) = match next {
                Ok(frame) => frame,
                Err(err) => {
                    self.link_failed(id, &err);
                    return;
                }
            };
            // A script holds the keyspace: apply once it is done, without blocking a thread.
            self.store.gate().idle().await;
            let actions = match self.take_frame(&shared, frame, by_stream) {
                Ok(actions) => actions,
                Err(reason) => {
                    self.link_failed(id, &malformed(reason));
                    return;
                }
            };
            self.perform(&shared, actions);
        }
    }

    /// One frame from the partner: the core's answer, or why the frame breaks the link.
    fn take_frame(
        self: &Arc<Self>,
        shared: &LinkShared,
        frame: Frame,
        by_stream: bool,
    ) -> Result<Vec<Action<Waker>>, String> {
        let now = tokio::time::Instant::now();
        let nothing = Ok(Vec::new());
        match frame {
            Frame::Mutations {
                first,
                seq,
                mutations,
            } => shared
                .core
                .lock()
                .on_mutations(first, seq, mutations, by_stream),
            Frame::Snapshot {
                seq,
                mutations,
                last,
            } => shared.core.lock().on_snapshot(seq, mutations, last),
            Frame::Ack { seq } => {
                let mut core = shared.core.lock();
                let actions = core.on_ack(seq, now);
                self.lag.set(core.behind() as f64);
                actions
            }
            Frame::Nack { from, to } => shared.core.lock().on_nack(from, to, now),
            Frame::Probe { nonce } => {
                let _ = shared.outbound.send(Frame::ProbeAck { nonce }.into());
                nothing
            }
            Frame::ProbeAck { nonce } => {
                if shared.core.lock().on_probe_ack(nonce) {
                    info!(
                        "the partner receives this agent's multicast: live writes go by multicast"
                    );
                    self.publish_protection();
                }
                nothing
            }
            Frame::MulticastKey { key } => {
                let opener = multicast::Opener::new(&key).ok_or("multicast key of a wrong size")?;
                *shared.multicast.opener.lock() = Some(opener);
                nothing
            }
            Frame::Scripts { bodies } => {
                if let Some(cache) = self.scripts.get() {
                    cache.learn(bodies);
                }
                nothing
            }
            Frame::Digest { shards } => {
                if shards.len() != SHARDS {
                    return Err(format!(
                        "digest of {} shards, expected {SHARDS}",
                        shards.len()
                    ));
                }
                let mine = self.digests();
                let differing: Vec<u32> = (0..SHARDS)
                    .filter(|&s| mine[s] != shards[s])
                    .map(|s| s as u32)
                    .collect();
                metrics::counter!(names::ANTI_ENTROPY_ROUNDS).increment(1);
                if !differing.is_empty() {
                    debug!(
                        shards = differing.len(),
                        "anti-entropy: shards differ from the partner's"
                    );
                    self.send_repairs(&shared.outbound, &differing);
                    let _ = shared
                        .outbound
                        .send(Frame::RepairRequest { shards: differing }.into());
                }
                nothing
            }
            Frame::RepairRequest { shards } => {
                if shards.iter().any(|&s| s as usize >= SHARDS) {
                    return Err("repair request for an unknown shard".into());
                }
                self.send_repairs(&shared.outbound, &shards);
                nothing
            }
            Frame::Repair { mutations } => {
                let changed = self.store.apply(mutations);
                if changed > 0 {
                    metrics::counter!(names::REPAIRED_KEYS).increment(changed as u64);
                    info!(
                        keys = changed,
                        "anti-entropy repaired keys that differed from the partner's"
                    );
                }
                nothing
            }
            other => Err(format!("unexpected frame on a running link: {other:?}")),
        }
    }

    /// The digest of every shard of the store, computed a few shards per lock hold.
    fn digests(&self) -> Vec<u64> {
        let mut digests = Vec::with_capacity(SHARDS);
        for from in (0..SHARDS).step_by(64) {
            let to = (from + 64).min(SHARDS);
            let part = self
                .store
                .run(|ks, now| {
                    (from..to)
                        .map(|s| ks.shard_digest(s, now))
                        .collect::<Vec<_>>()
                })
                .value;
            digests.extend(part);
        }
        digests
    }

    /// Sends what this store holds in `shards`, in frames of about a thousand keys.
    fn send_repairs(&self, outbound: &mpsc::UnboundedSender<Outgoing>, shards: &[u32]) {
        let send = |batch: Vec<Mutation>| {
            for mutations in in_frames(batch) {
                let _ = outbound.send(Frame::Repair { mutations }.into());
            }
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for &shard in shards {
            let part = self
                .store
                .run(|ks, now| ks.shard_repair(shard as usize, now))
                .value;
            bytes += part.iter().map(Mutation::encoded_size).sum::<usize>();
            batch.extend(part);
            if batch.len() >= SNAPSHOT_CHUNK_KEYS || bytes >= CHUNK_BYTES {
                send(std::mem::take(&mut batch));
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            send(batch);
        }
    }

    /// Every interval, sends the partner a digest of the store to compare with its own.
    async fn anti_entropy(self: Arc<Self>, outbound: mpsc::UnboundedSender<Outgoing>) {
        let mut ticker = tokio::time::interval(self.config.anti_entropy_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the snapshot just covered everything
        loop {
            ticker.tick().await;
            // A script holds the keyspace: compare once it is done.
            self.store.gate().idle().await;
            if outbound
                .send(
                    Frame::Digest {
                        shards: self.digests(),
                    }
                    .into(),
                )
                .is_err()
            {
                return;
            }
        }
    }

    fn set_syncing(self: &Arc<Self>, syncing: bool) {
        self.syncing.store(syncing, Ordering::Relaxed);
        self.publish_protection();
    }

    /// Sends this agent's whole store to the new partner, a chunk at a time, with at most
    /// a few chunks unacknowledged.
    async fn send_snapshot(self: Arc<Self>, id: u64, partner: String) {
        let started = tokio::time::Instant::now();
        let mut cursor = Some(0);
        let mut sent = 0u64;
        self.store.gate().idle().await;
        let total = self.store.stats().0 as u64;
        self.publish_snapshot(Some(SyncProgress { sent, total }));
        let mut last_report = started;
        while let Some(at) = cursor {
            self.store.gate().idle().await;
            let (next, mutations) = self
                .store
                .run(|ks, now| ks.snapshot_chunk(at, SNAPSHOT_CHUNK_KEYS, now))
                .value;
            cursor = next;
            let frames = in_frames(mutations);
            let count = frames.len();
            for (i, mutations) in frames.into_iter().enumerate() {
                let keys = mutations.len() as u64;
                let (seq, mut acked) = {
                    let state = self.state.lock();
                    let Some(link) = state.link(id) else {
                        return;
                    };
                    let last = cursor.is_none() && i + 1 == count;
                    let (seq, actions) = link.shared.core.lock().on_snapshot_chunk(mutations, last);
                    // Under the state lock, as live writes: frames go in the order of their
                    // numbers.
                    for action in actions {
                        if let Action::Stream(outgoing) = action
                            && link.shared.outbound.send(outgoing).is_err()
                        {
                            return;
                        }
                    }
                    (seq, link.shared.acked.subscribe())
                };
                sent += keys;
                metrics::counter!(names::SNAPSHOT_KEYS_SENT).increment(keys);
                if last_report.elapsed() >= Duration::from_secs(1) {
                    info!(%partner, keys_sent = sent, keys_total = total, "snapshot in progress");
                    self.publish_snapshot(Some(SyncProgress {
                        sent,
                        total: total.max(sent),
                    }));
                    last_report = tokio::time::Instant::now();
                }
                let window = seq.saturating_sub(SNAPSHOT_WINDOW);
                if acked.wait_for(|a| *a >= window).await.is_err() {
                    self.publish_snapshot(None);
                    return;
                }
            }
        }
        self.publish_snapshot(None);
        info!(%partner, keys = sent, elapsed = ?started.elapsed(), "snapshot sent");
    }

    /// Publishes how far the snapshot to the partner has come (`None`: none in progress).
    /// As with [`Inner::publish_protection`], the update publishes the latest progress when
    /// it runs, so updates that overtake each other do no harm.
    fn publish_snapshot(self: &Arc<Self>, progress: Option<SyncProgress>) {
        *self.snapshot_progress.lock() = progress;
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            gossip
                .update(Box::new(move |advert| {
                    advert.snapshot = *inner.snapshot_progress.lock();
                }))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use tandem_common::frame::MAX_FRAME_BYTES;
    use tandem_common::ops::Op;
    use tandem_common::version::Version;

    use super::*;

    /// A snapshot or repair reads up to 1,000 keys at once; with large values they must
    /// still travel in frames the partner accepts, in order and every one of them.
    #[test]
    fn keys_read_at_once_travel_in_frames_below_the_limit() {
        let key = |i: usize, size: usize| Mutation {
            key: Bytes::from(format!("session:{i}")),
            version: Version::ZERO,
            op: Op::Set {
                value: Bytes::from(vec![b'v'; size]),
                expires_at_ms: None,
            },
            db: 0,
        };
        // 40 values of 3 MiB: 120 MiB read at once.
        let mutations: Vec<Mutation> = (0..40).map(|i| key(i, 3 << 20)).collect();
        let frames = in_frames(mutations.clone());
        assert!(frames.len() > 1);
        for mutations in &frames {
            let mut encoded = BytesMut::new();
            Frame::Snapshot {
                seq: 1,
                mutations: mutations.clone(),
                last: false,
            }
            .encode(&mut encoded)
            .unwrap();
            assert!(encoded.len() <= CHUNK_BYTES + (3 << 20) && encoded.len() < MAX_FRAME_BYTES);
        }
        assert_eq!(frames.concat(), mutations, "every key, in order");
        // Nothing read: one empty frame still goes (the last of a snapshot says so).
        assert_eq!(in_frames(Vec::new()), vec![Vec::<Mutation>::new()]);
        // A key larger than a frame's share goes alone.
        let one = in_frames(vec![key(0, 10), key(1, CHUNK_BYTES), key(2, 10)]);
        assert_eq!(one.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
