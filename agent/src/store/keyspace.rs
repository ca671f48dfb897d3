//! The keyspace: sessions in memory, with expiry, limits and versioned mutations.
//!
//! Pure data structure: the caller passes the current time and holds the lock. Every change
//! is a versioned mutation made by one function, for local writes (stamped with a new
//! version, always the newest) and for mutations received from a partner alike (applied
//! by [`Keyspace::apply`] only when newer than what the key holds), so both sides converge
//! on the same state.

use std::collections::BTreeSet;

use bytes::Bytes;
use tandem_common::frame::Writes;
use tandem_common::ops::{Mutation, Op};
use tandem_common::version::{HybridClock, Version, fnv1a, node_tag};

use super::glob::glob_match;

/// Most bytes of field names and values one hash holds: a hash travels whole in a
/// snapshot or repair frame ([`tandem_common::frame::MAX_FRAME_BYTES`]), with room left for
/// the encoding and other keys.
pub const MAX_HASH_BYTES: usize = tandem_common::frame::MAX_FRAME_BYTES / 2;

/// Keys are spread over this many shards; `SCAN` walks shard by shard, so a key present
/// for a whole scan is always returned.
pub const SHARDS: usize = 1024;
/// A shard's map from key to what it holds. foldhash, seeded per process, hashes a short
/// key several times faster than SipHash and still keeps an attacker from choosing keys
/// that collide. (hashbrown's map: it finds a key and its stored copy in one lookup.)
type KeyMap<V> = hashbrown::HashMap<Bytes, V, foldhash::fast::RandomState>;
pub use super::fields::FieldMap;
/// Bytes accounted for each key beyond its key and value bytes (map slot, entry, index).
const KEY_OVERHEAD: usize = 96;
/// Bytes accounted for each hash field beyond its name and value.
const FIELD_OVERHEAD: usize = 48;
/// How long a deleted key's version is remembered, so a late stale write cannot revive it.
pub const TOMBSTONE_TTL_MS: u64 = 10 * 60 * 1000;
/// How long an expired key is kept (never returned) before it is removed, so that a
/// partner's "touch" that crossed the deadline in flight still finds it: the writer of
/// the session decides whether it lives on, not the clock of the copy.
pub const EXPIRED_GRACE_MS: u64 = 30 * 1000;

/// A session's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(Bytes),
    /// Fields keep their insertion order while few, as Redis' small hashes do. Boxed: the
    /// map is larger than a string's `Bytes`, and every key's slot would pay for it.
    Hash(Box<FieldMap>),
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
        KEY_OVERHEAD
            + key.len()
            + match &self.value {
                Value::Str(value) => value.len(),
                Value::Hash(fields) => hash_size(fields),
            }
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A copy of `bytes` in an allocation of its own.
///
/// Keys and values of local writes arrive as slices of a connection's read buffer; storing
/// the slice would keep that whole buffer alive for as long as the session lives. Values
/// are copied when the write is committed; keys and field names only where the store
/// keeps them, for an existing key or field keeps the store's own (see [`Source`]).
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

/// `op` with every value in an allocation of its own, and the field names of a whole hash
/// (those of [`Op::SetFields`] are copied where they are kept, and those of
/// [`Op::DeleteFields`] are only looked up).
fn owned_op(op: Op) -> Op {
    let pairs = |fields: Vec<(Bytes, Bytes)>| -> Vec<(Bytes, Bytes)> {
        fields.iter().map(|(f, v)| (owned(f), owned(v))).collect()
    };
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
            fields: pairs(fields),
            expires_at_ms,
        },
        Op::SetFields { fields } => Op::SetFields {
            fields: fields.into_iter().map(|(f, v)| (f, owned(&v))).collect(),
        },
        op @ (Op::DeleteFields { .. } | Op::Delete | Op::Expire { .. }) => op,
    }
}

fn field_size(field: &[u8], value: &[u8]) -> usize {
    FIELD_OVERHEAD + field.len() + value.len()
}

/// Bytes accounted for a hash's fields: [`field_size`] of each, kept up to date by the map.
fn hash_size(fields: &FieldMap) -> usize {
    fields.bytes() + fields.len() * FIELD_OVERHEAD
}

