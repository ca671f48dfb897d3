//! Session mutations as values: the unit a store applies and replication ships.
//!
//! Every operation is an assignment (never "add 1"): applying one twice, or applying a
//! stale one after a newer one, leaves the same state. That is what lets a partner apply
//! a stream of them, a snapshot, and repairs in any overlap.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::version::Version;

/// One change to one key, stamped with the version it creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutation {
    pub key: Bytes,
    pub version: Version,
    pub op: Op,
}

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
}

impl Mutation {
    /// About how many bytes the mutation takes in a frame: its key, field and value bytes
    /// plus a little for the version and the encoding. Used to keep frames small enough
    /// to travel (and be applied) in pieces, not to enforce a limit.
    pub fn encoded_size(&self) -> usize {
        const OVERHEAD: usize = 48;
        let pairs = |fields: &[(Bytes, Bytes)]| -> usize {
            fields.iter().map(|(f, v)| f.len() + v.len() + 12).sum()
        };
        OVERHEAD
            + self.key.len()
            + match &self.op {
                Op::Set { value, .. } => value.len(),
                Op::SetHash { fields, .. } | Op::SetFields { fields } => pairs(fields),
                Op::DeleteFields { fields } => fields.iter().map(|f| f.len() + 6).sum(),
                Op::Delete | Op::Expire { .. } => 0,
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
        ];
        for op in ops {
            for key in [0, 12, 300] {
                let mutation = Mutation {
                    key: bytes(key),
                    version,
                    op: op.clone(),
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
