//! Session mutations as values: the unit a store applies and replication ships.
//!
//! Every operation stamps its key with a new version, and a store applies it only to a key
//! older than that version: applying one twice, or a stale one after a newer one, leaves
//! the same state. Most operations are assignments (never "add 1"); those of lists
//! (push, pop) and the members or fields of a collection are deltas, which the partner
//! applies in the order they were made (frames are applied in sequence). A delta names
//! the version it builds on ([`Mutation::base`]): a partner that holds the key at another
//! version (both sides wrote it, say during a partition or a failover) does not give its
//! own value the delta's version, so the two stay visibly different and the partner's
//! whole value is fetched. Snapshots and repairs carry whole values.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::version::Version;

/// One change to one key, stamped with the version it creates.
///
/// Encoded as an array of its fields: `db` only when it is not 0 or `base` follows, `base`
/// only when there is one, so a write to database 0 costs no byte more than before
/// databases existed, and a partner of an earlier protocol, never sent a base, reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Mutation {
    pub key: Bytes,
    pub version: Version,
    pub op: Op,
    /// The database (`SELECT`) the key is in.
    #[serde(default)]
    pub db: u16,
    /// For an op that changes part of a value ([`Op::builds_on_value`]), the version of
    /// the value it was made on, sent to partners speaking
    /// [`Protocol::DELTA_BASES`](crate::schema::Protocol::DELTA_BASES) or later.
    #[serde(default)]
    pub base: Option<Version>,
}

impl Serialize for Mutation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_db = self.db != 0 || self.base.is_some();
        let len = 3 + usize::from(with_db) + usize::from(self.base.is_some());
        let mut fields = serializer.serialize_struct("Mutation", len)?;
        fields.serialize_field("key", &self.key)?;
        fields.serialize_field("version", &self.version)?;
        fields.serialize_field("op", &self.op)?;
        if with_db {
            fields.serialize_field("db", &self.db)?;
        }
        if let Some(base) = &self.base {
            fields.serialize_field("base", base)?;
        }
        fields.end()
    }
}

/// A sorted set's score. Compared by its bits, so that `Op` stays `Eq` (a score is never
/// NaN: Redis refuses those).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Score(pub f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Score {}

/// What a mutation does to its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The key becomes a string with this value and expiry (ms since the epoch).
    Set {
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    /// The key becomes exactly this hash, with this expiry (snapshots and repairs).
    SetHash {
        fields: Vec<(Bytes, Bytes)>,
        expires_at_ms: Option<u64>,
    },
    /// These fields of the hash are set (the hash is created if the key is absent).
    SetFields { fields: Vec<(Bytes, Bytes)> },
    /// These fields of the hash are removed; a hash left empty is deleted.
    DeleteFields { fields: Vec<Bytes> },
    /// The key is deleted.
    Delete,
    /// The key's expiry changes (`None`: it no longer expires). This is also how a session
    /// is touched: its deadline moves later.
    Expire { expires_at_ms: Option<u64> },
    /// The key becomes exactly this set, with this expiry.
    SetMembers {
        members: Vec<Bytes>,
        expires_at_ms: Option<u64>,
    },
    /// These members are added to the set (created if the key is absent).
    AddMembers { members: Vec<Bytes> },
    /// These members are removed from the set or sorted set; one left empty is deleted.
    RemoveMembers { members: Vec<Bytes> },
    /// The key becomes exactly this sorted set, with this expiry.
    SetZSet {
        members: Vec<(Bytes, Score)>,
        expires_at_ms: Option<u64>,
    },
    /// These members of the sorted set get these scores (created if the key is absent).
    SetScores { members: Vec<(Bytes, Score)> },
    /// The key becomes exactly this list, with this expiry.
    SetList {
        items: Vec<Bytes>,
        expires_at_ms: Option<u64>,
    },
    /// The items are pushed one after the other at the head (`left`) or the tail: `LPUSH
    /// k a b` leaves `b` first. The list is created if the key is absent.
    Push { left: bool, items: Vec<Bytes> },
    /// `count` items are removed from the head (`left`) or the tail; a list left empty is
    /// deleted.
    Pop { left: bool, count: u64 },
    /// The item at `index` (from the head) becomes `value`.
    SetItem { index: u64, value: Bytes },
    /// Only the `len` items from `start` on are kept (`LTRIM`); a list left empty is
    /// deleted.
    Trim { start: u64, len: u64 },
}

