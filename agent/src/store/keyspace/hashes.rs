//! Hash commands: HSET HSETNX HGET HGETALL HDEL HINCRBY HINCRBYFLOAT, and the reads the
//! other hash commands make through [`Keyspace::with_hash`].

use bytes::Bytes;
use tandem_common::ops::Op;

use super::{FieldMap, Keyspace, StoreError, field_size, parse_i64};
use crate::store::long_double;

impl Keyspace {
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
        let mut growth = 0;
        let mut added = 0;
        let exists;
        // The hash's field names and values after the write, at most.
        let mut hash_bytes;
        {
            let hash = self.hash(&key, now_ms)?;
            exists = hash.is_some();
            hash_bytes = hash.map_or(0, FieldMap::bytes);
            // A field named twice in one call takes its last value: count that one only.
            let mut later = std::collections::HashSet::with_capacity(fields.len());
            for (field, value) in fields.iter().rev() {
                if !later.insert(field) {
                    continue;
                }
                match hash.and_then(|h| h.get(field)) {
                    Some(old) => {
                        growth += value.len().saturating_sub(old.len());
                        hash_bytes = hash_bytes + value.len() - old.len();
                    }
                    None => {
                        growth += field_size(field, value);
                        hash_bytes += field.len() + value.len();
                        added += 1;
                    }
                }
            }
        }
        for (field, value) in &fields {
            self.check_size("field", field)?;
            self.check_size("value", value)?;
        }
        self.check_collection("hash", &key, exists, hash_bytes, growth)?;
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
    pub fn hget(&self, key: &[u8], field: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.hash(key, now_ms)?.and_then(|h| h.get(field).cloned()))
    }

    /// `HGETALL` and the basis of `HKEYS`, `HVALS`, `HLEN`, `HMGET`, `HEXISTS`.
    ///
    /// # Errors
    /// [`StoreError::WrongType`] for a string.
    pub fn hgetall(&self, key: &[u8], now_ms: u64) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
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
        &self,
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

    /// `HINCRBYFLOAT`: the new value, computed and written as Redis does.
    ///
    /// # Errors
    /// A field or increment that is not a float, a result that is not finite, another
    /// type, limits.
    pub fn hincr_by_float(
        &mut self,
        key: Bytes,
        field: Bytes,
        increment: &[u8],
        now_ms: u64,
    ) -> Result<Bytes, StoreError> {
        if !long_double::is_valid(increment) {
            return Err(StoreError::NotFloat);
        }
        let current = self
            .hash(&key, now_ms)?
            .and_then(|h| h.get(&field).cloned());
        let value = long_double::add(current.as_deref(), increment, StoreError::HashNotFloat)?;
        self.hset(key, vec![(field, value.clone())], now_ms)?;
        Ok(value)
    }
}
