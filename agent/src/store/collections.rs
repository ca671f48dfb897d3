//! The values of sets, sorted sets and lists, each counting the bytes it holds.
//!
//! Their orders follow Redis 7.0's encodings where a client can see them: a set of integers
//! (an `intset`, up to 512 members) lists them in numeric order, any other set in the order
//! its members were added (Redis' hash table has no order a client may rely on); a sorted
//! set by score, then member; a list as pushed.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use indexmap::IndexSet;

use super::keyspace::parse_i64;

type Hasher = foldhash::fast::RandomState;

/// Most members a set of integers keeps as an `intset` (Redis' `set-max-intset-entries`).
pub const INTSET_MEMBERS: usize = 512;
/// Most members a set or sorted set keeps in insertion order before removals stop
/// preserving it (a large collection removes in constant time instead).
const ORDERED_MEMBERS: usize = 128;

/// The members of one set.
#[derive(Debug, Clone, Default)]
pub struct MemberSet {
    members: IndexSet<Bytes, Hasher>,
    bytes: usize,
    /// Whether every member ever added was an integer and the set never grew past
    /// [`INTSET_MEMBERS`]: Redis then lists it in numeric order.
    not_intset: bool,
}

impl MemberSet {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The bytes of every member.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.members.contains(member)
    }

    /// Adds `member`; whether it is new.
    pub fn insert(&mut self, member: Bytes) -> bool {
        if self.members.contains(&member) {
            return false;
        }
        if !self.not_intset && (parse_i64(&member).is_none() || self.len() >= INTSET_MEMBERS) {
            self.not_intset = true;
        }
        self.bytes += member.len();
        self.members.insert(member)
    }

    /// Removes `member`; whether it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        let removed = if self.len() > ORDERED_MEMBERS {
            self.members.swap_remove(member)
        } else {
            self.members.shift_remove(member)
        };
        if removed {
            self.bytes -= member.len();
        }
        removed
    }

    /// Redis' encoding name (`OBJECT ENCODING`).
    pub fn encoding(&self) -> &'static str {
        if self.not_intset {
            "hashtable"
        } else {
            "intset"
        }
    }

    /// The member at `index` in storage order (for random picks).
    pub fn get_index(&self, index: usize) -> Option<&Bytes> {
        self.members.get_index(index)
    }

    /// The members in the order Redis lists them.
    pub fn members(&self) -> Vec<Bytes> {
        let mut members: Vec<Bytes> = self.members.iter().cloned().collect();
        if !self.not_intset {
            members.sort_by_key(|m| parse_i64(m).unwrap_or_default());
        }
        members
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.members.iter()
    }
}

impl PartialEq for MemberSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|m| other.contains(m))
    }
}

impl Eq for MemberSet {}

impl FromIterator<Bytes> for MemberSet {
    fn from_iter<I: IntoIterator<Item = Bytes>>(members: I) -> Self {
        let mut set = MemberSet::default();
        for member in members {
            set.insert(member);
        }
        set
    }
}

/// A score that orders as Redis orders them (no NaN ever enters a sorted set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ordered(pub f64);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Normalises `-0.0` to `0.0`, as Redis' scores compare them equal.
fn canonical(score: f64) -> f64 {
    if score == 0.0 { 0.0 } else { score }
}

/// The members of one sorted set, by member and in score order.
#[derive(Debug, Clone, Default)]
pub struct SortedSet {
    scores: hashbrown::HashMap<Bytes, f64, Hasher>,
    order: BTreeSet<(Ordered, Bytes)>,
    bytes: usize,
}

impl SortedSet {
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The bytes of every member.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).copied()
    }

    /// Gives `member` the score `score`; whether it is new.
    pub fn insert(&mut self, member: Bytes, score: f64) -> bool {
        let score = canonical(score);
        if let Some((stored, old)) = self.scores.get_key_value_mut(&member) {
            if *old != score {
                self.order.remove(&(Ordered(*old), stored.clone()));
                self.order.insert((Ordered(score), stored.clone()));
                *old = score;
            }
            return false;
        }
        self.bytes += member.len();
        self.order.insert((Ordered(score), member.clone()));
        self.scores.insert(member, score);
        true
    }

    /// Removes `member`; whether it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        let Some((stored, score)) = self.scores.remove_entry(member) else {
            return false;
        };
        self.order.remove(&(Ordered(score), stored));
        self.bytes -= member.len();
        true
    }

    /// Members and scores, lowest score first (ties by member).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Bytes, f64)> + ExactSizeIterator {
        self.order.iter().map(|(score, member)| (member, score.0))
    }

    /// The 0-based position of `member`, lowest score first.
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let score = self.score(member)?;
        Some(
            self.order
                .range(..(Ordered(score), Bytes::copy_from_slice(member)))
                .count(),
        )
    }

    /// Redis' encoding name (`OBJECT ENCODING`), with its default limits.
    pub fn encoding(&self) -> &'static str {
        if self.len() <= 128 && self.scores.keys().all(|m| m.len() <= 64) {
            "listpack"
        } else {
            "skiplist"
        }
    }
}

