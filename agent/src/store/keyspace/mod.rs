//! The keyspace: sessions in memory, in numbered databases, with expiry, limits and
//! versioned mutations.
//!
//! Pure data structure: the caller passes the current time and holds the lock. Every change
//! is a versioned mutation made by one function, for local writes (stamped with a new
//! version, always the newest) and for mutations received from a partner alike (applied
//! by [`Keyspace::apply`] only when newer than what the key holds), so both sides converge
//! on the same state.
//!
//! The commands live by family: `keys.rs`, `strings.rs`, `hashes.rs`, `sets.rs`,
//! `zsets.rs`, `lists.rs`. Each reads through the typed accessors here and writes through
//! [`Keyspace::commit`] after checking the limits.

mod deadlines;
mod hashes;
mod keys;
mod lists;
mod sets;
mod strings;
mod zsets;

use std::sync::Arc;

use bytes::Bytes;
use tandem_common::frame::{KeyVersion, Writes};
use tandem_common::ops::{Mutation, Op, Score};
use tandem_common::version::{HybridClock, Version, fnv1a, node_tag};

use super::WriteSink;
use super::collections::{ItemList, MemberSet, SortedSet};
use super::glob::glob_match;
use deadlines::Deadlines;

pub use self::keys::{KeyInfo, WatchMark};
pub use self::lists::{range as list_range, resolve as list_index};
pub use self::zsets::{ZaddOptions, ZaddOutcome};
pub use super::fields::FieldMap;

/// Most bytes of members, field names and values one collection (hash, set, sorted set,
/// list) holds: a collection travels whole in a snapshot or repair frame
/// ([`tandem_common::frame::MAX_FRAME_BYTES`]), with room left for the encoding and other
/// keys.
pub const MAX_COLLECTION_BYTES: usize = tandem_common::frame::MAX_FRAME_BYTES / 2;

/// Keys are spread over this many shards in each database; `SCAN` walks shard by shard, so
/// a key present for a whole scan is always returned.
pub const SHARDS: usize = 1024;
/// Most databases a keyspace can hold (`--databases`).
pub const MAX_DATABASES: usize = 1024;
/// A shard's map from key to what it holds. foldhash, seeded per process, hashes a short
/// key several times faster than SipHash and still keeps an attacker from choosing keys
/// that collide. (hashbrown's map: it finds a key and its stored copy in one lookup.)
type KeyMap<V> = hashbrown::HashMap<Bytes, V, foldhash::fast::RandomState>;
/// Bytes accounted for each key beyond its key and value bytes (map slot, entry, index).
const KEY_OVERHEAD: usize = 96;
/// Bytes accounted for each hash field beyond its name and value.
const FIELD_OVERHEAD: usize = 48;
/// Bytes accounted for each set member beyond its bytes.
const MEMBER_OVERHEAD: usize = 40;
/// Bytes accounted for each sorted-set member beyond its bytes (two indexes and a score).
const SCORED_OVERHEAD: usize = 80;
/// Bytes accounted for each list item beyond its bytes.
const ITEM_OVERHEAD: usize = 32;
/// How long a deleted key's version is remembered, so a late stale write cannot revive it.
pub const TOMBSTONE_TTL_MS: u64 = 10 * 60 * 1000;
/// How long an expired key is kept (never returned) before it is removed, so that a
/// partner's "touch" that crossed the deadline in flight still finds it: the writer of
/// the session decides whether it lives on, not the clock of the copy.
pub const EXPIRED_GRACE_MS: u64 = 30 * 1000;

/// A session's value. Collections are boxed: each is larger than a string's `Bytes`, and
/// every key's slot would pay for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(Bytes),
    /// Fields keep their insertion order while few, as Redis' small hashes do.
    Hash(Box<FieldMap>),
    Set(Box<MemberSet>),
    ZSet(Box<SortedSet>),
    List(Box<ItemList>),
}

impl Value {
    /// Bytes accounted for the value.
    fn size(&self) -> usize {
        match self {
            Value::Str(value) => value.len(),
            Value::Hash(fields) => fields.bytes() + fields.len() * FIELD_OVERHEAD,
            Value::Set(set) => set.bytes() + set.len() * MEMBER_OVERHEAD,
            Value::ZSet(zset) => zset.bytes() + zset.len() * SCORED_OVERHEAD,
            Value::List(list) => list.bytes() + list.len() * ITEM_OVERHEAD,
        }
    }

    /// Whether a collection has nothing left (then its key is deleted).
    fn is_empty_collection(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(fields) => fields.is_empty(),
            Value::Set(set) => set.is_empty(),
            Value::ZSet(zset) => zset.is_empty(),
            Value::List(list) => list.is_empty(),
        }
    }

    /// The mutation that makes a key exactly this value.
    pub fn whole(&self, expires_at_ms: Option<u64>) -> Op {
        match self {
            Value::Str(value) => Op::Set {
                value: value.clone(),
                expires_at_ms,
            },
            Value::Hash(hash) => Op::SetHash {
                fields: hash.iter().map(|(f, v)| (f.clone(), v.clone())).collect(),
                expires_at_ms,
            },
            Value::Set(set) => Op::SetMembers {
                members: set.iter().cloned().collect(),
                expires_at_ms,
            },
            Value::ZSet(zset) => Op::SetZSet {
                members: zset.iter().map(|(m, s)| (m.clone(), Score(s))).collect(),
                expires_at_ms,
            },
            Value::List(list) => Op::SetList {
                items: list.iter().cloned().collect(),
                expires_at_ms,
            },
        }
    }
}

