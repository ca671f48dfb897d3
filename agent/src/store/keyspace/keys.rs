//! Commands on keys whatever they hold: DEL EXISTS TYPE EXPIRE PERSIST TTL SCAN KEYS RENAME
//! COPY RANDOMKEY FLUSHDB FLUSHALL, and what WATCH and OBJECT read.

use bytes::Bytes;
use tandem_common::ops::Op;
use tandem_common::version::Version;

use super::{Entry, ExpireCondition, Keyspace, Kind, SHARDS, StoreError, Value, glob_match};

/// What `WATCH` remembers of a key: the version it held and whether it was live. `EXEC`
/// runs only if both are unchanged, so any write to the key (local, a partner's, an
/// expiry) aborts the transaction, and a command that changed nothing does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchMark {
    version: Version,
    live: bool,
}

/// What `OBJECT` reports of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    pub encoding: &'static str,
}

impl Keyspace {
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
    pub fn exists(&self, keys: &[Bytes], now_ms: u64) -> usize {
        keys.iter()
            .filter(|key| self.entry(key, now_ms).is_some())
            .count()
    }

    /// `TYPE`.
    pub fn kind(&self, key: &[u8], now_ms: u64) -> Option<Kind> {
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
        if !condition.allows(current, at_ms) {
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
    pub fn pttl(&self, key: &[u8], now_ms: u64) -> i64 {
        match self.expire_time(key, now_ms) {
            at if at < 0 => at,
            at => at - now_ms as i64,
        }
    }

    /// The deadline in ms since the epoch (`PEXPIRETIME`): `-2` without the key, `-1`
    /// without an expiry.
    pub fn expire_time(&self, key: &[u8], now_ms: u64) -> i64 {
        match self.entry(key, now_ms) {
            None => -2,
            Some(Entry {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Entry {
                expires_at_ms: Some(at),
                ..
            }) => *at as i64,
        }
    }

    /// `SCAN`: keys of the shards from `cursor` on, until about `count` keys are collected;
    /// the next cursor is 0 at the end.
    pub fn scan(
        &self,
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
    pub fn keys(&self, pattern: &[u8], now_ms: u64) -> Vec<Bytes> {
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
        self.db().shards[shard]
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

    /// `RANDOMKEY`: a live key of the selected database, `None` when it has none. `pick`
    /// chooses the shard to start from.
    pub fn random_key(&self, pick: usize, now_ms: u64) -> Option<Bytes> {
        if self.db_len(now_ms) == 0 {
            return None;
        }
        (0..SHARDS).find_map(|i| {
            let shard = &self.db().shards[(pick + i) % SHARDS];
            shard
                .iter()
                .find(|(_, entry)| !entry.is_expired(now_ms))
                .map(|(key, _)| key.clone())
        })
    }

    /// `RENAME` (and `RENAMENX` with `only_new`): moves the value and its expiry; whether
    /// it moved (`RENAMENX` onto an existing key does not).
    ///
    /// # Errors
    /// [`StoreError::NoSuchKey`] without the source key; the destination's size limits.
    pub fn rename(
        &mut self,
        from: Bytes,
        to: Bytes,
        only_new: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some(entry) = self.entry(&from, now_ms) else {
            return Err(StoreError::NoSuchKey);
        };
        let dest = self.entry(&to, now_ms);
        if only_new && dest.is_some() {
            return Ok(false);
        }
        if from == to {
            return Ok(true);
        }
        self.check_size("key", &to)?;
        let op = entry.value.whole(entry.expires_at_ms);
        // The value moves: the store grows only by the difference of the key names.
        let growth = to.len().saturating_sub(from.len());
        let replaced = dest.map_or(0, |d| d.size(&to));
        self.check_room(growth.saturating_sub(replaced), false)?;
        self.commit(from, Op::Delete, now_ms);
        self.commit(to, op, now_ms);
        Ok(true)
    }

    /// `COPY source destination [DB n] [REPLACE]`: whether it copied.
    ///
    /// # Errors
    /// [`StoreError::DbOutOfRange`]; size, key and memory limits.
    pub fn copy(
        &mut self,
        from: &[u8],
        to: Bytes,
        db: Option<usize>,
        replace: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let source_db = self.selected;
        let target_db = db.unwrap_or(source_db);
        if target_db >= self.limits.databases {
            return Err(StoreError::DbOutOfRange);
        }
        let Some(entry) = self.entry(from, now_ms) else {
            return Ok(false);
        };
        if target_db == source_db && from == &to[..] {
            return Ok(false);
        }
        let op = entry.value.whole(entry.expires_at_ms);
        let size = entry.size(&to);
        self.open(target_db);
        let result = (|| {
            let existing = self.entry(&to, now_ms).map(|e| e.size(&to));
            if existing.is_some() && !replace {
                return Ok(false);
            }
            self.check_size("key", &to)?;
            self.check_room(
                size.saturating_sub(existing.unwrap_or(0)),
                existing.is_none(),
            )?;
            self.commit(to, op, now_ms);
            Ok(true)
        })();
        self.open(source_db);
        result
    }

    /// `FLUSHDB`: deletes every key of the selected database (each a delete the partner
    /// applies, so that anti-entropy sees the same tombstones on both sides); how many.
    pub fn flush_db(&mut self, now_ms: u64) -> usize {
        let keys: Vec<Bytes> = self
            .db()
            .shards
            .iter()
            .flat_map(|shard| shard.keys().cloned())
            .collect();
        for key in &keys {
            self.commit(key.clone(), Op::Delete, now_ms);
        }
        keys.len()
    }

    /// `FLUSHALL`: [`Keyspace::flush_db`] of every database.
    pub fn flush_all(&mut self, now_ms: u64) -> usize {
        let selected = self.selected;
        let mut flushed = 0;
        for db in 0..self.dbs.len() {
            self.selected = db;
            flushed += self.flush_db(now_ms);
        }
        self.selected = selected;
        flushed
    }

    /// What `WATCH` remembers of `key`.
    pub fn watch_mark(&self, key: &[u8], now_ms: u64) -> WatchMark {
        WatchMark {
            version: self.current_version(key),
            live: self.entry(key, now_ms).is_some(),
        }
    }

    /// Whether `key` changed since `mark` was taken: a new version, or it was live and has
    /// expired since.
    pub fn changed_since(&self, key: &[u8], mark: WatchMark, now_ms: u64) -> bool {
        let now = self.watch_mark(key, now_ms);
        now.version != mark.version || (mark.live && !now.live)
    }

    /// `OBJECT ENCODING`: Redis' name for how it would hold the value.
    pub fn key_info(&self, key: &[u8], now_ms: u64) -> Option<KeyInfo> {
        let entry = self.entry(key, now_ms)?;
        let encoding = match &entry.value {
            Value::Str(value) if value.len() <= 20 && super::parse_i64(value).is_some() => "int",
            Value::Str(value) if value.len() <= 44 => "embstr",
            Value::Str(_) => "raw",
            Value::Hash(hash)
                if hash.len() <= super::super::fields::ORDERED_FIELDS
                    && hash.iter().all(|(f, v)| f.len() <= 64 && v.len() <= 64) =>
            {
                "listpack"
            }
            Value::Hash(_) => "hashtable",
            Value::Set(set) => set.encoding(),
            Value::ZSet(zset) => zset.encoding(),
            Value::List(_) => "quicklist",
        };
        Some(KeyInfo { encoding })
    }
}
