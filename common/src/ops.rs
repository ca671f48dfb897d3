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