/// Store limits. Writes past a limit fail; nothing is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, string value, hash field name or field value, in bytes.
    pub max_value_bytes: usize,
    /// Total accounted memory for sessions, in bytes.
    pub max_memory_bytes: usize,
    /// Most keys.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1 << 20,
            max_memory_bytes: usize::MAX,
            max_keys: usize::MAX,
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("value is not an integer or out of range")]
    NotInteger,
    #[error("hash value is not an integer")]
    HashNotInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
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

/// `EXPIRE`'s `NX`/`XX`/`GT`/`LT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    Always,
    /// Only if the key has no expiry.
    IfNone,
    /// Only if the key has an expiry.
    IfSome,
    /// Only if the new expiry is later (no expiry counts as infinitely late).
    IfLater,
    /// Only if the new expiry is earlier.
    IfEarlier,
}

/// Type filter and kind names as `TYPE` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Hash,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
        }
    }

    fn of(value: &Value) -> Kind {
        match value {
            Value::Str(_) => Kind::String,
            Value::Hash(_) => Kind::Hash,
        }
    }
}

/// All sessions of one agent.
pub struct Keyspace {
    shards: Vec<KeyMap<Entry>>,
    /// Versions of deleted keys, by shard like the keys themselves.
    tombstones: Vec<KeyMap<Version>>,
    /// (deadline, key) for every key with an expiry.
    expiries: BTreeSet<(u64, Bytes)>,
    used_bytes: usize,
    len: usize,
    clock: HybridClock,
    limits: Limits,
    /// Mutations made by local writes since the caller last took them, encoded for the
    /// partner as they are made: the store never shares a value with a mutation.
    outbox: Writes,
    /// Whether local writes go to the outbox. Off while nobody replicates them (a lone
    /// agent). Whoever turns it on must read the store afterwards (a snapshot) to cover the
    /// writes made before.
    recording: bool,
    /// Local writes made so far, recorded or not.
    writes: u64,
}

impl Keyspace {
    pub fn new(node_id: &str, limits: Limits) -> Self {
        Keyspace {
            shards: (0..SHARDS).map(|_| KeyMap::default()).collect(),
            tombstones: (0..SHARDS).map(|_| KeyMap::default()).collect(),
            expiries: BTreeSet::new(),
            used_bytes: 0,
            len: 0,
            clock: HybridClock::new(node_tag(node_id)),
            limits,
            outbox: Writes::default(),
            recording: true,
            writes: 0,
        }
    }

