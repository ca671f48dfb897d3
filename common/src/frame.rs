//! Replication frames: what partners send each other, as versioned, length-prefixed
//! MessagePack.
//!
//! Wire format: a 4-byte big-endian length, then the MessagePack encoding of a [`Frame`].
//! A frame larger than the limit, or one that does not decode, is an error: the channel is
//! closed with that reason and nothing is applied.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ops::Mutation;
use crate::schema::Protocol;

mod fast;
mod writes;

pub use writes::Writes;

/// Largest frame accepted (a batch of mutations, a snapshot chunk).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// One message between partners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame on a channel, from each side.
    Hello {
        /// The protocol the sender speaks; see [`Protocol`] for what is compatible.
        protocol: Protocol,
        cluster: String,
        node_id: String,
    },
    /// "Be my partner", from the agent with the lower id; `epoch` names the pair.
    Propose { epoch: u64 },
    /// The receiver was lone and is now paired.
    Accept { epoch: u64 },
    /// The receiver is not available (already paired, or proposing elsewhere).
    Reject { reason: String },
    /// Live writes: the batches numbered `first..=seq` (consecutive batches may travel as
    /// one frame). Acknowledged by sequence number once every earlier one has arrived too,
    /// whichever path (stream or multicast) carried it.
    Mutations {
        first: u64,
        seq: u64,
        mutations: Vec<Mutation>,
    },
    /// Part of the sender's full store, sent when the pair forms.
    Snapshot {
        seq: u64,
        mutations: Vec<Mutation>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Everything up to and including `seq` has been applied.
    Ack { seq: u64 },
    /// Anti-entropy: a digest of each shard of the sender's store.
    Digest { shards: Vec<u64> },
    /// Anti-entropy: "send me what you hold in these shards" (partners of protocol 2.1;
    /// from [`Protocol::DELTA_BASES`](crate::schema::Protocol::DELTA_BASES) on, versions
    /// go first: [`Frame::Versions`]).
    RepairRequest { shards: Vec<u32> },
    /// Anti-entropy: every key the sender holds in `shards` (which differed), live or
    /// deleted, with its version — no values. The receiver sends back the values
    /// it holds newer, and fetches ([`Frame::Fetch`]) those it holds older or lacks.
    Versions {
        shards: Vec<u32>,
        keys: Vec<KeyVersion>,
    },
    /// Anti-entropy: the sender's keys and deletes in shards that differed.
    Repair { mutations: Vec<Mutation> },
    /// The key the sender seals its multicast datagrams with, for this link only (sent
    /// over the mutually authenticated stream, never over multicast).
    MulticastKey { key: Vec<u8> },
    /// Sent over multicast when a pair forms: answered over the stream, it shows that the
    /// partner receives the sender's multicast.
    Probe { nonce: u64 },
    /// The answer to a [`Frame::Probe`] that arrived.
    ProbeAck { nonce: u64 },
    /// The live-write numbers `from..=to` did not arrive by multicast though later ones
    /// did: "send them again over the stream now".
    Nack { from: u64, to: u64 },
    /// Lua scripts the sender's cache holds (all of them when the pair forms, then each
    /// new one), so that `EVALSHA` of them works on the partner after a failover. Sent to
    /// partners speaking [`Protocol::SCRIPTS`](crate::schema::Protocol::SCRIPTS) or later.
    Scripts { bodies: Vec<bytes::Bytes> },
    /// "Send me your whole value of these keys (database, key)": a delta arrived for a
    /// value this side holds at another version. Answered with a [`Frame::Repair`]. Sent
    /// to partners speaking [`Protocol::DELTA_BASES`](crate::schema::Protocol::DELTA_BASES)
    /// or later.
    Fetch { keys: Vec<(u16, bytes::Bytes)> },
}

/// A key's version (of its value or of its delete) as anti-entropy compares it:
/// (database, key, version).
pub type KeyVersion = (u16, bytes::Bytes, crate::version::Version);

