//! The session store: the keyspace behind a lock, with its clock and expiry sweeper.
//!
//! [`SessionStore`] is the one API every front end uses (RESP, HTTP, the demo app): it runs
//! a command against the keyspace and hands back the mutations the command made, which is
//! what replication ships to the partner.

pub mod clock;
pub mod collections;
mod fields;
pub mod gate;
mod glob;
pub mod long_double;
pub use self::glob::glob_match;
pub mod keyspace;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tandem_common::frame::Writes;
use tandem_common::ops::Mutation;
use tokio::task::JoinHandle;

#[cfg(test)]
pub use self::clock::ManualClock;
pub use self::clock::{Clock, SystemClock, TokioClock};
use self::gate::HoldGate;
pub use self::keyspace::{
    Applies, Entry, ExpireCondition, Keyspace, Kind, Limits, SetCondition, SetExpiry, StoreError,
    Touched, Value, WatchMark, ZaddOptions, ZaddOutcome,
};

/// Told of the keys whose deadline passed (database, key), for `expired` notifications.
pub type ExpiryListener = Arc<dyn Fn(Vec<(usize, bytes::Bytes)>) + Send + Sync>;

/// How often expired keys are removed in the background (besides on access).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// How long a script may hold the keyspace before other clients are told the server is
/// busy, as Redis' `busy-reply-threshold`.
pub const DEFAULT_BUSY_AFTER: Duration = Duration::from_secs(5);
/// Most keys expired per lock hold, so that a mass expiry does not stall commands.
const SWEEP_BATCH: usize = 2_000;

/// Shared handle to one agent's sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    keyspace: Arc<Mutex<Keyspace>>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Keys expired so far (`INFO stats`).
    expired: Arc<std::sync::atomic::AtomicU64>,
    /// Registered once: a registry lookup per command costs more than the command.
    mutations_total: metrics::Counter,
    /// A script holding the keyspace for its whole run: others wait here, not on the lock.
    gate: Arc<HoldGate>,
    /// Who announces keys that expired (the RESP endpoint), once notifications are on.
    expiry_listener: Arc<Mutex<Option<ExpiryListener>>>,
}

/// What a command returned, and whether it made a write the partner is to get.
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    /// The command's writes went to the store's sink (the partner's link).
    pub recorded: bool,
    /// The mutations it recorded, when the store has no sink to give them to.
    pub mutations: Writes,
}

/// What applying a partner's mutations came to ([`SessionStore::apply`]).
#[derive(Debug, Default)]
pub struct Applied {
    /// Mutations newer than what the store held.
    pub newer: usize,
    /// (database, key) of deltas made on a value this store holds at another version:
    /// the partner's whole value is to be fetched.
    pub diverged: Vec<(u16, bytes::Bytes)>,
}

/// Where a store's local writes go as they are made: the partner's link.
pub trait WriteSink: Send + Sync {
    /// The writes of one hold of the keyspace's lock (a command, a transaction, a
    /// script), in the order they were made. Called with the keyspace locked, so holds
    /// arrive in the order they were made; must neither block nor lock the keyspace.
    fn record(&self, writes: &mut Writes);

    /// Whether deltas name the version they build on ([`Mutation::base`]): the partner
    /// reads them.
    fn delta_bases(&self) -> bool;
}

/// The keyspace, locked. Dropping it ends the hold: the writes recorded meanwhile go to
/// the store's sink first, so that holds reach it in the order they were made.
pub struct Held<'a>(MutexGuard<'a, Keyspace>);

impl std::ops::Deref for Held<'_> {
    type Target = Keyspace;

    fn deref(&self) -> &Keyspace {
        &self.0
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Keyspace {
        &mut self.0
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.hand_off();
    }
}

impl SessionStore {
    pub fn new(node_id: &str, limits: Limits, clock: impl Clock) -> Self {
        SessionStore {
            keyspace: Arc::new(Mutex::new(Keyspace::new(node_id, limits))),
            clock: Arc::new(clock),
            limits,
            expired: Arc::default(),
            mutations_total: metrics::counter!(names::MUTATIONS),
            gate: Arc::new(HoldGate::new(DEFAULT_BUSY_AFTER)),
            expiry_listener: Arc::default(),
        }
    }

    /// Who the sweeper tells of the keys whose deadline passed, while keyspace
    /// notifications are on (the keyspace's tracking, [`Keyspace::set_tracking`], is
    /// switched with it, under the keyspace's lock).
    pub fn set_expiry_listener(&self, listener: Option<ExpiryListener>) {
        *self.expiry_listener.lock() = listener;
    }

    /// The same store with scripts' holds counted as busy after `busy_after` (Redis'
    /// `busy-reply-threshold`).
    pub fn with_busy_threshold(mut self, busy_after: Duration) -> Self {
        self.gate = Arc::new(HoldGate::new(busy_after));
        self
    }

    /// Where long holds of the keyspace (scripts) are announced and waited for.
    pub fn gate(&self) -> &Arc<HoldGate> {
        &self.gate
    }

