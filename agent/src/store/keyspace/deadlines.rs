//! The keys of one database that have a deadline, by slot of [`SLOT_MS`]: what the sweeper
//! and `DBSIZE` walk in deadline order.
//!
//! A session store sets a deadline with every save (`SET ... EX`, `EXPIRE` after `HSET`),
//! so the index changes as often as the keys do. Keyed by slot rather than by exact
//! deadline, a key saved again within its slot moves nowhere, and one that moves leaves a
//! small hash set and joins the newest one: no walk of a tree of every key with an
//! expiry, no comparison of keys' bytes. The exact deadline stays in the key's entry; the
//! slot that holds `now` is the only one whose keys must be looked up to tell.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Width of a slot, as a shift of milliseconds: 64 ms.
const SLOT_SHIFT: u32 = 6;

type KeySet = hashbrown::HashSet<Bytes, foldhash::fast::RandomState>;

fn slot(at_ms: u64) -> u64 {
    at_ms >> SLOT_SHIFT
}

#[derive(Default)]
pub(super) struct Deadlines {
    slots: BTreeMap<u64, KeySet>,
    len: usize,
}

impl Deadlines {
    /// Keys with a deadline.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, at_ms: u64, key: &Bytes) {
        if self
            .slots
            .entry(slot(at_ms))
            .or_default()
            .insert(key.clone())
        {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, at_ms: u64, key: &[u8]) {
        let slot = slot(at_ms);
        let Some(keys) = self.slots.get_mut(&slot) else {
            return;
        };
        if keys.remove(key) {
            self.len -= 1;
            if keys.is_empty() {
                self.slots.remove(&slot);
            }
        }
    }

    /// `key`'s deadline changes from `old` to `new` (`None`: no deadline).
    pub fn change(&mut self, old: Option<u64>, new: Option<u64>, key: &Bytes) {
        if old.map(slot) == new.map(slot) {
            return;
        }
        if let Some(at) = old {
            self.remove(at, key);
        }
        if let Some(at) = new {
            self.insert(at, key);
        }
    }

    /// The keys whose deadline is at or before `limit_ms`, in slot order: those of earlier
    /// slots as they are, those of `limit_ms`'s own slot if `deadline` (the key's exact
    /// deadline, from its entry) says so.
    pub fn due<'a>(
        &'a self,
        limit_ms: u64,
        deadline: impl Fn(&Bytes) -> Option<u64> + Copy + 'a,
    ) -> impl Iterator<Item = &'a Bytes> + 'a {
        let last = slot(limit_ms);
        self.slots.range(..=last).flat_map(move |(&slot, keys)| {
            keys.iter()
                .filter(move |key| slot < last || deadline(key).is_some_and(|at| at <= limit_ms))
        })
    }
}

impl Deadlines {
    /// The keys whose deadline is after `from_ms` and at or before `to_ms`, in slot order.
    pub fn between<'a>(
        &'a self,
        from_ms: u64,
        to_ms: u64,
        deadline: impl Fn(&Bytes) -> Option<u64> + Copy + 'a,
    ) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.slots
            .range(slot(from_ms)..=slot(to_ms))
            .flat_map(move |(_, keys)| {
                keys.iter()
                    .filter(move |key| deadline(key).is_some_and(|at| at > from_ms && at <= to_ms))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// At each limit, the index yields exactly the keys whose deadline is at or before it.
    fn check(index: &Deadlines, deadlines: &HashMap<Bytes, u64>, limits: &[u64]) {
        for &limit in limits {
            let mut due: Vec<Bytes> = index
                .due(limit, |k| deadlines.get(k).copied())
                .cloned()
                .collect();
            due.sort();
            let mut want: Vec<Bytes> = deadlines
                .iter()
                .filter(|(_, at)| **at <= limit)
                .map(|(k, _)| k.clone())
                .collect();
            want.sort();
            assert_eq!(due, want, "limit {limit}");
        }
    }

    #[test]
    fn keys_are_due_by_their_exact_deadline_and_move_only_across_slots() {
        let mut index = Deadlines::default();
        let mut deadlines: HashMap<Bytes, u64> = HashMap::new();
        let key = |n: u64| Bytes::from(format!("session:{n:08}"));
        // Deadlines spread over a few slots, several to a millisecond.
        for n in 0..1_000u64 {
            let at = 10_000 + n / 3;
            index.insert(at, &key(n));
            deadlines.insert(key(n), at);
        }
        assert_eq!(index.len(), 1_000);
        check(
            &index,
            &deadlines,
            &[0, 9_999, 10_000, 10_063, 10_064, 10_100, 10_333, 20_000],
        );
        // Within its slot a key moves nowhere; across slots it does; without a deadline
        // it leaves.
        index.change(Some(10_000), Some(10_001), &key(0));
        deadlines.insert(key(0), 10_001);
        index.change(Some(10_000), Some(50_000), &key(1));
        deadlines.insert(key(1), 50_000);
        index.change(Some(10_000), None, &key(2));
        deadlines.remove(&key(2));
        assert_eq!(index.len(), 999);
        check(&index, &deadlines, &[10_000, 10_001, 20_000, 50_000]);
        for (k, at) in deadlines.drain() {
            index.remove(at, &k);
        }
        assert_eq!((index.len(), index.slots.len()), (0, 0));
    }
}