/// A frame that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl Frame {
    /// Appends this frame, length-prefixed, to `out`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the encoding exceeds the limit.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        // Encoded in place behind a length prefix filled in afterwards: a reused buffer
        // takes a batch of frames without growing or copying.
        let start = out.len();
        out.put_u32(0);
        let mut writer = out.writer();
        let encoded = rmp_serde::encode::write(&mut writer, self);
        let out = writer.into_inner();
        let size = out.len() - start - 4;
        if let Err(err) = encoded {
            out.truncate(start);
            return Err(FrameError::Malformed(err.to_string()));
        }
        if size > MAX_FRAME_BYTES {
            out.truncate(start);
            return Err(FrameError::TooLarge {
                size,
                max: MAX_FRAME_BYTES,
            });
        }
        out[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
        Ok(())
    }

    /// Takes the next frame off the front of `buf`; `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// A declared length past `max` (checked before the body arrives) or a body that does
    /// not decode.
    pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if size > max {
            return Err(FrameError::TooLarge { size, max });
        }
        if buf.len() < 4 + size {
            return Ok(None);
        }
        buf.advance(4);
        let body = buf.split_to(size);
        Self::decode_body(&body).map(Some)
    }

    /// Decodes `buf` as exactly one length-prefixed frame and nothing else (a datagram's
    /// plaintext), without copying it first.
    ///
    /// # Errors
    /// A length prefix that does not match the bytes, or a body that does not decode.
    pub fn decode_exact(buf: &[u8]) -> Result<Frame, FrameError> {
        let Some((prefix, body)) = buf.split_first_chunk::<4>() else {
            return Err(FrameError::Malformed("shorter than a length prefix".into()));
        };
        let size = u32::from_be_bytes(*prefix) as usize;
        if size != body.len() {
            return Err(FrameError::Malformed(format!(
                "length prefix {size} for a body of {} bytes",
                body.len()
            )));
        }
        Self::decode_body(body)
    }

    fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
        if let Some(frame) = fast::mutations(body) {
            return Ok(frame);
        }
        rmp_serde::from_slice(body).map_err(|err| FrameError::Malformed(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ops::Op;
    use crate::version::Version;

    fn sample() -> Vec<Frame> {
        let mutation = Mutation {
            key: Bytes::from_static(b"session:1"),
            version: Version {
                millis: 1,
                counter: 2,
                node: 3,
            },
            op: Op::SetFields {
                fields: vec![(Bytes::from_static(b"f"), Bytes::from_static(b"v"))],
            },
            db: 3,
            base: Some(Version {
                millis: 1,
                counter: 1,
                node: 3,
            }),
        };
        vec![
            Frame::Hello {
                protocol: Protocol::CURRENT,
                cluster: "c".into(),
                node_id: "a".into(),
            },
            Frame::Propose { epoch: 9 },
            Frame::Accept { epoch: 9 },
            Frame::Reject {
                reason: "paired".into(),
            },
            Frame::Mutations {
                first: 1,
                seq: 1,
                mutations: vec![mutation.clone()],
            },
            Frame::Snapshot {
                seq: 2,
                mutations: vec![mutation],
                last: true,
            },
            Frame::Ack { seq: 2 },
            Frame::Digest {
                shards: vec![1, 2, u64::MAX],
            },
            Frame::RepairRequest {
                shards: vec![0, 1023],
            },
            Frame::Repair { mutations: vec![] },
            Frame::MulticastKey { key: vec![7; 32] },
            Frame::Probe { nonce: 3 },
            Frame::ProbeAck { nonce: 3 },
            Frame::Nack { from: 4, to: 6 },
            Frame::Scripts {
                bodies: vec![bytes::Bytes::from_static(b"return 1")],
            },
            Frame::Fetch {
                keys: vec![
                    (0, bytes::Bytes::from_static(b"k")),
                    (2, bytes::Bytes::new()),
                ],
            },
            Frame::Versions {
                shards: vec![3, 1023],
                keys: vec![(1, bytes::Bytes::from_static(b"k"), Version::ZERO)],
            },
        ]
    }

    #[test]
    fn one_whole_frame_decodes_exactly_and_anything_else_is_malformed() {
        for frame in sample() {
            let mut wire = BytesMut::new();
            frame.encode(&mut wire).unwrap();
            assert_eq!(Frame::decode_exact(&wire).unwrap(), frame);
            // Cut short, or followed by more bytes: not one whole frame.
            assert!(Frame::decode_exact(&wire[..wire.len() - 1]).is_err());
            let mut longer = wire.to_vec();
            longer.push(0);
            assert!(Frame::decode_exact(&longer).is_err());
        }
        assert!(Frame::decode_exact(b"").is_err());
        assert!(Frame::decode_exact(&[0, 0, 0, 1, 0xc1]).is_err());
    }

    #[test]
    fn frames_round_trip_split_anywhere() {
        let mut wire = BytesMut::new();
        for frame in sample() {
            frame.encode(&mut wire).unwrap();
        }
        let wire = wire.freeze();
        for split in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut decoded = Vec::new();
            while let Some(frame) = Frame::decode(&mut buf, MAX_FRAME_BYTES).unwrap() {
                decoded.push(frame);
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(frame) = Frame::decode(&mut buf, MAX_FRAME_BYTES).unwrap() {
                decoded.push(frame);
            }
            assert_eq!(decoded, sample(), "split at {split}");
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Frame::decode(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1][..]);
        assert!(matches!(
            Frame::decode(&mut buf, 1024),
            Err(FrameError::Malformed(_))
        ));
        let mut seed = 7u32;
        for _ in 0..2_000 {
            let mut bytes = vec![0, 0, 0, 16];
            for _ in 0..16 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                bytes.push(seed as u8);
            }
            let _ = Frame::decode(&mut BytesMut::from(&bytes[..]), 1024);
        }
    }
}

