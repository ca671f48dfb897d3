//! Replication: pairing with a partner and keeping its copy of our sessions current.
//!
//! Every agent is primary for the sessions its app writes and holds its partner's as a
//! replica. The pairing loop turns the pure decision of `tandem_common::pairing` into
//! actions; a link (one ordered channel per pair) carries each side's writes, as versioned
//! mutations, and a full snapshot when the pair forms. In sync mode a write is acknowledged
//! to the app only once the partner has applied it, or once the sync timeout has passed —
//! then the agent says it is unprotected rather than blocking the app.
//!
//! The parts, by role: [`proto`] orders replication on a link without I/O (numbers,
//! acknowledgements, waiting writers, retransmissions, delivery in order); `handshake`
//! and `pairing` make and end links; `writer` and `reader` are a link's two tasks that
//! perform what the core decides; `snapshot` and `anti_entropy` bring a partner's copy
//! whole; `probing` offers multicast and takes in the subnet's datagrams; `protection`
//! publishes what gossip and metrics say of it all. `link` holds the frames and the
//! pieces the core is made of; `transport`, `tls` and `multicast` are the paths.

mod anti_entropy;
#[cfg(test)]
mod conformance;
mod handshake;
mod link;
pub mod membership;
#[cfg(test)]
pub mod memory;
pub mod multicast;
mod pairing;
mod probing;
mod protection;
mod proto;
mod reader;
#[cfg(test)]
mod sim;
mod snapshot;
pub mod tls;
pub mod transport;
mod writer;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tandem_common::frame::{Frame, Writes};
use tandem_common::schema::{PartnerRef, Protocol, SyncProgress};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::link::{LinkMulticast, Outgoing};
use self::membership::Membership;
use self::multicast::Multicast;
use self::proto::{Action, LinkCore, Waited};
use self::transport::{Transport, TransportError};
use crate::store::{SessionStore, WriteSink};

/// The default of [`ReplicationConfig::reprobe_after`].
pub const REPROBE_AFTER: Duration = Duration::from_secs(5);

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
    /// Counter: keys anti-entropy sent to the partner, whole (values or deletes).
    pub const REPAIR_KEYS_SENT: &str = "tandem_repl_repair_keys_sent_total";
    /// Counter: keys an anti-entropy repair changed.
    pub const REPAIRED_KEYS: &str = "tandem_repl_repaired_keys_total";
    /// Counter: keys whose partner changed them on another version of the value than
    /// this agent held (both wrote the key): fetched whole from the partner.
    pub const DIVERGED_KEYS: &str = "tandem_repl_diverged_keys_total";
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
    /// Keys anti-entropy sent to partners, whole.
    repair_keys_sent: AtomicU64,
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

/// How a writer's wait for the partner ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// Sync mode: the partner has applied every write so far.
    Acked,
    /// Async mode: the write is on its way, not waited for.
    Unconfirmed,
    /// The partner did not acknowledge within the sync timeout; the agent is unprotected.
    TimedOut,
    /// The link closed while waiting.
    LinkClosed,
    /// No partner: the write is on this agent only.
    Alone,
}

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
    acked: link::AckSignal,
    multicast: LinkMulticast,
    /// The partner's anti-entropy frames, for the link's anti-entropy task.
    anti_entropy: mpsc::Sender<anti_entropy::Exchange>,
    /// Keys of the partner's snapshot applied so far.
    snapshot_keys: AtomicU64,
    /// Datagrams of full frames made while the store was locked, to send after it: by
    /// the writer that filled them ([`Replicator::replicated`]) or the link's writer.
    unsent: Mutex<Vec<(u64, BytesMut)>>,
    mutations_sent: metrics::Counter,
    lag: Option<metrics::Gauge>,
    /// Whether the partner reads the base version of deltas and answers fetches (it
    /// speaks [`Protocol::DELTA_BASES`]).
    delta_bases: bool,
}

impl WriteSink for LinkShared {
    fn delta_bases(&self) -> bool {
        self.delta_bases
    }

    fn record(&self, writes: &mut Writes) {
        let count = writes.len() as u64;
        let actions = {
            let mut core = self.core.lock();
            let actions = core.on_write(writes.split(), tokio::time::Instant::now());
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
        self.shared.acked.close();
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
                repair_keys_sent: AtomicU64::new(0),
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

    /// How many keys anti-entropy sent to partners, whole.
    #[cfg(test)]
    pub fn repair_keys_sent(&self) -> u64 {
        self.inner.repair_keys_sent.load(Ordering::Relaxed)
    }

    /// How many sync writes returned on the timeout instead of the partner's ack.
    pub fn sync_timeouts(&self) -> u64 {
        self.inner.sync_timeouts.load(Ordering::Relaxed)
    }

    /// The running link's numbers and states (see [`LinkCore::summary`]).
    #[cfg(test)]
    pub(crate) fn link_summary(&self) -> Option<String> {
        let state = self.inner.state.lock();
        let link = state.link.as_ref()?;
        Some(format!(
            "{}: {}",
            link.partner.node_id,
            link.shared.core.lock().summary()
        ))
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
    pub async fn replicated(&self) -> Replicated {
        let mut waiting = None;
        let unsent = {
            let state = self.inner.state.lock();
            let Some(link) = state.link.as_ref() else {
                return Replicated::Alone;
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
        let sync = self.inner.config.mode == ReplicationMode::Sync;
        match waiting {
            // In sync mode, the partner had acknowledged everything already.
            None if sync => Replicated::Acked,
            None => Replicated::Unconfirmed,
            Some(waiting) => match waiting.await {
                Ok(Waited::Acked) if sync => Replicated::Acked,
                Ok(Waited::Acked) => Replicated::Unconfirmed,
                Ok(Waited::TimedOut) => Replicated::TimedOut,
                Err(_) => {
                    // The pairing loop takes it from here.
                    debug!("replication link closed during a sync write");
                    Replicated::LinkClosed
                }
            },
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

impl Inner {
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
                    shared.acked.set(seq);
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

    /// Ends the sync waits that outlast the timeout: sleeps until the oldest is due, so
    /// that it wakes about once per timeout whatever the load.
    async fn time_out_waits(self: Arc<Self>, shared: Arc<LinkShared>) {
        let timeout = self.config.sync_timeout;
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
}
