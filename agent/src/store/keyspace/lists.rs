//! List writes: LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LTRIM LREM LINSERT LMOVE; the
//! reads go through [`Keyspace::list_at`].
//!
//! Pushes, pops, `LSET` and `LTRIM` replicate as deltas; `LREM` and `LINSERT`, which change
//! items in the middle, replicate the whole list.

use bytes::Bytes;
use tandem_common::ops::Op;

use super::{ITEM_OVERHEAD, Keyspace, StoreError};

impl Keyspace {
    /// `LPUSH` (`left`) and `RPUSH`, and with `only_existing` `LPUSHX` and `RPUSHX`: the
    /// list's new length (0 when `only_existing` meets no list).
    ///
    /// # Errors
    /// Another type; size and memory limits.
    pub fn push(
        &mut self,
        key: Bytes,
        left: bool,
        items: Vec<Bytes>,
        only_existing: bool,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let list = self.list_at(&key, now_ms)?;
        let Some(len) = list.map(|l| l.len()).or((!only_existing).then_some(0)) else {
            return Ok(0);
        };
        let exists = list.is_some();
        for item in &items {
            self.check_size("item", item)?;
        }
        let added: usize = items.iter().map(Bytes::len).sum();
        let bytes = list.map_or(0, |l| l.bytes()) + added;
        let growth = added + items.len() * ITEM_OVERHEAD;
        self.check_collection("list", &key, exists, bytes, growth)?;
        let len = len + items.len();
        self.commit(key, Op::Push { left, items }, now_ms);
        Ok(len)
    }

    /// `LPOP` (`left`) and `RPOP`: up to `count` items, `None` without the key.
    ///
    /// # Errors
    /// Another type.
    pub fn pop(
        &mut self,
        key: Bytes,
        left: bool,
        count: usize,
        now_ms: u64,
    ) -> Result<Option<Vec<Bytes>>, StoreError> {
        let Some(list) = self.list_at(&key, now_ms)? else {
            return Ok(None);
        };
        let taken: Vec<Bytes> = if left {
            list.iter().take(count).cloned().collect()
        } else {
            list.iter().rev().take(count).cloned().collect()
        };
        if !taken.is_empty() {
            let count = taken.len() as u64;
            self.commit(key, Op::Pop { left, count }, now_ms);
        }
        Ok(Some(taken))
    }

    /// `LSET`.
    ///
    /// # Errors
    /// [`StoreError::NoSuchKey`], [`StoreError::IndexOutOfRange`], another type, limits.
    pub fn lset(
        &mut self,
        key: Bytes,
        index: i64,
        value: Bytes,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let list = self.list_at(&key, now_ms)?.ok_or(StoreError::NoSuchKey)?;
        let index = resolve(index, list.len()).ok_or(StoreError::IndexOutOfRange)?;
        self.check_size("item", &value)?;
        let old = list.get(index).map_or(0, Bytes::len);
        let bytes = list.bytes() - old + value.len();
        self.check_collection("list", &key, true, bytes, value.len().saturating_sub(old))?;
        let index = index as u64;
        self.commit(key, Op::SetItem { index, value }, now_ms);
        Ok(())
    }

    /// `LTRIM key start stop`.
    ///
    /// # Errors
    /// Another type.
    pub fn ltrim(
        &mut self,
        key: Bytes,
        start: i64,
        stop: i64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(list) = self.list_at(&key, now_ms)? else {
            return Ok(());
        };
        let (start, len) = match range(start, stop, list.len()) {
            Some((start, end)) => (start, end - start + 1),
            None => (0, 0),
        };
        if start == 0 && len == list.len() {
            return Ok(());
        }
        let op = if len == 0 {
            Op::Delete
        } else {
            Op::Trim {
                start: start as u64,
                len: len as u64,
            }
        };
        self.commit(key, op, now_ms);
        Ok(())
    }