impl Op {
    /// Whether the op changes part of the value it finds (fields, members, items, the
    /// expiry) rather than replace it whole: applied to another value than the one it was
    /// made on, it would make another result.
    pub fn builds_on_value(&self) -> bool {
        !matches!(
            self,
            Op::Set { .. }
                | Op::SetHash { .. }
                | Op::SetMembers { .. }
                | Op::SetZSet { .. }
                | Op::SetList { .. }
                | Op::Delete
        )
    }
}

impl Mutation {
    /// About how many bytes the mutation takes in a frame: its key, field and value bytes
    /// plus a little for the version and the encoding. Used to keep frames small enough
    /// to travel (and be applied) in pieces, not to enforce a limit.
    pub fn encoded_size(&self) -> usize {
        // With a base: 16 more bytes, at most, for its three numbers.
        const OVERHEAD: usize = 68;
        let pairs = |fields: &[(Bytes, Bytes)]| -> usize {
            fields.iter().map(|(f, v)| f.len() + v.len() + 12).sum()
        };
        let items = |items: &[Bytes]| -> usize { items.iter().map(|f| f.len() + 6).sum() };
        let scored = |members: &[(Bytes, Score)]| -> usize {
            members.iter().map(|(m, _)| m.len() + 16).sum()
        };
        OVERHEAD
            + self.key.len()
            + match &self.op {
                Op::Set { value, .. } => value.len(),
                Op::SetItem { value, .. } => value.len() + 10,
                Op::SetHash { fields, .. } | Op::SetFields { fields } => pairs(fields),
                Op::DeleteFields { fields: items_of }
                | Op::SetMembers {
                    members: items_of, ..
                }
                | Op::AddMembers { members: items_of }
                | Op::RemoveMembers { members: items_of }
                | Op::SetList {
                    items: items_of, ..
                }
                | Op::Push {
                    items: items_of, ..
                } => items(items_of),
                Op::SetZSet { members, .. } | Op::SetScores { members } => scored(members),
                Op::Delete | Op::Expire { .. } => 0,
                Op::Pop { .. } | Op::Trim { .. } => 20,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    /// Frames are filled up to a size estimated with `encoded_size`; a frame filled so
    /// must fit where the estimate said it would.
    #[test]
    fn the_size_estimate_is_never_below_the_encoding() {
        let version = Version {
            millis: u64::MAX,
            counter: u32::MAX,
            node: u32::MAX,
        };
        let expires_at_ms = Some(u64::MAX);
        let ops = [
            Op::Set {
                value: bytes(1024),
                expires_at_ms,
            },
            Op::Set {
                value: bytes(70_000),
                expires_at_ms,
            },
            Op::SetHash {
                fields: vec![(bytes(10), bytes(300)), (bytes(1), bytes(0))],
                expires_at_ms,
            },
            Op::SetFields {
                fields: (0..100).map(|i| (bytes(i), bytes(i * 3))).collect(),
            },
            Op::DeleteFields {
                fields: (0..100).map(bytes).collect(),
            },
            Op::Delete,
            Op::Expire { expires_at_ms },
            Op::SetMembers {
                members: (0..100).map(bytes).collect(),
                expires_at_ms,
            },
            Op::AddMembers {
                members: vec![bytes(0), bytes(70_000)],
            },
            Op::RemoveMembers {
                members: vec![bytes(3)],
            },
            Op::SetZSet {
                members: (0..100).map(|i| (bytes(i), Score(-1.5e300))).collect(),
                expires_at_ms,
            },
            Op::SetScores {
                members: vec![(bytes(5), Score(f64::INFINITY))],
            },
            Op::SetList {
                items: (0..100).map(bytes).collect(),
                expires_at_ms,
            },
            Op::Push {
                left: true,
                items: vec![bytes(1), bytes(300)],
            },
            Op::Pop {
                left: false,
                count: u64::MAX,
            },
            Op::SetItem {
                index: u64::MAX,
                value: bytes(40),
            },
            Op::Trim {
                start: u64::MAX,
                len: u64::MAX,
            },
        ];
        for op in ops {
            for (key, db) in [(0, 0), (12, 1), (300, u16::MAX)] {
                let mutation = Mutation {
                    key: bytes(key),
                    version,
                    op: op.clone(),
                    db,
                    base: None,
                };
                let encoded = rmp_serde::to_vec(&mutation).unwrap().len();
                assert!(
                    mutation.encoded_size() >= encoded,
                    "{} < {encoded} for {op:?}",
                    mutation.encoded_size()
                );
            }
        }
    }
}
