//! `Frame::Mutations` read with rmp's MessagePack primitives, without serde's generic path.
//!
//! A partner decodes every write it receives. Through serde, each field went through the
//! generic value path and each enum variant through a name lookup: 15 % of a partner's CPU
//! under SETs and 35 % under HSETs. This reader knows the one layout rmp-serde gives a frame
//! of writes (a map from the variant's name to its fields as an array; a struct as an array
//! of its fields; a unit variant as its name; `None` as nil) and answers `None` for anything
//! else, which then goes to serde. The tests check that both read every frame alike.

use bytes::Bytes;
use rmp::Marker;
use rmp::decode::{
    read_array_len, read_bin_len, read_bool, read_f64, read_int, read_map_len, read_str_len,
};

use super::Frame;
use crate::ops::{Mutation, Op, Score};
use crate::version::Version;

type Reader<'a> = &'a [u8];

/// A frame of writes, or `None` when `body` is another frame or not in the expected layout.
pub(crate) fn mutations(body: &[u8]) -> Option<Frame> {
    let rd = &mut &body[..];
    if read_map_len(rd).ok()? != 1 || name(rd)? != b"Mutations" || read_array_len(rd).ok()? != 3 {
        return None;
    }
    let first = read_int(rd).ok()?;
    let seq = read_int(rd).ok()?;
    let count = read_array_len(rd).ok()? as usize;
    // A count is only trusted as far as the bytes could hold it.
    let mut mutations = Vec::with_capacity(count.min(rd.len()));
    for _ in 0..count {
        mutations.push(mutation(rd)?);
    }
    rd.is_empty().then_some(Frame::Mutations {
        first,
        seq,
        mutations,
    })
}

fn mutation(rd: &mut Reader<'_>) -> Option<Mutation> {
    // Database 0 without a base is left out: three fields; a database is a fourth, a
    // base a fifth.
    let fields = read_array_len(rd).ok()?;
    if !(3..=5).contains(&fields) {
        return None;
    }
    let key = bin(rd)?;
    let version = read_version(rd)?;
    let op = op(rd)?;
    let db = if fields >= 4 { read_int(rd).ok()? } else { 0 };
    let base = if fields == 5 {
        Some(read_version(rd)?)
    } else {
        None
    };
    Some(Mutation {
        key,
        version,
        op,
        db,
        base,
    })
}

fn read_version(rd: &mut Reader<'_>) -> Option<Version> {
    if read_array_len(rd).ok()? != 3 {
        return None;
    }
    Some(Version {
        millis: read_int(rd).ok()?,
        counter: read_int(rd).ok()?,
        node: read_int(rd).ok()?,
    })
}

fn op(rd: &mut Reader<'_>) -> Option<Op> {
    let marker = Marker::from_u8(*rd.first()?);
    if matches!(
        marker,
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32
    ) {
        // A variant without fields is its name alone.
        return (name(rd)? == b"Delete").then_some(Op::Delete);
    }
    if read_map_len(rd).ok()? != 1 {
        return None;
    }
    let variant = name(rd)?;
    let fields = read_array_len(rd).ok()?;
    Some(match (variant, fields) {
        (b"Set", 2) => Op::Set {
            value: bin(rd)?,
            expires_at_ms: expiry(rd)?,
        },
        (b"SetHash", 2) => Op::SetHash {
            fields: pairs(rd)?,
            expires_at_ms: expiry(rd)?,
        },
        (b"SetFields", 1) => Op::SetFields { fields: pairs(rd)? },
        (b"DeleteFields", 1) => Op::DeleteFields { fields: items(rd)? },
        (b"Expire", 1) => Op::Expire {
            expires_at_ms: expiry(rd)?,
        },
        (b"SetMembers", 2) => Op::SetMembers {
            members: items(rd)?,
            expires_at_ms: expiry(rd)?,
        },
        (b"AddMembers", 1) => Op::AddMembers {
            members: items(rd)?,
        },
        (b"RemoveMembers", 1) => Op::RemoveMembers {
            members: items(rd)?,
        },
        (b"SetZSet", 2) => Op::SetZSet {
            members: scored(rd)?,
            expires_at_ms: expiry(rd)?,
        },
        (b"SetScores", 1) => Op::SetScores {
            members: scored(rd)?,
        },
        (b"SetList", 2) => Op::SetList {
            items: items(rd)?,
            expires_at_ms: expiry(rd)?,
        },
        (b"Push", 2) => Op::Push {
            left: read_bool(rd).ok()?,
            items: items(rd)?,
        },
        (b"Pop", 2) => Op::Pop {
            left: read_bool(rd).ok()?,
            count: read_int(rd).ok()?,
        },
        (b"SetItem", 2) => Op::SetItem {
            index: read_int(rd).ok()?,
            value: bin(rd)?,
        },
        (b"Trim", 2) => Op::Trim {
            start: read_int(rd).ok()?,
            len: read_int(rd).ok()?,
        },
        _ => return None,
    })
}