    /// `LREM key count element`: how many were removed (`count` > 0 from the head, < 0 from
    /// the tail, 0 all).
    ///
    /// # Errors
    /// Another type.
    pub fn lrem(
        &mut self,
        key: Bytes,
        count: i64,
        element: &[u8],
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let Some(list) = self.list_at(&key, now_ms)? else {
            return Ok(0);
        };
        let limit = if count == 0 {
            usize::MAX
        } else {
            count.unsigned_abs() as usize
        };
        let mut items: Vec<Bytes> = list.iter().cloned().collect();
        let mut removed = 0;
        let mut keep = |item: &Bytes| {
            if removed < limit && item[..] == *element {
                removed += 1;
                false
            } else {
                true
            }
        };
        if count < 0 {
            items.reverse();
            items.retain(&mut keep);
            items.reverse();
        } else {
            items.retain(&mut keep);
        }
        if removed > 0 {
            self.replace_list(key, items, now_ms);
        }
        Ok(removed)
    }

    /// `LINSERT key BEFORE|AFTER pivot element`: the new length, -1 without the pivot, 0
    /// without the key.
    ///
    /// # Errors
    /// Another type; limits.
    pub fn linsert(
        &mut self,
        key: Bytes,
        before: bool,
        pivot: &[u8],
        element: Bytes,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let Some(list) = self.list_at(&key, now_ms)? else {
            return Ok(0);
        };
        let Some(at) = list.iter().position(|item| item[..] == *pivot) else {
            return Ok(-1);
        };
        self.check_size("item", &element)?;
        let bytes = list.bytes() + element.len();
        let growth = element.len() + ITEM_OVERHEAD;
        self.check_collection("list", &key, true, bytes, growth)?;
        let mut items: Vec<Bytes> = list.iter().cloned().collect();
        items.insert(if before { at } else { at + 1 }, element);
        let len = items.len();
        self.replace_list(key, items, now_ms);
        Ok(len as i64)
    }

    /// `LMOVE source destination LEFT|RIGHT LEFT|RIGHT`: the item moved, `None` when the
    /// source is empty.
    ///
    /// # Errors
    /// Either key of another type; limits at the destination.
    pub fn lmove(
        &mut self,
        from: Bytes,
        to: Bytes,
        from_left: bool,
        to_left: bool,
        now_ms: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let Some(list) = self.list_at(&from, now_ms)? else {
            return Ok(None);
        };
        let item = if from_left {
            list.iter().next()
        } else {
            list.iter().next_back()
        };
        let Some(item) = item.cloned() else {
            return Ok(None);
        };
        self.list_at(&to, now_ms)?;
        if from == to && list.len() == 1 {
            return Ok(Some(item));
        }
        // The push is checked first: a refused push leaves the source as it was.
        let bytes = self.list_at(&to, now_ms)?.map_or(0, |l| l.bytes()) + item.len();
        let exists = self.list_at(&to, now_ms)?.is_some();
        let growth = item.len() + ITEM_OVERHEAD;
        self.check_collection("list", &to, exists || from == to, bytes, growth)?;
        self.commit(
            from,
            Op::Pop {
                left: from_left,
                count: 1,
            },
            now_ms,
        );
        self.commit(
            to,
            Op::Push {
                left: to_left,
                items: vec![item.clone()],
            },
            now_ms,
        );
        Ok(Some(item))
    }

    /// Makes `key` exactly `items` (deleted when empty), keeping its expiry.
    fn replace_list(&mut self, key: Bytes, items: Vec<Bytes>, now_ms: u64) {
        let expires_at_ms = self.entry(&key, now_ms).and_then(|e| e.expires_at_ms);
        let op = if items.is_empty() {
            Op::Delete
        } else {
            Op::SetList {
                items,
                expires_at_ms,
            }
        };
        self.commit(key, op, now_ms);
    }
}

/// A Redis index (negative from the end) into `len` items, if it is one.
pub fn resolve(index: i64, len: usize) -> Option<usize> {
    let index = if index < 0 {
        index.checked_add(len as i64)?
    } else {
        index
    };
    (0..len as i64).contains(&index).then_some(index as usize)
}

/// A Redis range `start..=stop` (negative from the end) clamped to `len` items, `None`
/// when it is empty.
pub fn range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 {
        (start + len).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        stop + len
    } else {
        stop.min(len - 1)
    };
    (start <= stop && start < len && stop >= 0).then_some((start as usize, stop as usize))
}
