//! Set writes: SADD SREM SPOP SMOVE and the `*STORE` forms; the reads go through
//! [`Keyspace::set_at`].

use bytes::Bytes;
use indexmap::IndexSet;
use tandem_common::ops::Op;

use super::{Keyspace, MEMBER_OVERHEAD, StoreError};

impl Keyspace {
    /// `SADD`: how many members are new.
    ///
    /// # Errors
    /// Another type; size and memory limits.
    pub fn sadd(
        &mut self,
        key: Bytes,
        members: Vec<Bytes>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let set = self.set_at(&key, now_ms)?;
        let exists = set.is_some();
        let mut bytes = set.map_or(0, |s| s.bytes());
        let mut new = IndexSet::new();
        for member in members {
            if !set.is_some_and(|s| s.contains(&member)) && !new.contains(&member) {
                bytes += member.len();
                new.insert(member);
            }
        }
        let new: Vec<Bytes> = new.into_iter().collect();
        if new.is_empty() {
            return Ok(0);
        }
        for member in &new {
            self.check_size("member", member)?;
        }
        let growth = new.iter().map(|m| m.len() + MEMBER_OVERHEAD).sum();
        self.check_collection("set", &key, exists, bytes, growth)?;
        let added = new.len();
        self.commit(key, Op::AddMembers { members: new }, now_ms);
        Ok(added)
    }

    /// `SREM` (and what `SPOP` removes): how many of the members were there.
    ///
    /// # Errors
    /// Another type.
    pub fn srem(
        &mut self,
        key: Bytes,
        members: Vec<Bytes>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let Some(set) = self.set_at(&key, now_ms)? else {
            return Ok(0);
        };
        let present: IndexSet<Bytes> = members.into_iter().filter(|m| set.contains(m)).collect();
        let present: Vec<Bytes> = present.into_iter().collect();
        let removed = present.len();
        if removed > 0 {
            self.commit(key, Op::RemoveMembers { members: present }, now_ms);
        }
        Ok(removed)
    }

    /// `SMOVE`: whether `member` moved from `from` to `to`.
    ///
    /// # Errors
    /// Either key of another type; limits at the destination.
    pub fn smove(
        &mut self,
        from: Bytes,
        to: Bytes,
        member: Bytes,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some(source) = self.set_at(&from, now_ms)? else {
            return Ok(false);
        };
        let present = source.contains(&member);
        let target = self.set_at(&to, now_ms)?;
        if from == to {
            return Ok(present);
        }
        if !present {
            return Ok(false);
        }
        if !target.is_some_and(|t| t.contains(&member)) {
            self.sadd(to, vec![member.clone()], now_ms)?;
        }
        self.srem(from, vec![member], now_ms)?;
        Ok(true)
    }

    /// The `*STORE` forms of set and sorted-set commands: `key` becomes exactly `op`'s
    /// whole value of `len` elements holding `bytes` bytes, or is deleted when `len` is 0.
    ///
    /// # Errors
    /// Size and memory limits.
    pub(crate) fn store_whole(
        &mut self,
        what: &'static str,
        key: Bytes,
        op: Op,
        len: usize,
        size: usize,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let existing = self.entry(&key, now_ms).map(|e| e.size(&key));
        if len == 0 {
            if existing.is_some() {
                self.commit(key, Op::Delete, now_ms);
            }
            return Ok(());
        }
        let growth = (super::KEY_OVERHEAD + key.len() + size).saturating_sub(existing.unwrap_or(0));
        self.check_collection(what, &key, true, size, growth)?;
        self.check_room(0, existing.is_none())?;
        self.commit(key, op, now_ms);
        Ok(())
    }

    /// `SINTERSTORE`, `SUNIONSTORE`, `SDIFFSTORE`: `key` becomes exactly `members` (or is
    /// deleted when there are none); how many.
    ///
    /// # Errors
    /// Size and memory limits.
    pub fn store_set(
        &mut self,
        key: Bytes,
        members: Vec<Bytes>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        for member in &members {
            self.check_size("member", member)?;
        }
        let len = members.len();
        let bytes: usize = members.iter().map(Bytes::len).sum();
        let op = Op::SetMembers {
            members,
            expires_at_ms: None,
        };
        self.store_whole("set", key, op, len, bytes + len * MEMBER_OVERHEAD, now_ms)?;
        Ok(len)
    }
}