/// One key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Value,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    pub version: Version,
}

impl Entry {
    fn size(&self, key: &[u8]) -> usize {
        KEY_OVERHEAD + key.len() + self.value.size()
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A copy of `bytes` in an allocation of its own.
///
/// Keys and values of local writes arrive as slices of a connection's read buffer; storing
/// the slice would keep that whole buffer alive for as long as the session lives. Values
/// are copied when the write is committed; keys, field names and members only where the
/// store keeps them, for an existing one keeps the store's own (see [`Source`]).
fn owned(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

/// Where the bytes of a write come from, and so whether the store copies a key or a field
/// name before keeping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A local command: slices of the connection's read buffer.
    Request,
    /// A partner's frame, decoded into allocations of their own.
    Partner,
}

impl Source {
    /// `bytes` as the store may keep them.
    fn keep(self, bytes: Bytes) -> Bytes {
        match self {
            Source::Request => owned(&bytes),
            Source::Partner => bytes,
        }
    }
}

/// `op` with every value in an allocation of its own, and the names of a whole value
/// (the field names and members of deltas are copied where they are kept, and those of
/// removals are only looked up).
fn owned_op(op: Op) -> Op {
    let all = |items: Vec<Bytes>| -> Vec<Bytes> { items.iter().map(owned).collect() };
    match op {
        Op::Set {
            value,
            expires_at_ms,
        } => Op::Set {
            value: owned(&value),
            expires_at_ms,
        },
        Op::SetHash {
            fields,
            expires_at_ms,
        } => Op::SetHash {
            fields: fields.iter().map(|(f, v)| (owned(f), owned(v))).collect(),
            expires_at_ms,
        },
        Op::SetFields { fields } => Op::SetFields {
            fields: fields.into_iter().map(|(f, v)| (f, owned(&v))).collect(),
        },
        Op::SetMembers {
            members,
            expires_at_ms,
        } => Op::SetMembers {
            members: all(members),
            expires_at_ms,
        },
        Op::SetZSet {
            members,
            expires_at_ms,
        } => Op::SetZSet {
            members: members.iter().map(|(m, s)| (owned(m), *s)).collect(),
            expires_at_ms,
        },
        Op::SetList {
            items,
            expires_at_ms,
        } => Op::SetList {
            items: all(items),
            expires_at_ms,
        },
        Op::Push { left, items } => Op::Push {
            left,
            items: all(items),
        },
        Op::SetItem { index, value } => Op::SetItem {
            index,
            value: owned(&value),
        },
        op @ (Op::DeleteFields { .. }
        | Op::Delete
        | Op::Expire { .. }
        | Op::AddMembers { .. }
        | Op::RemoveMembers { .. }
        | Op::SetScores { .. }
        | Op::Pop { .. }
        | Op::Trim { .. }) => op,
    }
}

fn field_size(field: &[u8], value: &[u8]) -> usize {
    FIELD_OVERHEAD + field.len() + value.len()
}

/// Store limits. Writes past a limit fail; nothing is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, string value, hash field name or field value, member or list item, in
    /// bytes.
    pub max_value_bytes: usize,
    /// Total accounted memory for sessions, in bytes.
    pub max_memory_bytes: usize,
    /// Most keys.
    pub max_keys: usize,
    /// Databases (`SELECT 0` to `databases - 1`).
    pub databases: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1 << 20,
            max_memory_bytes: usize::MAX,
            max_keys: usize::MAX,
            databases: 16,
        }
    }
}

/// What applying one of the partner's mutations came to ([`Keyspace::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    /// The key held the same or a newer version: nothing changed.
    Older,
    /// Applied, and the key took the mutation's version.
    Newer,
    /// A delta made on another version than the one held here: applied to the value
    /// here, which kept its version; the partner's whole value of the key (database,
    /// key) is to be fetched.
    OnAnotherValue(u16, Bytes),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("value is not an integer or out of range")]
    NotInteger,
    #[error("value is not a valid float")]
    NotFloat,
    #[error("hash value is not an integer")]
    HashNotInteger,
    #[error("hash value is not a float")]
    HashNotFloat,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("increment would produce NaN or Infinity")]
    NanOrInfinity,
    #[error("resulting score is not a number (NaN)")]
    ScoreNan,
    #[error("string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("session memory limit of {max} bytes reached")]
    OutOfMemory { max: usize },
    #[error("key limit of {max} keys reached")]
    TooManyKeys { max: usize },
    #[error("no such key")]
    NoSuchKey,
    #[error("index out of range")]
    IndexOutOfRange,
    #[error("DB index is out of range")]
    DbOutOfRange,
}

/// How `SET` treats the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetExpiry {
    /// No expiry (plain `SET` clears one).
    None,
    /// `KEEPTTL`.
    Keep,
    /// Expire at this time (ms since the epoch).
    At(u64),
}

/// `SET`'s `NX`/`XX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    IfAbsent,
    IfPresent,
}