fn pairs(rd: &mut Reader<'_>) -> Option<Vec<(Bytes, Bytes)>> {
    let count = read_array_len(rd).ok()? as usize;
    let mut pairs = Vec::with_capacity(count.min(rd.len()));
    for _ in 0..count {
        if read_array_len(rd).ok()? != 2 {
            return None;
        }
        pairs.push((bin(rd)?, bin(rd)?));
    }
    Some(pairs)
}

fn items(rd: &mut Reader<'_>) -> Option<Vec<Bytes>> {
    let count = read_array_len(rd).ok()? as usize;
    let mut items = Vec::with_capacity(count.min(rd.len()));
    for _ in 0..count {
        items.push(bin(rd)?);
    }
    Some(items)
}

/// Members with their scores, as pairs.
fn scored(rd: &mut Reader<'_>) -> Option<Vec<(Bytes, Score)>> {
    let count = read_array_len(rd).ok()? as usize;
    let mut members = Vec::with_capacity(count.min(rd.len()));
    for _ in 0..count {
        if read_array_len(rd).ok()? != 2 {
            return None;
        }
        members.push((bin(rd)?, Score(read_f64(rd).ok()?)));
    }
    Some(members)
}

/// `Option<u64>`: nil or the number.
fn expiry(rd: &mut Reader<'_>) -> Option<Option<u64>> {
    if Marker::from_u8(*rd.first()?) == Marker::Null {
        *rd = &rd[1..];
        return Some(None);
    }
    read_int(rd).ok().map(Some)
}

/// Binary data, copied out of the frame (the store keeps it long after the frame is gone).
fn bin(rd: &mut Reader<'_>) -> Option<Bytes> {
    let len = read_bin_len(rd).ok()? as usize;
    take(rd, len).map(Bytes::copy_from_slice)
}

fn name<'a>(rd: &mut Reader<'a>) -> Option<&'a [u8]> {
    let len = read_str_len(rd).ok()? as usize;
    take(rd, len)
}