/// Frames come off the network: whatever arrives, decoding answers a frame, "more bytes"
/// or an error, and never panics or reads past a frame.
#[cfg(test)]
mod properties {
    use bytes::BytesMut;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn frames() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<(u16, u16)>(), ".{0,40}", ".{0,40}").prop_map(
                |((major, minor), cluster, node_id)| Frame::Hello {
                    protocol: Protocol { major, minor },
                    cluster,
                    node_id,
                }
            ),
            any::<u64>().prop_map(|epoch| Frame::Propose { epoch }),
            any::<u64>().prop_map(|seq| Frame::Ack { seq }),
            (any::<u64>(), any::<u64>()).prop_map(|(from, to)| Frame::Nack { from, to }),
            ".{0,200}".prop_map(|reason| Frame::Reject { reason }),
            vec(any::<u64>(), 0..64).prop_map(|shards| Frame::Digest { shards }),
            vec(any::<u32>(), 0..64).prop_map(|shards| Frame::RepairRequest { shards }),
            vec(any::<u8>(), 0..64).prop_map(|key| Frame::MulticastKey { key }),
            vec((any::<u16>(), vec(any::<u8>(), 0..16)), 0..16).prop_map(|keys| Frame::Fetch {
                keys: keys
                    .into_iter()
                    .map(|(db, key)| (db, bytes::Bytes::from(key)))
                    .collect(),
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096), max in 0usize..8192) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            if let Ok(Some(_)) = Frame::decode(&mut buf, max) {
                prop_assert!(buf.len() < before);
            }
        }

        #[test]
        fn frames_survive_any_split_and_leave_what_follows(
            frame in frames(),
            cut in any::<prop::sample::Index>(),
            tail in vec(any::<u8>(), 0..16),
        ) {
            let mut encoded = BytesMut::new();
            frame.encode(&mut encoded).unwrap();
            let whole = encoded.to_vec();
            let at = cut.index(whole.len());
            let mut partial = BytesMut::from(&whole[..at]);
            prop_assert_eq!(Frame::decode(&mut partial, MAX_FRAME_BYTES).unwrap(), None);
            let mut full = BytesMut::from(&whole[..]);
            full.extend_from_slice(&tail);
            prop_assert_eq!(Frame::decode(&mut full, MAX_FRAME_BYTES).unwrap(), Some(frame));
            prop_assert_eq!(&full[..], &tail[..]);
        }

        #[test]
        fn a_declared_length_past_the_limit_is_refused_before_the_body(
            size in 1025u32..,
            body in vec(any::<u8>(), 0..64),
        ) {
            let mut buf = BytesMut::from(&size.to_be_bytes()[..]);
            buf.extend_from_slice(&body);
            let too_large = matches!(
                Frame::decode(&mut buf, 1024),
                Err(FrameError::TooLarge { .. })
            );
            prop_assert!(too_large);
        }
    }
}