    /// Turns the recording of local writes as mutations on or off (on for a new keyspace).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.outbox.clear();
        }
    }

    /// Local writes made so far, recorded or not.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many keys have an expiry.
    pub fn expiring(&self) -> usize {
        self.expiries.len()
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Swaps the outbox with `writes`: given before a command, the command's writes go
    /// straight to the end of the caller's, and taken back after it.
    pub fn swap_outbox(&mut self, writes: &mut Writes) {
        std::mem::swap(&mut self.outbox, writes);
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
        self.shards[Self::shard_of(key)].get(key)
    }

    fn expire_now(&mut self, key: &[u8]) {
        if let Some((key, entry)) = self.remove(key) {
            // An expired key keeps its version so that no older write revives it.
            self.tombstones[Self::shard_of(&key)].insert(key, entry.version);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<(Bytes, Entry)> {
        let (key, entry) = self.shards[Self::shard_of(key)].remove_entry(key)?;
        self.used_bytes -= entry.size(&key);
        self.len -= 1;
        if let Some(at) = entry.expires_at_ms {
            self.expiries.remove(&(at, key.clone()));
        }
        Some((key, entry))
    }

    fn insert(&mut self, key: Bytes, entry: Entry) {
        self.tombstones[Self::shard_of(&key)].remove(&key);
        if let Some(at) = entry.expires_at_ms {
            self.expiries.insert((at, key.clone()));
        }
        self.used_bytes += entry.size(&key);
        self.len += 1;
        self.shards[Self::shard_of(&key)].insert(key, entry);
    }

    /// Stores `entry` under `key`, replacing what is there. An existing key is overwritten
    /// in place: the map keeps its own copy of the key and its slot.
    fn put(&mut self, key: Bytes, entry: Entry, source: Source) {
        let shard = Self::shard_of(&key);
        let Some((stored, current)) = self.shards[shard].get_key_value_mut(&*key) else {
            self.insert(source.keep(key), entry);
            return;
        };
        self.used_bytes = self.used_bytes - current.size(stored) + entry.size(stored);
        if current.expires_at_ms != entry.expires_at_ms {
            if let Some(at) = current.expires_at_ms {
                self.expiries.remove(&(at, stored.clone()));
            }
            if let Some(at) = entry.expires_at_ms {
                self.expiries.insert((at, stored.clone()));
            }
        }
        *current = entry;
    }

    fn current_version(&self, key: &[u8]) -> Version {
        self.raw_entry(key)
            .map(|entry| entry.version)
            .or_else(|| self.tombstones[Self::shard_of(key)].get(key).copied())
            .unwrap_or(Version::ZERO)
    }

    /// Applies a mutation unless the key already holds the same or a newer version.
    /// Returns whether it was applied.
    pub fn apply(&mut self, mutation: Mutation) -> bool {
        self.clock.observe(mutation.version);
        if mutation.version <= self.current_version(&mutation.key) {
            return false;
        }
        let Mutation { key, version, op } = mutation;
        self.write(key, version, op, Source::Partner);
        true
    }

    /// Makes the change a mutation describes, whatever version the key holds. The store
    /// takes the values as they are; a key or field name only where it is new (an existing
    /// one keeps the store's copy), copied first when it comes from a request.
    fn write(&mut self, key: Bytes, version: Version, op: Op, source: Source) {
        match op {
            Op::Set {
                value,
                expires_at_ms,
            } => {
                let entry = Entry {
                    value: Value::Str(value),
                    expires_at_ms,
                    version,
                };
                self.put(key, entry, source);
            }
            Op::SetHash {
                fields,
                expires_at_ms,
            } => {
                let entry = Entry {
                    value: Value::Hash(Box::new(fields.into_iter().collect())),
                    expires_at_ms,
                    version,
                };
                self.put(key, entry, source);
            }
            Op::SetFields { fields } => {
                let shard = Self::shard_of(&key);
                if let Some(Entry {
                    value: Value::Hash(hash),
                    version: current,
                    ..
                }) = self.shards[shard].get_mut(&*key)
                {
                    // In place: the map counts its bytes, so a large hash is not re-measured.
                    // A field that is there keeps its name and takes the new value.
                    let before = hash_size(hash);
                    for (field, value) in fields {
                        if let Err(value) = hash.replace(&field, value) {
                            hash.insert(source.keep(field), value);
                        }
                    }
                    self.used_bytes = self.used_bytes - before + hash_size(hash);
                    *current = version;
                } else {
                    // Absent, or a string that a newer hash write replaces.
                    self.remove(&key);
                    let fields = fields.into_iter().map(|(f, v)| (source.keep(f), v));
                    let entry = Entry {
                        value: Value::Hash(Box::new(fields.collect())),
                        expires_at_ms: None,
                        version,
                    };
                    self.insert(source.keep(key), entry);
                }
            }
            Op::DeleteFields { fields } => {
                let shard = Self::shard_of(&key);
                let emptied = match self.shards[shard].get_mut(&*key) {
                    Some(Entry {
                        value: Value::Hash(hash),
                        version: current,
                        ..
                    }) => {
                        let before = hash_size(hash);
                        for field in &fields {
                            hash.remove(field);
                        }
                        self.used_bytes = self.used_bytes - before + hash_size(hash);
                        *current = version;
                        hash.is_empty()
                    }
                    Some(entry) => {
                        entry.version = version;
                        false
                    }
                    None => true,
                };
                if emptied {
                    self.remove(&key);
                    self.tombstones[Self::shard_of(&key)].insert(source.keep(key), version);
                }
            }
            Op::Delete => {
                self.remove(&key);
                self.tombstones[Self::shard_of(&key)].insert(source.keep(key), version);
            }
            Op::Expire { expires_at_ms } => {
                let shard = Self::shard_of(&key);
                // The index shares the map's own copy of the key.
                if let Some((stored, entry)) = self.shards[shard].get_key_value_mut(&*key) {
                    if let Some(old) = entry.expires_at_ms {
                        self.expiries.remove(&(old, stored.clone()));
                    }
                    if let Some(new) = expires_at_ms {
                        self.expiries.insert((new, stored.clone()));
                    }
                    entry.expires_at_ms = expires_at_ms;
                    entry.version = version;
                }
            }
        }
    }

    /// Stamps, applies and records a local write.
    fn commit(&mut self, key: Bytes, op: Op, now_ms: u64) {
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
        let mutation = Mutation {
            key,
            version: self.clock.tick(now_ms),
            op,
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
        let Mutation { key, version, op } = mutation;
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

    fn string(&mut self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        match self.entry(key, now_ms) {
            None => Ok(None),
            Some(Entry {
                value: Value::Str(value),
                ..
            }) => Ok(Some(value.clone())),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    fn hash(&mut self, key: &[u8], now_ms: u64) -> Result<Option<&FieldMap>, StoreError> {
        match self.entry(key, now_ms) {
            None => Ok(None),
            Some(Entry {
                value: Value::Hash(hash),
                ..
            }) => Ok(Some(hash)),
            Some(_) => Err(StoreError::WrongType),
        }
    }

    // ----- strings -----

    /// `GET`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a hash.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        self.string(key, now_ms)
    }

    /// `SET` with its options. Returns whether the value was written and, if `get`, the
    /// previous value.
    ///
    /// # Errors
    /// Size and memory limits; [`StoreError::WrongType`] when `get` meets a hash.
    pub fn set(
        &mut self,
        key: Bytes,
        value: Bytes,
        expiry: SetExpiry,
        condition: SetCondition,
        get: bool,
        now_ms: u64,
    ) -> Result<(bool, Option<Bytes>), StoreError> {
        let previous = if get {
            self.string(&key, now_ms)?
        } else {
            None
        };
        let existing = self
            .entry(&key, now_ms)
            .map(|e| (e.expires_at_ms, e.size(&key)));
        let allowed = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => existing.is_none(),
            SetCondition::IfPresent => existing.is_some(),
        };
        if !allowed {
            return Ok((false, previous));
        }
        self.check_size("key", &key)?;
        self.check_size("value", &value)?;
        let expires_at_ms = match expiry {
            SetExpiry::None => None,
            SetExpiry::Keep => existing.and_then(|(at, _)| at),
            SetExpiry::At(at) => Some(at),
        };
        if expires_at_ms.is_some_and(|at| at <= now_ms) {
            // Already expired: the write is a delete.
            if existing.is_some() {
                self.commit(key, Op::Delete, now_ms);
            }
            return Ok((true, previous));
        }
        let old_size = existing.map_or(0, |(_, size)| size);
        let new_size = KEY_OVERHEAD + key.len() + value.len();
        self.check_room(new_size.saturating_sub(old_size), existing.is_none())?;
        self.commit(
            key,
            Op::Set {
                value,
                expires_at_ms,
            },
            now_ms,
        );
        Ok((true, previous))
    }

    /// `MSET`: all keys or none (limits are checked before anything is written).
    ///
    /// # Errors
    /// Size, key and memory limits.
    pub fn mset(&mut self, pairs: Vec<(Bytes, Bytes)>, now_ms: u64) -> Result<(), StoreError> {
        let mut growth = 0usize;
        let mut new_keys = 0;
        for (key, value) in &pairs {
            self.check_size("key", key)?;
            self.check_size("value", value)?;
            let old = self.entry(key, now_ms).map(|e| e.size(key));
            new_keys += usize::from(old.is_none());
            growth += (KEY_OVERHEAD + key.len() + value.len()).saturating_sub(old.unwrap_or(0));
        }
        if new_keys > 0 && self.len + new_keys > self.limits.max_keys {
            return Err(StoreError::TooManyKeys {
                max: self.limits.max_keys,
            });
        }
        self.check_room(growth, false)?;
        for (key, value) in pairs {
            self.commit(
                key,
                Op::Set {
                    value,
                    expires_at_ms: None,
                },
                now_ms,
            );
        }
        Ok(())
    }

    /// `GETDEL`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a hash.
    pub fn getdel(&mut self, key: Bytes, now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        let value = self.string(&key, now_ms)?;
        if value.is_some() {
            self.commit(key, Op::Delete, now_ms);
        }
        Ok(value)
    }

    /// `INCRBY` (and `INCR`, `DECR`): the key keeps its expiry.
    ///
    /// # Errors
    /// A value that is not a 64-bit integer, overflow, a hash.
    pub fn incr_by(&mut self, key: Bytes, delta: i64, now_ms: u64) -> Result<i64, StoreError> {
        let (current, expires_at_ms, existed) = match self.entry(&key, now_ms) {
            None => (0, None, false),
            Some(Entry {
                value: Value::Str(value),
                expires_at_ms,
                ..
            }) => (
                parse_i64(value).ok_or(StoreError::NotInteger)?,
                *expires_at_ms,
                true,
            ),
            Some(_) => return Err(StoreError::WrongType),
        };
        let next = current.checked_add(delta).ok_or(StoreError::Overflow)?;
        let value = Bytes::from(next.to_string());
        if !existed {
            self.check_room(KEY_OVERHEAD + key.len() + value.len(), true)?;
        }
        self.commit(
            key,
            Op::Set {
                value,
                expires_at_ms,
            },
            now_ms,
        );
        Ok(next)
    }

    // ----- keys -----

    /// `DEL`/`UNLINK`: how many of the keys existed.
    pub fn delete(&mut self, keys: &[Bytes], now_ms: u64) -> usize {
        let mut deleted = 0;
        for key in keys {
            if self.entry(key, now_ms).is_some() {
                self.commit(key.clone(), Op::Delete, now_ms);
                deleted += 1;
            }
        }
        deleted
    }

    /// `EXISTS`: how many of the keys exist (a key named twice counts twice).
    pub fn exists(&mut self, keys: &[Bytes], now_ms: u64) -> usize {
        keys.iter()
            .filter(|key| self.entry(key, now_ms).is_some())
            .count()
    }

    /// `TYPE`.
    pub fn kind(&mut self, key: &[u8], now_ms: u64) -> Option<Kind> {
        self.entry(key, now_ms).map(|entry| Kind::of(&entry.value))
    }

    /// `EXPIRE` and friends: sets the expiry to `at_ms` if `condition` allows; a deadline
    /// already past deletes the key. Returns whether anything changed.
    pub fn expire(
        &mut self,
        key: Bytes,
        at_ms: u64,
        condition: ExpireCondition,
        now_ms: u64,
    ) -> bool {
        let Some(current) = self.entry(&key, now_ms).map(|e| e.expires_at_ms) else {
            return false;
        };
        let allowed = match (condition, current) {
            (ExpireCondition::Always, _) => true,
            (ExpireCondition::IfNone, current) => current.is_none(),
            (ExpireCondition::IfSome, current) => current.is_some(),
            (ExpireCondition::IfLater, None) => false,
            (ExpireCondition::IfLater, Some(current)) => at_ms > current,
            (ExpireCondition::IfEarlier, None) => true,
            (ExpireCondition::IfEarlier, Some(current)) => at_ms < current,
        };
        if !allowed {
            return false;
        }
        if at_ms <= now_ms {
            self.commit(key, Op::Delete, now_ms);
        } else {
            self.commit(
                key,
                Op::Expire {
                    expires_at_ms: Some(at_ms),
                },
                now_ms,
            );
        }
        true
    }

    /// `PERSIST`: whether an expiry was removed.
    pub fn persist(&mut self, key: Bytes, now_ms: u64) -> bool {
        match self.entry(&key, now_ms) {
            Some(Entry {
                expires_at_ms: Some(_),
                ..
            }) => {
                self.commit(
                    key,
                    Op::Expire {
                        expires_at_ms: None,
                    },
                    now_ms,
                );
                true
            }
            _ => false,
        }
    }

    /// Milliseconds to live: `-2` without the key, `-1` without an expiry.
    pub fn pttl(&mut self, key: &[u8], now_ms: u64) -> i64 {
        match self.entry(key, now_ms) {
            None => -2,
            Some(Entry {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Entry {
                expires_at_ms: Some(at),
                ..
            }) => (at - now_ms) as i64,
        }
    }

    /// `SCAN`: keys of the shards from `cursor` on, until about `count` keys are collected;
    /// the next cursor is 0 at the end.
    pub fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        kind: Option<&[u8]>,
        now_ms: u64,
    ) -> (u64, Vec<Bytes>) {
        let mut keys = Vec::new();
        let mut shard = cursor as usize;
        while shard < SHARDS && keys.len() < count.max(1) {
            keys.extend(self.matching(shard, pattern, kind, now_ms));
            shard += 1;
        }
        let next = if shard >= SHARDS { 0 } else { shard as u64 };
        (next, keys)
    }

    /// `KEYS`.
    pub fn keys(&mut self, pattern: &[u8], now_ms: u64) -> Vec<Bytes> {
        (0..SHARDS)
            .flat_map(|shard| self.matching(shard, Some(pattern), None, now_ms))
            .collect()
    }

    fn matching(
        &self,
        shard: usize,
        pattern: Option<&[u8]>,
        kind: Option<&[u8]>,
        now_ms: u64,
    ) -> Vec<Bytes> {
        self.shards[shard]
            .iter()
            .filter(|(key, entry)| {
                !entry.is_expired(now_ms)
                    && pattern.is_none_or(|p| glob_match(p, key))
                    && kind.is_none_or(|k| {
                        k.eq_ignore_ascii_case(Kind::of(&entry.value).name().as_bytes())
                    })
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    // ----- hashes -----

    /// `HSET`: how many fields are new.
    ///
    /// # Errors
    /// Size and memory limits; [`StoreError::WrongType`] for a string.
    pub fn hset(
        &mut self,
        key: Bytes,
        fields: Vec<(Bytes, Bytes)>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        self.check_size("key", &key)?;
        let mut growth = 0;
        let mut added = 0;
        let exists;
        // The hash's field names and values after the write, at most.
        let mut hash_bytes;
        {
            let hash = self.hash(&key, now_ms)?;
            exists = hash.is_some();
            hash_bytes = hash.map_or(0, FieldMap::bytes);
            for (i, (field, value)) in fields.iter().enumerate() {
                // A field named twice in one call is new once (calls name few fields).
                let seen_before = fields[..i].iter().any(|(f, _)| f == field);
                match hash.and_then(|h| h.get(field)) {
                    Some(old) => {
                        growth += value.len().saturating_sub(old.len());
                        hash_bytes = hash_bytes + value.len() - old.len();
                    }
                    None if !seen_before => {
                        growth += field_size(field, value);
                        hash_bytes += field.len() + value.len();
                        added += 1;
                    }
                    None => {
                        growth += value.len();
                        hash_bytes += value.len();
                    }
                }
            }
        }
        // A hash travels to the partner whole in a snapshot or repair: it must fit a frame.
        if hash_bytes > MAX_HASH_BYTES {
            return Err(StoreError::TooLarge {
                what: "hash",
                size: hash_bytes,
                max: MAX_HASH_BYTES,
            });
        }
        for (field, value) in &fields {
            self.check_size("field", field)?;
            self.check_size("value", value)?;
        }
        if !exists {
            growth += KEY_OVERHEAD + key.len();
        }
        self.check_room(growth, !exists)?;
        self.commit(key, Op::SetFields { fields }, now_ms);
        Ok(added)
    }

    /// `HSETNX`: whether the field was set.
    ///
    /// # Errors
    /// As [`Keyspace::hset`].
    pub fn hsetnx(
        &mut self,
        key: Bytes,
        field: Bytes,
        value: Bytes,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if self
            .hash(&key, now_ms)?
            .is_some_and(|h| h.contains_key(&field))
        {
            return Ok(false);
        }
        self.hset(key, vec![(field, value)], now_ms)?;
        Ok(true)
    }

    /// `HGET`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a string.
    pub fn hget(
        &mut self,
        key: &[u8],
        field: &[u8],
        now_ms: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        Ok(self.hash(key, now_ms)?.and_then(|h| h.get(field).cloned()))
    }

    /// `HGETALL` and the basis of `HKEYS`, `HVALS`, `HLEN`, `HMGET`, `HEXISTS`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a string.
    pub fn hgetall(&mut self, key: &[u8], now_ms: u64) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        Ok(self
            .hash(key, now_ms)?
            .map(|h| h.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    /// Runs `read` over the hash at `key` (empty when absent).
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a string.
    pub fn with_hash<T>(
        &mut self,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(Option<&FieldMap>) -> T,
    ) -> Result<T, StoreError> {
        Ok(read(self.hash(key, now_ms)?))
    }

    /// `HDEL`: how many of the fields existed.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a string.
    pub fn hdel(
        &mut self,
        key: Bytes,
        fields: Vec<Bytes>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let Some(hash) = self.hash(&key, now_ms)? else {
            return Ok(0);
        };
        let present: Vec<Bytes> = fields
            .into_iter()
            .filter(|f| hash.contains_key(f))
            .collect::<indexmap::IndexSet<_>>()
            .into_iter()
            .collect();
        let removed = present.len();
        if removed > 0 {
            self.commit(key, Op::DeleteFields { fields: present }, now_ms);
        }
        Ok(removed)
    }

    /// `HINCRBY`.
    ///
    /// # Errors
    /// A field that is not a 64-bit integer, overflow, a string, limits.
    pub fn hincr_by(
        &mut self,
        key: Bytes,
        field: Bytes,
        delta: i64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let current = match self.hash(&key, now_ms)?.and_then(|h| h.get(&field)) {
            None => 0,
            Some(value) => parse_i64(value).ok_or(StoreError::HashNotInteger)?,
        };
        let next = current.checked_add(delta).ok_or(StoreError::Overflow)?;
        self.hset(key, vec![(field, Bytes::from(next.to_string()))], now_ms)?;
        Ok(next)
    }

    // ----- replication -----

    /// Part of a full copy of the store: every live key of the shards from `cursor` on,
    /// until about `max_keys`, as mutations carrying the keys' own versions. Returns the
    /// next cursor, `None` at the end.
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

    /// The live keys of one shard as mutations carrying their own versions.
    fn shard_snapshot(&self, shard: usize, now_ms: u64) -> Vec<Mutation> {
        self.shards[shard]
            .iter()
            .filter(|(_, entry)| !entry.is_expired(now_ms))
            .map(|(key, entry)| {
                let op = match &entry.value {
                    Value::Str(value) => Op::Set {
                        value: value.clone(),
                        expires_at_ms: entry.expires_at_ms,
                    },
                    Value::Hash(hash) => Op::SetHash {
                        fields: hash.iter().map(|(f, v)| (f.clone(), v.clone())).collect(),
                        expires_at_ms: entry.expires_at_ms,
                    },
                };
                Mutation {
                    key: key.clone(),
                    version: entry.version,
                    op,
                }
            })
            .collect()
    }

    /// A digest of one shard: its live keys and tombstones with their versions. Two
    /// stores agree on a shard when their digests are equal (the order of keys does not
    /// matter).
    pub fn shard_digest(&self, shard: usize, now_ms: u64) -> u64 {
        let live = self.shards[shard]
            .iter()
            .filter(|(_, entry)| !entry.is_expired(now_ms))
            .map(|(key, entry)| entry_digest(key, entry.version, false));
        let deleted = self.tombstones[shard]
            .iter()
            .map(|(key, version)| entry_digest(key, *version, true));
        live.chain(deleted).fold(0u64, u64::wrapping_add)
    }

    /// Everything one shard holds, as mutations carrying their versions: live keys as
    /// full values, deleted keys as deletes. Applied by a partner, it repairs the shard.
    pub fn shard_repair(&self, shard: usize, now_ms: u64) -> Vec<Mutation> {
        let mut mutations = self.shard_snapshot(shard, now_ms);
        mutations.extend(
            self.tombstones[shard]
                .iter()
                .map(|(key, version)| Mutation {
                    key: key.clone(),
                    version: *version,
                    op: Op::Delete,
                }),
        );
        mutations
    }

    // ----- maintenance -----

    /// Removes up to `max` expired keys and forgets old tombstones; returns how many keys
    /// expired.
    pub fn sweep(&mut self, now_ms: u64, max: usize) -> usize {
        let due: Vec<Bytes> = self
            .expiries
            .iter()
            .take_while(|(at, _)| at.saturating_add(EXPIRED_GRACE_MS) <= now_ms)
            .take(max)
            .map(|(_, key)| key.clone())
            .collect();
        for key in &due {
            self.expire_now(key);
        }
        if due.len() < max {
            for shard in &mut self.tombstones {
                shard.retain(|_, version| version.millis + TOMBSTONE_TTL_MS > now_ms);
            }
        }
        due.len()
    }
}

#[cfg(test)]
impl Keyspace {
    /// Recomputes the accounting from scratch: (keys, bytes, keys with an expiry).
    pub fn recount(&self) -> (usize, usize, usize) {
        let entries = self.shards.iter().flat_map(|shard| shard.iter());
        entries.fold((0, 0, 0), |(keys, bytes, expiring), (key, entry)| {
            (
                keys + 1,
                bytes + entry.size(key),
                expiring + usize::from(entry.expires_at_ms.is_some()),
            )
        })
    }
}

/// One key's contribution to its shard's digest (64-bit FNV-1a over key, version and
/// whether it is deleted: stable across processes and releases).
fn entry_digest(key: &[u8], version: Version, deleted: bool) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(key);
    feed(&version.millis.to_be_bytes());
    feed(&version.counter.to_be_bytes());
    feed(&version.node.to_be_bytes());
    feed(&[u8::from(deleted)]);
    hash
}

/// Parses a decimal 64-bit integer as Redis does: no spaces, no `+`, no leading zeros.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
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