fn take<'a>(rd: &mut Reader<'a>, len: usize) -> Option<&'a [u8]> {
    if rd.len() < len {
        return None;
    }
    let (taken, rest) = rd.split_at(len);
    *rd = rest;
    Some(taken)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn body(frame: &Frame) -> Vec<u8> {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire).unwrap();
        wire[4..].to_vec()
    }

    fn serde_decode(body: &[u8]) -> Option<Frame> {
        rmp_serde::from_slice(body).ok()
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            16 => vec(any::<u8>(), 0..40),
            // Past the 8- and 16-bit length forms.
            4 => vec(any::<u8>(), 250..300),
            1 => vec(any::<u8>(), 65_530..65_540),
        ]
        .prop_map(Bytes::from)
    }

    fn expiry() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            any::<u64>().prop_map(Some),
            (0u64..200).prop_map(Some)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let pairs = || vec((bytes(), bytes()), 0..4);
        prop_oneof![
            (bytes(), expiry()).prop_map(|(value, expires_at_ms)| Op::Set {
                value,
                expires_at_ms
            }),
            (pairs(), expiry()).prop_map(|(fields, expires_at_ms)| Op::SetHash {
                fields,
                expires_at_ms
            }),
            pairs().prop_map(|fields| Op::SetFields { fields }),
            vec(bytes(), 0..4).prop_map(|fields| Op::DeleteFields { fields }),
            Just(Op::Delete),
            expiry().prop_map(|expires_at_ms| Op::Expire { expires_at_ms }),
            (items(), expiry()).prop_map(|(members, expires_at_ms)| Op::SetMembers {
                members,
                expires_at_ms
            }),
            items().prop_map(|members| Op::AddMembers { members }),
            items().prop_map(|members| Op::RemoveMembers { members }),
            (scored(), expiry()).prop_map(|(members, expires_at_ms)| Op::SetZSet {
                members,
                expires_at_ms
            }),
            scored().prop_map(|members| Op::SetScores { members }),
            (items(), expiry()).prop_map(|(items, expires_at_ms)| Op::SetList {
                items,
                expires_at_ms
            }),
            (any::<bool>(), items()).prop_map(|(left, items)| Op::Push { left, items }),
            (any::<bool>(), any::<u64>()).prop_map(|(left, count)| Op::Pop { left, count }),
            (any::<u64>(), bytes()).prop_map(|(index, value)| Op::SetItem { index, value }),
            (any::<u64>(), any::<u64>()).prop_map(|(start, len)| Op::Trim { start, len }),
        ]
    }

    fn items() -> impl Strategy<Value = Vec<Bytes>> {
        vec(bytes(), 0..4)
    }

    fn scored() -> impl Strategy<Value = Vec<(Bytes, Score)>> {
        let score = prop_oneof![
            any::<f64>().prop_filter("not NaN", |s| !s.is_nan()),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
        ];
        vec((bytes(), score.prop_map(Score)), 0..4)
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let db = prop_oneof![Just(0u16), any::<u16>()];
        let version = || {
            any::<(u64, u32, u32)>().prop_map(|(millis, counter, node)| Version {
                millis,
                counter,
                node,
            })
        };
        (
            bytes(),
            version(),
            op(),
            db,
            proptest::option::of(version()),
        )
            .prop_map(|(key, version, op, db, base)| Mutation {
                key,
                version,
                op,
                db,
                base,
            })
    }

    #[test]
    fn other_frames_are_left_to_serde() {
        let frames = [
            Frame::Ack { seq: 3 },
            Frame::Snapshot {
                seq: 1,
                mutations: vec![],
                last: true,
            },
            Frame::Repair { mutations: vec![] },
            Frame::Nack { from: 1, to: 2 },
        ];
        for frame in frames {
            assert_eq!(mutations(&body(&frame)), None, "{frame:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn frames_of_writes_read_as_serde_reads_them(
            first in any::<u64>(),
            seq in any::<u64>(),
            writes in vec(mutation(), 0..6),
        ) {
            let frame = Frame::Mutations { first, seq, mutations: writes };
            let body = body(&frame);
            prop_assert_eq!(mutations(&body), Some(frame.clone()));
            prop_assert_eq!(serde_decode(&body), Some(frame));
        }

        /// Whatever the bytes, a frame read here is the frame serde reads from them.
        #[test]
        fn damaged_frames_are_never_read_differently(
            writes in vec(mutation(), 1..4),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = Frame::Mutations { first: 1, seq: 2, mutations: writes };
            let mut damaged = body(&frame);
            let at = at.index(damaged.len());
            damaged[at] = byte;
            damaged.truncate(cut.index(damaged.len() + 1).max(at + 1));
            if let Some(read) = mutations(&damaged) {
                prop_assert_eq!(serde_decode(&damaged), Some(read));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
            if let Some(read) = mutations(&bytes) {
                prop_assert_eq!(serde_decode(&bytes), Some(read));
            }
        }
    }
}