/// `EXPIRE`'s `NX`/`XX`/`GT`/`LT`, which Redis allows together except `NX` with
/// another and `GT` with `LT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpireCondition {
    /// `NX`: only if the key has no expiry.
    pub if_none: bool,
    /// `XX`: only if the key has an expiry.
    pub if_some: bool,
    /// `GT`: only if the new expiry is later (no expiry counts as infinitely late).
    pub if_later: bool,
    /// `LT`: only if the new expiry is earlier (no expiry counts as infinitely late).
    pub if_earlier: bool,
}

impl ExpireCondition {
    pub const ALWAYS: ExpireCondition = ExpireCondition {
        if_none: false,
        if_some: false,
        if_later: false,
        if_earlier: false,
    };

    fn allows(self, current: Option<u64>, at_ms: u64) -> bool {
        (!self.if_none || current.is_none())
            && (!self.if_some || current.is_some())
            && (!self.if_later || current.is_some_and(|c| at_ms > c))
            && (!self.if_earlier || current.is_none_or(|c| at_ms < c))
    }
}

/// Type filter and kind names as `TYPE` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Hash,
    Set,
    ZSet,
    List,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::List => "list",
        }
    }

    pub fn of(value: &Value) -> Kind {
        match value {
            Value::Str(_) => Kind::String,
            Value::Hash(_) => Kind::Hash,
            Value::Set(_) => Kind::Set,
            Value::ZSet(_) => Kind::ZSet,
            Value::List(_) => Kind::List,
        }
    }
}

/// One database: its keys by shard, the versions of its deleted keys, its deadlines.
struct Db {
    shards: Vec<KeyMap<Entry>>,
    /// Versions of deleted keys, by shard like the keys themselves.
    tombstones: Vec<KeyMap<Version>>,
    /// Every key with an expiry, by deadline.
    expiries: Deadlines,
    len: usize,
}

impl Db {
    fn new() -> Db {
        Db {
            shards: (0..SHARDS).map(|_| KeyMap::default()).collect(),
            tombstones: (0..SHARDS).map(|_| KeyMap::default()).collect(),
            expiries: Deadlines::default(),
            len: 0,
        }
    }

    /// Keys whose deadline has passed but that are kept for the grace period.
    fn expired(&self, now_ms: u64) -> usize {
        self.due(now_ms).count()
    }

    /// Keys whose deadline is at or before `limit_ms`.
    fn due(&self, limit_ms: u64) -> impl Iterator<Item = &Bytes> {
        self.expiries.due(limit_ms, |key| {
            self.shards[Keyspace::shard_of(key)]
                .get(key)
                .and_then(|entry| entry.expires_at_ms)
        })
    }
}

/// All sessions of one agent.
pub struct Keyspace {
    /// Created as they are first used: a database costs its shard tables.
    dbs: Vec<Db>,
    /// The database commands run against ([`Keyspace::select`]).
    selected: usize,
    used_bytes: usize,
    /// Keys in every database.
    len: usize,
    clock: HybridClock,
    limits: Limits,
    /// Mutations made by local writes during this hold of the lock, encoded for the
    /// partner as they are made: the store never shares a value with a mutation.
    outbox: Writes,
    /// Where the outbox goes at the end of each hold that wrote (the partner's link):
    /// holds reach it in the order they were made, so the partner applies each delta to
    /// the state the primary had when it made it. Without one, the outbox waits for
    /// [`Keyspace::take_outbox_unsunk`].
    sink: Option<Arc<dyn WriteSink>>,
    /// Whether local writes go to the outbox. Off while nobody replicates them (a lone
    /// agent). Whoever turns it on must read the store afterwards (a snapshot) to cover the
    /// writes made before.
    recording: bool,
    /// Whether recorded deltas name the version they build on (the sink's partner reads
    /// them).
    delta_bases: bool,
    /// Local writes made so far, recorded or not.
    writes: u64,
    /// Keys local writes touched, kept while keyspace notifications are on (for the RESP
    /// endpoint to announce), `None` while they are off.
    touched: Option<Vec<Touched>>,
    /// Deadlines up to this time have been announced as `expired`.
    announced_ms: u64,
    /// This node's tag in versions: the keys it wrote last are its own to announce.
    tag: u32,
}

/// A key a local write touched: whether it came to exist or ceased to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub db: usize,
    pub key: Bytes,
    pub created: bool,
    pub removed: bool,
}

impl Keyspace {
    pub fn new(node_id: &str, limits: Limits) -> Self {
        Keyspace {
            dbs: vec![Db::new()],
            selected: 0,
            used_bytes: 0,
            len: 0,
            clock: HybridClock::new(node_tag(node_id)),
            limits,
            outbox: Writes::default(),
            sink: None,
            recording: true,
            delta_bases: false,
            writes: 0,
            touched: None,
            announced_ms: 0,
            tag: node_tag(node_id),
        }
    }

    /// Turns the tracking of touched keys on (keyspace notifications are on) or off.
    pub fn set_tracking(&mut self, on: bool) {
        match (on, self.touched.is_some()) {
            (true, false) => self.touched = Some(Vec::new()),
            (false, true) => self.touched = None,
            _ => {}
        }
    }

