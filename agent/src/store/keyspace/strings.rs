//! String commands: GET SET MSET MSETNX GETDEL INCRBY INCRBYFLOAT APPEND SETRANGE
//! GETRANGE STRLEN SETBIT GETBIT BITCOUNT.

use bytes::{Bytes, BytesMut};
use tandem_common::ops::Op;

use super::{Entry, KEY_OVERHEAD, Keyspace, SetCondition, SetExpiry, StoreError, Value, parse_i64};
use crate::store::long_double;

/// Redis' largest string (`proto-max-bulk-len`, 512 MB): `SETRANGE` and `SETBIT` may not
/// grow one past it.
const MAX_STRING: usize = 512 * 1024 * 1024;

impl Keyspace {
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

    /// `MSETNX`: all keys, only if none of them exists; whether they were set.
    ///
    /// # Errors
    /// As [`Keyspace::mset`].
    pub fn msetnx(&mut self, pairs: Vec<(Bytes, Bytes)>, now_ms: u64) -> Result<bool, StoreError> {
        if pairs
            .iter()
            .any(|(key, _)| self.entry(key, now_ms).is_some())
        {
            return Ok(false);
        }
        self.mset(pairs, now_ms)?;
        Ok(true)
    }

    /// Writes `value` as the string at `key`, keeping its expiry, after the limits.
    fn put_string(&mut self, key: Bytes, value: Bytes, now_ms: u64) -> Result<(), StoreError> {
        self.check_size("key", &key)?;
        self.check_size("value", &value)?;
        let existing = self
            .entry(&key, now_ms)
            .map(|e| (e.expires_at_ms, e.size(&key)));
        let new_size = KEY_OVERHEAD + key.len() + value.len();
        let old_size = existing.map_or(0, |(_, size)| size);
        self.check_room(new_size.saturating_sub(old_size), existing.is_none())?;
        let expires_at_ms = existing.and_then(|(at, _)| at);
        self.commit(
            key,
            Op::Set {
                value,
                expires_at_ms,
            },
            now_ms,
        );
        Ok(())
    }

    /// `INCRBYFLOAT`: the new value, computed and written as Redis does (in long double
    /// precision); the key keeps its expiry.
    ///
    /// # Errors
    /// A value or increment that is not a float, a result that is not finite, another
    /// type.
    pub fn incr_by_float(
        &mut self,
        key: Bytes,
        increment: &[u8],
        now_ms: u64,
    ) -> Result<Bytes, StoreError> {
        let current = self.string(&key, now_ms)?;
        let value = long_double::add(current.as_deref(), increment, StoreError::NotFloat)?;
        self.put_string(key, value.clone(), now_ms)?;
        Ok(value)
    }

    /// `APPEND`: the new length.
    ///
    /// # Errors
    /// Another type; size limits.
    pub fn append(&mut self, key: Bytes, suffix: &[u8], now_ms: u64) -> Result<usize, StoreError> {
        let current = self.string(&key, now_ms)?.unwrap_or_default();
        let mut value = BytesMut::with_capacity(current.len() + suffix.len());
        value.extend_from_slice(&current);
        value.extend_from_slice(suffix);
        let len = value.len();
        self.put_string(key, value.freeze(), now_ms)?;
        Ok(len)
    }

    /// `SETRANGE`: the new length; a missing key and an empty write create nothing.
    ///
    /// # Errors
    /// Another type; past Redis' 512 MB; size limits.
    pub fn setrange(
        &mut self,
        key: Bytes,
        offset: usize,
        patch: &[u8],
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let current = self.string(&key, now_ms)?;
        if patch.is_empty() {
            return Ok(current.map_or(0, |v| v.len()));
        }
        if offset.saturating_add(patch.len()) > MAX_STRING {
            return Err(StoreError::StringTooLong);
        }
        let current = current.unwrap_or_default();
        let mut value = BytesMut::from(&current[..]);
        let end = offset + patch.len();
        if value.len() < end {
            value.resize(end, 0);
        }
        value[offset..end].copy_from_slice(patch);
        let len = value.len();
        self.put_string(key, value.freeze(), now_ms)?;
        Ok(len)
    }

    /// The string at `key`, for reads (`GETRANGE`, `STRLEN`, `GETBIT`, `BITCOUNT`).
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for another type.
    pub fn string_at(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        self.string(key, now_ms)
    }

    /// `SETBIT`: the bit's previous value.
    ///
    /// # Errors
    /// Another type; size limits.
    pub fn setbit(
        &mut self,
        key: Bytes,
        bit: usize,
        on: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let current = self.string(&key, now_ms)?.unwrap_or_default();
        let byte = bit / 8;
        let mask = 0x80u8 >> (bit % 8);
        let previous = current.get(byte).is_some_and(|b| b & mask != 0);
        let mut value = BytesMut::from(&current[..]);
        if value.len() <= byte {
            value.resize(byte + 1, 0);
        }
        if on {
            value[byte] |= mask;
        } else {
            value[byte] &= !mask;
        }
        if value.len() != current.len() || previous != on {
            self.put_string(key, value.freeze(), now_ms)?;
        }
        Ok(previous)
    }
}