    /// The store's limits (fixed at start).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Current time of the store's clock, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Runs one command atomically against database 0 of the keyspace (the HTTP API and
    /// the demo app keep their sessions there).
    pub fn run<T>(&self, command: impl FnOnce(&mut Keyspace, u64) -> T) -> Outcome<T> {
        let mut recorded = false;
        let mut keyspace = self.lock();
        let value = self.run_locked(
            &mut keyspace,
            self.clock.now_ms(),
            0,
            &mut recorded,
            |ks, now| {
                let value = command(ks, now);
                // Keyspace notifications are for the RESP endpoint's writes.
                let _ = ks.take_touched();
                value
            },
        );
        let mutations = keyspace.take_outbox_unsunk();
        Outcome {
            value,
            recorded,
            mutations,
        }
    }

    /// Runs one command atomically against database `db` at `now_ms` (read from the
    /// store's clock a moment before: a connection reads it once per pipeline, as a clock
    /// read per command costs a few percent of a pipelined GET); sets `recorded` when it
    /// made a write the partner is to get. Versions stay unique and increasing whatever
    /// `now_ms`.
    pub fn run_at<T>(
        &self,
        now_ms: u64,
        db: usize,
        recorded: &mut bool,
        command: impl FnOnce(&mut Keyspace, u64) -> T,
    ) -> T {
        let mut keyspace = self.lock();
        self.run_locked(&mut keyspace, now_ms, db, recorded, command)
    }

    /// The keyspace, locked: a transaction runs all its commands under one hold.
    pub fn lock(&self) -> Held<'_> {
        Held(self.keyspace.lock())
    }

    /// [`SessionStore::run_at`] on a keyspace the caller has locked.
    pub fn run_locked<T>(
        &self,
        keyspace: &mut Keyspace,
        now_ms: u64,
        db: usize,
        recorded: &mut bool,
        command: impl FnOnce(&mut Keyspace, u64) -> T,
    ) -> T {
        let before = keyspace.writes();
        // The caller checked `db` against the limit (`SELECT`); database 0 always exists.
        if keyspace.select(db).is_err() {
            let _ = keyspace.select(0);
        }
        let value = command(keyspace, now_ms);
        let made = keyspace.writes() - before;
        if made > 0 {
            self.mutations_total.increment(made);
            *recorded |= keyspace.recording();
        }
        value
    }

    /// Sends the store's local writes, from now on, to `sink`, at the end of each hold of
    /// the keyspace (recording on), or stops recording them. Turned on before the store is
    /// read for a snapshot, so that every write is either in the snapshot or recorded.
    pub fn set_sink(&self, sink: Option<Arc<dyn WriteSink>>) {
        self.keyspace.lock().set_sink(sink);
    }

    /// Turns the recording of local writes as mutations on or off without a sink (tests;
    /// the agent records exactly while it has a sink, [`SessionStore::set_sink`]). On for
    /// a new store.
    #[cfg(test)]
    pub fn set_recording(&self, on: bool) {
        self.keyspace.lock().set_recording(on);
    }

    /// Applies mutations made elsewhere (a partner's writes): how many were newer than
    /// what the store held, and the keys whose deltas arrived for a value this store holds
    /// at another version (see [`Keyspace::apply`]).
    pub fn apply(&self, mutations: Vec<Mutation>) -> Applied {
        let mut keyspace = self.lock();
        let selected = keyspace.selected();
        let mut applied = Applied::default();
        for mutation in mutations {
            match keyspace.apply(mutation) {
                Applies::Newer => applied.newer += 1,
                Applies::OnAnotherValue(db, key) => {
                    applied.newer += 1;
                    applied.diverged.push((db, key));
                }
                Applies::Older => {}
            }
        }
        let _ = keyspace.select(selected);
        applied
    }

    /// Keys removed because they expired, since start.
    pub fn expired_total(&self) -> u64 {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (keys, accounted bytes).
    pub fn stats(&self) -> (usize, usize) {
        let keyspace = self.keyspace.lock();
        (keyspace.len(), keyspace.used_bytes())
    }

    /// Removes expired keys every 100 ms and keeps the store gauges current.
    pub fn spawn_sweeper(&self) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // A script holds the keyspace: expire once it is done.
                store.gate.idle().await;
                store.sweep_once();
            }
        })
    }

    /// One sweep pass: expires everything due, in batches.
    pub fn sweep_once(&self) -> usize {
        let expired = self.keyspace.lock().newly_expired(self.clock.now_ms());
        if !expired.is_empty() {
            let listener = self.expiry_listener.lock().clone();
            if let Some(listener) = listener {
                listener(expired);
            }
        }
        let mut total = 0;
        loop {
            let now_ms = self.clock.now_ms();
            let expired = self.keyspace.lock().sweep(now_ms, SWEEP_BATCH);
            total += expired;
            if expired < SWEEP_BATCH {
                break;
            }
            std::thread::yield_now();
        }
        if total > 0 {
            metrics::counter!(names::EXPIRED).increment(total as u64);
            self.expired
                .fetch_add(total as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let (keys, bytes) = self.stats();
        metrics::gauge!(names::KEYS).set(keys as f64);
        metrics::gauge!(names::USED_BYTES).set(bytes as f64);
        total
    }
}

/// Metric names of the store.
pub mod names {
    /// Gauge: keys held.
    pub const KEYS: &str = "tandem_store_keys";
    /// Gauge: bytes accounted for sessions (compared against the memory limit).
    pub const USED_BYTES: &str = "tandem_store_used_bytes";
    /// Counter: mutations made by local writes.
    pub const MUTATIONS: &str = "tandem_store_mutations_total";
    /// Counter: keys removed because they expired.
    pub const EXPIRED: &str = "tandem_store_expired_keys_total";
}