    /// The keys touched since the last call, in order.
    pub fn take_touched(&mut self) -> Vec<Touched> {
        self.touched
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The keys whose deadline passed since the last call, by database, that this node
    /// announces: those it wrote last, or all while it has no partner (a partner
    /// announces its own; after a failover the survivor announces them all).
    pub fn newly_expired(&mut self, now_ms: u64) -> Vec<(usize, Bytes)> {
        let from = self.announced_ms;
        self.announced_ms = now_ms;
        if from == 0 || self.touched.is_none() {
            return Vec::new();
        }
        let mut expired = Vec::new();
        for (db, data) in self.dbs.iter().enumerate() {
            for key in data.expiries.between(from, now_ms, |key| {
                data.shards[Self::shard_of(key)]
                    .get(key)
                    .and_then(|entry| entry.expires_at_ms)
            }) {
                let own = data.shards[Self::shard_of(key)]
                    .get(key)
                    .is_some_and(|entry| entry.version.node == self.tag || !self.recording);
                if own {
                    expired.push((db, key.clone()));
                }
            }
        }
        expired
    }

    /// Makes database `db` the one commands run against.
    ///
    /// # Errors
    /// [`StoreError::DbOutOfRange`] past `--databases`.
    pub fn select(&mut self, db: usize) -> Result<(), StoreError> {
        if db >= self.limits.databases {
            return Err(StoreError::DbOutOfRange);
        }
        self.open(db);
        Ok(())
    }

    /// Selects `db`, creating it if needed (a partner's write may name any database up to
    /// [`MAX_DATABASES`]).
    fn open(&mut self, db: usize) {
        while self.dbs.len() <= db {
            self.dbs.push(Db::new());
        }
        self.selected = db;
    }

    /// The selected database.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// Databases created so far.
    pub fn databases(&self) -> usize {
        self.dbs.len()
    }

    fn db(&self) -> &Db {
        &self.dbs[self.selected]
    }

    /// Turns the recording of local writes as mutations on or off (on for a new keyspace).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.outbox.clear();
        }
    }

    /// Sends the outbox, from now on, to `sink` (recording on), or stops (recording off).
    pub fn set_sink(&mut self, sink: Option<Arc<dyn WriteSink>>) {
        self.set_recording(sink.is_some());
        self.delta_bases = sink.as_ref().is_some_and(|sink| sink.delta_bases());
        self.sink = sink;
    }

    /// The end of a hold of the lock: the writes it recorded go to the sink.
    pub(super) fn hand_off(&mut self) {
        if let Some(sink) = &self.sink
            && !self.outbox.is_empty()
        {
            sink.record(&mut self.outbox);
            self.outbox.clear();
        }
    }

    /// The writes recorded and not handed to a sink, when there is none.
    pub fn take_outbox_unsunk(&mut self) -> Writes {
        if self.sink.is_some() {
            return Writes::default();
        }
        std::mem::take(&mut self.outbox)
    }

    /// Whether local writes are recorded as mutations.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Local writes made so far, recorded or not.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Keys held in every database, counting expired copies kept for the grace period.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live keys of the selected database (`DBSIZE`): expired copies are not counted.
    pub fn db_len(&self, now_ms: u64) -> usize {
        self.db().len - self.db().expired(now_ms)
    }

    /// Live keys of the selected database that have an expiry.
    pub fn expiring(&self, now_ms: u64) -> usize {
        self.db().expiries.len() - self.db().expired(now_ms)
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn shard_of(key: &[u8]) -> usize {
        fnv1a(key) as usize % SHARDS
    }

    /// The entry under `key` if it exists and has not expired. (An expired one stays for
    /// the grace period and is then removed by [`Keyspace::sweep`]; one lookup per read.)
    pub fn entry(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.raw_entry(key)
            .filter(|entry| !entry.is_expired(now_ms))
    }

    /// The stored entry, expired or not (for replication and repair).
    pub fn raw_entry(&self, key: &[u8]) -> Option<&Entry> {
        self.db().shards[Self::shard_of(key)].get(key)
    }

    fn expire_now(&mut self, key: &[u8]) {
        if let Some((key, entry)) = self.remove(key) {
            // An expired key keeps its version so that no older write revives it.
            let db = &mut self.dbs[self.selected];
            db.tombstones[Self::shard_of(&key)].insert(key, entry.version);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<(Bytes, Entry)> {
        let db = &mut self.dbs[self.selected];
        let (key, entry) = db.shards[Self::shard_of(key)].remove_entry(key)?;
        self.used_bytes -= entry.size(&key);
        self.len -= 1;
        db.len -= 1;
        if let Some(at) = entry.expires_at_ms {
            db.expiries.remove(at, &key);
        }
        Some((key, entry))
    }

    fn insert(&mut self, key: Bytes, entry: Entry) {
        let db = &mut self.dbs[self.selected];
        let shard = Self::shard_of(&key);
        db.tombstones[shard].remove(&key);
        if let Some(at) = entry.expires_at_ms {
            db.expiries.insert(at, &key);
        }
        self.used_bytes += entry.size(&key);
        self.len += 1;
        db.len += 1;
        db.shards[shard].insert(key, entry);
    }

    /// Stores `entry` under `key`, replacing what is there. An existing key is overwritten
    /// in place: the map keeps its own copy of the key and its slot.
    fn put(&mut self, key: Bytes, entry: Entry, source: Source) {
        let db = &mut self.dbs[self.selected];
        let shard = Self::shard_of(&key);
        let Some((stored, current)) = db.shards[shard].get_key_value_mut(&*key) else {
            self.insert(source.keep(key), entry);
            return;
        };
        self.used_bytes = self.used_bytes - current.size(stored) + entry.size(stored);
        db.expiries
            .change(current.expires_at_ms, entry.expires_at_ms, stored);
        *current = entry;
    }

    fn tombstone(&mut self, key: Bytes, version: Version, source: Source) {
        let db = &mut self.dbs[self.selected];
        db.tombstones[Self::shard_of(&key)].insert(source.keep(key), version);
    }

    /// The version `key` holds, live, expired or deleted (`ZERO` when never seen or long
    /// forgotten).
    fn current_version(&self, key: &[u8]) -> Version {
        self.raw_entry(key)
            .map(|entry| entry.version)
            .or_else(|| self.db().tombstones[Self::shard_of(key)].get(key).copied())
            .unwrap_or(Version::ZERO)
    }

    /// Applies a mutation unless the key already holds the same or a newer version. A
    /// mutation for a database past [`MAX_DATABASES`] is not applied.
    ///
    /// A delta made on another version than the one held here (both sides wrote the key,
    /// during a partition or a failover) is applied to the value here, which keeps its
    /// version: the two sides then differ in version, not only in value, so that the
    /// partner's whole value, fetched, replaces it (and anti-entropy sees the difference
    /// meanwhile). Given the delta's version, two different values would carry one
    /// version, and nothing would ever tell them apart.
    pub fn apply(&mut self, mutation: Mutation) -> Applies {
        self.clock.observe(mutation.version);
        let db = usize::from(mutation.db);
        if db >= MAX_DATABASES {
            return Applies::Older;
        }
        self.open(db);
        let current = self.current_version(&mutation.key);
        if mutation.version <= current {
            return Applies::Older;
        }
        let mutation_db = mutation.db;
        let Mutation {
            key,
            version,
            op,
            base,
            ..
        } = mutation;
        match base {
            Some(base) if base != current => {
                self.write(key.clone(), current, op, Source::Partner);
                Applies::OnAnotherValue(mutation_db, key)
            }
            _ => {
                self.write(key, version, op, Source::Partner);
                Applies::Newer
            }
        }
    }

    /// Makes the change a mutation describes, whatever version the key holds. The store
    /// takes the values as they are; a key, field name or member only where it is new (an
    /// existing one keeps the store's copy), copied first when it comes from a request.
    fn write(&mut self, key: Bytes, version: Version, op: Op, source: Source) {
        let whole = |value: Value, expires_at_ms| Entry {
            value,
            expires_at_ms,
            version,
        };
        match op {
            Op::Set {
                value,
                expires_at_ms,
            } => self.put(key, whole(Value::Str(value), expires_at_ms), source),
            Op::SetHash {
                fields,
                expires_at_ms,
            } => {
                let hash = Value::Hash(Box::new(fields.into_iter().collect()));
                self.put(key, whole(hash, expires_at_ms), source);
            }
            Op::SetMembers {
                members,
                expires_at_ms,
            } => {
                let set = Value::Set(Box::new(members.into_iter().collect()));
                self.put(key, whole(set, expires_at_ms), source);
            }
            Op::SetZSet {
                members,
                expires_at_ms,
            } => {
                let mut zset = SortedSet::default();
                for (member, score) in members {
                    zset.insert(member, score.0);
                }
                self.put(
                    key,
                    whole(Value::ZSet(Box::new(zset)), expires_at_ms),
                    source,
                );
            }
            Op::SetList {
                items,
                expires_at_ms,
            } => {
                let list = Value::List(Box::new(items.into_iter().collect()));
                self.put(key, whole(list, expires_at_ms), source);
            }
            Op::Delete => {
                self.remove(&key);
                self.tombstone(key, version, source);
            }
            Op::Expire { expires_at_ms } => {
                let db = &mut self.dbs[self.selected];
                let shard = Self::shard_of(&key);
                // The index shares the map's own copy of the key.
                if let Some((stored, entry)) = db.shards[shard].get_key_value_mut(&*key) {
                    db.expiries
                        .change(entry.expires_at_ms, expires_at_ms, stored);
                    entry.expires_at_ms = expires_at_ms;
                    entry.version = version;
                }
            }
            delta => self.write_delta(key, version, delta, source),
        }
    }

    /// A change to part of a collection: fields of a hash, members of a set or sorted set,
    /// items of a list. A delta that adds to a key that is absent (or of another type, which
    /// a newer write replaces) creates the collection; one that removes from it only takes
    /// its version. A collection left empty is deleted.
    fn write_delta(&mut self, key: Bytes, version: Version, op: Op, source: Source) {
        let shard = Self::shard_of(&key);
        let fits = self.dbs[self.selected].shards[shard]
            .get(&*key)
            .is_some_and(|entry| delta_fits(&op, &entry.value));
        if !fits {
            let empty = match &op {
                Op::SetFields { .. } => Value::Hash(Box::default()),
                Op::AddMembers { .. } => Value::Set(Box::default()),
                Op::SetScores { .. } => Value::ZSet(Box::default()),
                Op::Push { .. } => Value::List(Box::default()),
                _ => {
                    // A removal from what is not there: the key only takes the version.
                    let db = &mut self.dbs[self.selected];
                    match db.shards[shard].get_mut(&*key) {
                        Some(entry) => entry.version = version,
                        None => self.tombstone(key, version, source),
                    }
                    return;
                }
            };
            self.remove(&key);
            let entry = Entry {
                value: empty,
                expires_at_ms: None,
                version,
            };
            self.insert(source.keep(key.clone()), entry);
        }
        let db = &mut self.dbs[self.selected];
        let Some(entry) = db.shards[shard].get_mut(&*key) else {
            return;
        };
        // In place: each collection counts its bytes, so a large one is not re-measured.
        let before = entry.value.size();
        apply_delta(&mut entry.value, op, source);
        entry.version = version;
        let emptied = entry.value.is_empty_collection();
        self.used_bytes = self.used_bytes - before + entry.value.size();
        if emptied {
            self.remove(&key);
            self.tombstone(key, version, source);
        }
    }

    /// Stamps, applies and records a local write to the selected database.
    pub(crate) fn commit(&mut self, key: Bytes, op: Op, now_ms: u64) {
        if self.touched.is_some() {
            let existed = self.entry(&key, now_ms).is_some();
            self.commit_untracked(key.clone(), op, now_ms);
            let exists = self.entry(&key, now_ms).is_some();
            let db = self.selected;
            if let Some(touched) = self.touched.as_mut() {
                touched.push(Touched {
                    db,
                    key,
                    created: !existed && exists,
                    removed: existed && !exists,
                });
            }
            return;
        }
        self.commit_untracked(key, op, now_ms);
    }

    fn commit_untracked(&mut self, key: Bytes, op: Op, now_ms: u64) {
        let op = owned_op(op);
        let expired_copy = self.raw_entry(&key).is_some_and(|e| e.is_expired(now_ms));
        if expired_copy && op != Op::Delete {
            // A local write never builds on an expired copy kept for the grace period;
            // the partner is told to drop its copy too.
            self.stamp_and_apply(key.clone(), Op::Delete, now_ms);
        }
        self.stamp_and_apply(key, op, now_ms);
    }

    fn stamp_and_apply(&mut self, key: Bytes, op: Op, now_ms: u64) {
        let base = (self.recording && self.delta_bases && op.builds_on_value())
            .then(|| self.current_version(&key));
        let mutation = Mutation {
            key,
            version: self.clock.tick(now_ms),
            op,
            db: self.selected as u16,
            base,
        };
        // A fresh local version is always the newest: no need to look up the key's own.
        debug_assert!(
            mutation.version > self.current_version(&mutation.key),
            "a fresh local version is always the newest"
        );
        self.writes += 1;
        if self.recording {
            self.outbox.push(&mutation);
        }
        let Mutation {
            key, version, op, ..
        } = mutation;
        self.write(key, version, op, Source::Request);
    }

    fn check_size(&self, what: &'static str, bytes: &[u8]) -> Result<(), StoreError> {
        let max = self.limits.max_value_bytes;
        if bytes.len() > max {
            return Err(StoreError::TooLarge {
                what,
                size: bytes.len(),
                max,
            });
        }
        Ok(())
    }

    /// Refuses a write that would add `growth` bytes (and a key, if `new_key`) past the
    /// limits. Writes that shrink the store always pass.
    fn check_room(&self, growth: usize, new_key: bool) -> Result<(), StoreError> {
        if new_key && self.len >= self.limits.max_keys {
            return Err(StoreError::TooManyKeys {
                max: self.limits.max_keys,
            });
        }
        if growth > 0 && self.used_bytes.saturating_add(growth) > self.limits.max_memory_bytes {
            return Err(StoreError::OutOfMemory {
                max: self.limits.max_memory_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a write to the collection at `key` that leaves it holding `bytes` bytes of
    /// members (or fields, items) and grows the store by `growth` (beyond the key itself,
    /// counted here when `exists` is false).
    fn check_collection(
        &self,
        what: &'static str,
        key: &[u8],
        exists: bool,
        bytes: usize,
        mut growth: usize,
    ) -> Result<(), StoreError> {
        self.check_size("key", key)?;
        // A collection travels to the partner whole in a snapshot or repair: it must fit a
        // frame.
        if bytes > MAX_COLLECTION_BYTES {
            return Err(StoreError::TooLarge {
                what,
                size: bytes,
                max: MAX_COLLECTION_BYTES,
            });
        }
        if !exists {
            growth += KEY_OVERHEAD + key.len();
        }
        self.check_room(growth, !exists)
    }

    fn string(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        match self.entry(key, now_ms) {
            None => Ok(None),
            Some(Entry {
                value: Value::Str(value),
                ..
            }) => Ok(Some(value.clone())),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    fn hash(&self, key: &[u8], now_ms: u64) -> Result<Option<&FieldMap>, StoreError> {
        match self.entry(key, now_ms).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Hash(hash)) => Ok(Some(hash)),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    /// The set at `key`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for another type.
    pub fn set_at(&self, key: &[u8], now_ms: u64) -> Result<Option<&MemberSet>, StoreError> {
        match self.entry(key, now_ms).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Set(set)) => Ok(Some(set)),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    /// The sorted set at `key`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for another type.
    pub fn zset_at(&self, key: &[u8], now_ms: u64) -> Result<Option<&SortedSet>, StoreError> {
        match self.entry(key, now_ms).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::ZSet(zset)) => Ok(Some(zset)),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    /// The list at `key`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for another type.
    pub fn list_at(&self, key: &[u8], now_ms: u64) -> Result<Option<&ItemList>, StoreError> {
        match self.entry(key, now_ms).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::List(list)) => Ok(Some(list)),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    // ----- replication -----

    /// What this store holds of one key of database `db`, as a mutation carrying its
    /// version: the whole value of a live key, a delete for a deleted one (`None` when it
    /// knows nothing of it). Applied by a partner, it repairs the key.
    pub fn key_repair(&self, db: u16, key: &[u8], now_ms: u64) -> Option<Mutation> {
        let keys = self.dbs.get(usize::from(db))?;
        let shard = Self::shard_of(key);
        if let Some((key, entry)) = keys.shards[shard].get_key_value(key)
            && !entry.is_expired(now_ms)
        {
            return Some(Mutation {
                key: key.clone(),
                version: entry.version,
                op: entry.value.whole(entry.expires_at_ms),
                db,
                base: None,
            });
        }
        let (key, version) = keys.tombstones[shard].get_key_value(key)?;
        Some(Mutation {
            key: key.clone(),
            version: *version,
            op: Op::Delete,
            db,
            base: None,
        })
    }

    /// Part of a full copy of the store: every live key of the shards from `cursor` on, in
    /// every database, until about `max_keys`, as mutations carrying the keys' own
    /// versions. Returns the next cursor, `None` at the end.
    pub fn snapshot_chunk(
        &self,
        cursor: usize,
        max_keys: usize,
        now_ms: u64,
    ) -> (Option<usize>, Vec<Mutation>) {
        let mut mutations = Vec::new();
        let mut shard = cursor;
        while shard < SHARDS && mutations.len() < max_keys {
            mutations.extend(self.shard_snapshot(shard, now_ms));
            shard += 1;
        }
        ((shard < SHARDS).then_some(shard), mutations)
    }

    /// The live keys of one shard in every database, as mutations carrying their versions.
    fn shard_snapshot(&self, shard: usize, now_ms: u64) -> Vec<Mutation> {
        let mut mutations = Vec::new();
        for (db, keys) in self.dbs.iter().enumerate() {
            let live = keys.shards[shard]
                .iter()
                .filter(|(_, entry)| !entry.is_expired(now_ms));
            mutations.extend(live.map(|(key, entry)| Mutation {
                key: key.clone(),
                version: entry.version,
                op: entry.value.whole(entry.expires_at_ms),
                db: db as u16,
                base: None,
            }));
        }
        mutations
    }

    /// A digest of one shard of every database: its live keys and tombstones with their
    /// versions. Two stores agree on a shard when their digests are equal (the order of
    /// keys does not matter).
    pub fn shard_digest(&self, shard: usize, now_ms: u64) -> u64 {
        let mut digest = 0u64;
        for (db, keys) in self.dbs.iter().enumerate() {
            let live = keys.shards[shard]
                .iter()
                .filter(|(_, entry)| !entry.is_expired(now_ms))
                .map(|(key, entry)| entry_digest(db, key, entry.version, false));
            let deleted = keys.tombstones[shard]
                .iter()
                .map(|(key, version)| entry_digest(db, key, *version, true));
            digest = live.chain(deleted).fold(digest, u64::wrapping_add);
        }
        digest
    }

    /// Every key of one shard in every database with its version, live keys and deletes
    /// alike, without values: what anti-entropy compares before it sends values.
    pub fn shard_versions(&self, shard: usize, now_ms: u64) -> Vec<KeyVersion> {
        let mut versions = Vec::new();
        for (db, keys) in self.dbs.iter().enumerate() {
            let db = db as u16;
            let live = keys.shards[shard]
                .iter()
                .filter(|(_, entry)| !entry.is_expired(now_ms))
                .map(|(key, entry)| (db, key.clone(), entry.version));
            let deleted = keys.tombstones[shard]
                .iter()
                .map(|(key, version)| (db, key.clone(), *version));
            versions.extend(live.chain(deleted));
        }
        versions
    }

    /// Everything one shard holds in every database, as mutations carrying their versions:
    /// live keys as full values, deleted keys as deletes. Applied by a partner, it repairs
    /// the shard.
    pub fn shard_repair(&self, shard: usize, now_ms: u64) -> Vec<Mutation> {
        let mut mutations = self.shard_snapshot(shard, now_ms);
        for (db, keys) in self.dbs.iter().enumerate() {
            mutations.extend(
                keys.tombstones[shard]
                    .iter()
                    .map(|(key, version)| Mutation {
                        key: key.clone(),
                        version: *version,
                        op: Op::Delete,
                        db: db as u16,
                        base: None,
                    }),
            );
        }
        mutations
    }

    // ----- maintenance -----

    /// Removes up to `max` expired keys and forgets old tombstones; returns how many keys
    /// expired.
    pub fn sweep(&mut self, now_ms: u64, max: usize) -> usize {
        let selected = self.selected;
        let mut expired = 0;
        for db in 0..self.dbs.len() {
            self.selected = db;
            // Due once the grace period after the deadline is over.
            let Some(limit) = now_ms.checked_sub(EXPIRED_GRACE_MS) else {
                break;
            };
            let due: Vec<Bytes> = self.dbs[db]
                .due(limit)
                .take(max - expired)
                .cloned()
                .collect();
            for key in &due {
                self.expire_now(key);
            }
            expired += due.len();
            if expired >= max {
                break;
            }
        }
        self.selected = selected;
        if expired < max {
            for db in &mut self.dbs {
                for shard in &mut db.tombstones {
                    shard.retain(|_, version| version.millis + TOMBSTONE_TTL_MS > now_ms);
                }
            }
        }
        expired
    }
}

/// Whether a delta applies to a value as it is (a hash's fields to a hash, and so on).
fn delta_fits(op: &Op, value: &Value) -> bool {
    matches!(
        (op, value),
        (
            Op::SetFields { .. } | Op::DeleteFields { .. },
            Value::Hash(_)
        ) | (Op::AddMembers { .. }, Value::Set(_))
            | (Op::RemoveMembers { .. }, Value::Set(_) | Value::ZSet(_))
            | (Op::SetScores { .. }, Value::ZSet(_))
            | (
                Op::Push { .. } | Op::Pop { .. } | Op::SetItem { .. } | Op::Trim { .. },
                Value::List(_)
            )
    )
}

/// Applies a delta that [`delta_fits`] the value.
fn apply_delta(value: &mut Value, op: Op, source: Source) {
    match (value, op) {
        (Value::Hash(hash), Op::SetFields { fields }) => {
            // A field that is there keeps its name and takes the new value.
            for (field, value) in fields {
                if let Err(value) = hash.replace(&field, value) {
                    hash.insert(source.keep(field), value);
                }
            }
        }
        (Value::Hash(hash), Op::DeleteFields { fields }) => {
            for field in &fields {
                hash.remove(field);
            }
        }
        (Value::Set(set), Op::AddMembers { members }) => {
            for member in members {
                if !set.contains(&member) {
                    set.insert(source.keep(member));
                }
            }
        }
        (Value::Set(set), Op::RemoveMembers { members }) => {
            for member in &members {
                set.remove(member);
            }
        }
        (Value::ZSet(zset), Op::RemoveMembers { members }) => {
            for member in &members {
                zset.remove(member);
            }
        }
        (Value::ZSet(zset), Op::SetScores { members }) => {
            for (member, score) in members {
                let member = if zset.score(&member).is_some() {
                    member
                } else {
                    source.keep(member)
                };
                zset.insert(member, score.0);
            }
        }
        (Value::List(list), Op::Push { left, items }) => {
            for item in items {
                list.push(left, item);
            }
        }
        (Value::List(list), Op::Pop { left, count }) => {
            for _ in 0..count.min(list.len() as u64) {
                list.pop(left);
            }
        }
        (Value::List(list), Op::SetItem { index, value }) => {
            list.set(index as usize, value);
        }
        (Value::List(list), Op::Trim { start, len }) => {
            list.trim(start as usize, len as usize);
        }
        _ => {}
    }
}

#[cfg(test)]
impl Keyspace {
    /// Recomputes the accounting from scratch: (keys, bytes, keys with an expiry).
    pub fn recount(&self) -> (usize, usize, usize) {
        let entries = self
            .dbs
            .iter()
            .flat_map(|db| db.shards.iter().flat_map(|shard| shard.iter()));
        entries.fold((0, 0, 0), |(keys, bytes, expiring), (key, entry)| {
            (
                keys + 1,
                bytes + entry.size(key),
                expiring + usize::from(entry.expires_at_ms.is_some()),
            )
        })
    }

    /// Keys with an expiry in every database, expired copies included.
    pub fn expiring_total(&self) -> usize {
        self.dbs.iter().map(|db| db.expiries.len()).sum()
    }
}

/// One key's contribution to its shard's digest (64-bit FNV-1a over database, key, version
/// and whether it is deleted: stable across processes and releases).
fn entry_digest(db: usize, key: &[u8], version: Version, deleted: bool) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&(db as u16).to_be_bytes());
    feed(key);
    feed(&version.millis.to_be_bytes());
    feed(&version.counter.to_be_bytes());
    feed(&version.node.to_be_bytes());
    feed(&[u8::from(deleted)]);
    hash
}

/// Parses a decimal 64-bit integer as Redis does: no spaces, no `+`, no leading zeros.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || text == "-0"
    {
        return None;
    }
    text.parse().ok()
}

/// Parses a float as Redis' `strtold`-based parsers do: no spaces, not NaN; `inf`,
/// `+inf`, `-inf` (any case) allowed.
pub fn parse_f64(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty()
        || text.len() > 5120
        || text.starts_with(|c: char| c.is_ascii_whitespace())
        || text.ends_with(|c: char| c.is_ascii_whitespace())
    {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let value = match lower.as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ if lower.contains("nan") || lower.contains("inf") => return None,
        _ if lower.starts_with("0x") || lower.starts_with("-0x") || lower.starts_with("+0x") => {
            return None;
        }
        _ => text.parse().ok()?,
    };
    (!value.is_nan()).then_some(value)
}
