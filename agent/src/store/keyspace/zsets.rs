//! Sorted-set writes: ZADD (with its options, and so ZINCRBY) ZREM ZPOPMIN ZPOPMAX; the
//! reads go through [`Keyspace::zset_at`].

use bytes::Bytes;
use tandem_common::ops::{Op, Score};

use super::{Keyspace, SCORED_OVERHEAD, StoreError};

/// `ZADD`'s options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZaddOptions {
    /// `NX`: only add new members.
    pub only_new: bool,
    /// `XX`: only update existing members.
    pub only_existing: bool,
    /// `GT`: only update to a greater score.
    pub greater: bool,
    /// `LT`: only update to a lower score.
    pub less: bool,
    /// `INCR`: add the score to the member's.
    pub incr: bool,
}

/// What `ZADD` did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ZaddOutcome {
    pub added: usize,
    /// Members whose score changed (not counting the added ones).
    pub updated: usize,
    /// With `INCR`: the member's new score, `None` when the options refused it.
    pub score: Option<f64>,
}

impl Keyspace {
    /// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member ...` after parsing.
    ///
    /// # Errors
    /// Another type; [`StoreError::NanOrInfinity`] when `INCR` makes NaN; limits.
    pub fn zadd(
        &mut self,
        key: Bytes,
        options: ZaddOptions,
        members: Vec<(f64, Bytes)>,
        now_ms: u64,
    ) -> Result<ZaddOutcome, StoreError> {
        let zset = self.zset_at(&key, now_ms)?;
        let exists = zset.is_some();
        let mut outcome = ZaddOutcome::default();
        // Each pair applies in turn, as in Redis: a member named twice is added, then
        // updated.
        let mut changes: indexmap::IndexMap<Bytes, f64> = indexmap::IndexMap::new();
        let mut bytes = zset.map_or(0, |z| z.bytes());
        let mut growth = 0;
        for (score, member) in members {
            let current = changes
                .get(&member)
                .copied()
                .or_else(|| zset.and_then(|z| z.score(&member)));
            let Some(current) = current else {
                if options.only_existing {
                    continue;
                }
                outcome.added += 1;
                bytes += member.len();
                growth += member.len() + SCORED_OVERHEAD;
                if options.incr {
                    outcome.score = Some(score);
                }
                changes.insert(member, score);
                continue;
            };
            if options.only_new {
                continue;
            }
            let new = if options.incr { current + score } else { score };
            if new.is_nan() {
                return Err(StoreError::ScoreNan);
            }
            if (options.greater && new <= current) || (options.less && new >= current) {
                continue;
            }
            if options.incr {
                outcome.score = Some(new);
            }
            if new != current {
                outcome.updated += 1;
                changes.insert(member, new);
            }
        }
        // Only what changes is written: an update to the same score is no write.
        let writes: Vec<(Bytes, Score)> = changes
            .into_iter()
            .filter(|(member, score)| zset.and_then(|z| z.score(member)) != Some(*score))
            .map(|(member, score)| (member, Score(score)))
            .collect();
        if writes.is_empty() {
            return Ok(outcome);
        }
        for (member, _) in &writes {
            self.check_size("member", member)?;
        }
        self.check_collection("sorted set", &key, exists, bytes, growth)?;
        self.commit(key, Op::SetScores { members: writes }, now_ms);
        Ok(outcome)
    }

    /// `ZREM`: how many of the members were there.
    ///
    /// # Errors
    /// Another type.
    pub fn zrem(
        &mut self,
        key: Bytes,
        members: Vec<Bytes>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let Some(zset) = self.zset_at(&key, now_ms)? else {
            return Ok(0);
        };
        let present: indexmap::IndexSet<Bytes> = members
            .into_iter()
            .filter(|m| zset.score(m).is_some())
            .collect();
        let removed = present.len();
        if removed > 0 {
            let members = present.into_iter().collect();
            self.commit(key, Op::RemoveMembers { members }, now_ms);
        }
        Ok(removed)
    }

    /// `ZPOPMIN` (`highest` false) and `ZPOPMAX`: up to `count` members with their scores,
    /// in the order they are popped.
    ///
    /// # Errors
    /// Another type.
    pub fn zpop(
        &mut self,
        key: Bytes,
        count: usize,
        highest: bool,
        now_ms: u64,
    ) -> Result<Vec<(Bytes, f64)>, StoreError> {
        let Some(zset) = self.zset_at(&key, now_ms)? else {
            return Ok(Vec::new());
        };
        let popped: Vec<(Bytes, f64)> = if highest {
            zset.iter()
                .rev()
                .take(count)
                .map(|(m, s)| (m.clone(), s))
                .collect()
        } else {
            zset.iter()
                .take(count)
                .map(|(m, s)| (m.clone(), s))
                .collect()
        };
        if !popped.is_empty() {
            let members = popped.iter().map(|(m, _)| m.clone()).collect();
            self.commit(key, Op::RemoveMembers { members }, now_ms);
        }
        Ok(popped)
    }
}