impl PartialEq for SortedSet {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Eq for SortedSet {}

/// The items of one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemList {
    items: VecDeque<Bytes>,
    bytes: usize,
}

impl ItemList {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The bytes of every item.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, index: usize) -> Option<&Bytes> {
        self.items.get(index)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Bytes> + ExactSizeIterator {
        self.items.iter()
    }

    pub fn push(&mut self, left: bool, item: Bytes) {
        self.bytes += item.len();
        if left {
            self.items.push_front(item);
        } else {
            self.items.push_back(item);
        }
    }

    pub fn pop(&mut self, left: bool) -> Option<Bytes> {
        let item = if left {
            self.items.pop_front()
        } else {
            self.items.pop_back()
        }?;
        self.bytes -= item.len();
        Some(item)
    }

    /// Replaces the item at `index`; whether there was one.
    pub fn set(&mut self, index: usize, value: Bytes) -> bool {
        let Some(slot) = self.items.get_mut(index) else {
            return false;
        };
        self.bytes = self.bytes + value.len() - slot.len();
        *slot = value;
        true
    }

    /// Keeps only the `len` items from `start` on.
    pub fn trim(&mut self, start: usize, len: usize) {
        let start = start.min(self.items.len());
        self.items.drain(..start);
        self.items.truncate(len);
        self.bytes = self.items.iter().map(Bytes::len).sum();
    }
}

impl FromIterator<Bytes> for ItemList {
    fn from_iter<I: IntoIterator<Item = Bytes>>(items: I) -> Self {
        let mut list = ItemList::default();
        for item in items {
            list.push(false, item);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn a_set_of_integers_lists_in_numeric_order_until_a_non_integer_joins() {
        let mut set: MemberSet = ["10", "-3", "2"].into_iter().map(b).collect();
        assert_eq!(set.members(), [b("-3"), b("2"), b("10")]);
        assert_eq!(set.encoding(), "intset");
        assert!(!set.insert(b("2")));
        set.insert(b("x"));
        assert_eq!(set.encoding(), "hashtable");
        set.remove(b"x");
        assert_eq!(set.encoding(), "hashtable", "as Redis: no way back");
        assert_eq!(set.bytes(), 5);
    }

    #[test]
    fn sorted_sets_order_by_score_then_member_and_rank_so() {
        let mut zset = SortedSet::default();
        assert!(zset.insert(b("b"), 1.0));
        assert!(zset.insert(b("a"), 1.0));
        assert!(zset.insert(b("c"), -0.0));
        assert!(!zset.insert(b("b"), 0.5));
        let order: Vec<_> = zset.iter().map(|(m, s)| (m.clone(), s)).collect();
        assert_eq!(order, [(b("c"), 0.0), (b("b"), 0.5), (b("a"), 1.0)]);
        assert_eq!(zset.rank(b"a"), Some(2));
        assert_eq!(zset.rank(b"zz"), None);
        assert!(zset.remove(b"b"));
        assert_eq!(zset.bytes(), 2);
        assert_eq!(zset.rank(b"a"), Some(1));
    }

    #[test]
    fn lists_count_their_bytes_through_every_change() {
        let mut list: ItemList = ["aa", "b", "ccc"].into_iter().map(b).collect();
        list.push(true, b("z"));
        assert_eq!(list.pop(false), Some(b("ccc")));
        assert!(list.set(1, b("xxxx")));
        assert!(!list.set(9, b("x")));
        list.trim(1, 1);
        assert_eq!(list.iter().cloned().collect::<Vec<_>>(), [b("xxxx")]);
        assert_eq!(list.bytes(), 4);
        list.trim(5, 3);
        assert!(list.is_empty());
        assert_eq!(list.bytes(), 0);
    }
}
