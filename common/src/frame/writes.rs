//! Local writes encoded as they are made, for a [`Frame::Mutations`].
//!
//! A store that records its writes as values shares every key, field and value with them
//! (a reference count), and the frame that carries them copies the bytes once more, long
//! after, when they are no longer in the cache. Under pipelined hash writes, that sharing
//! and the late copy were a quarter of a primary's CPU. Encoded at the write, under the
//! store's lock, each value is copied once, while it is hot, and never shared.

use bytes::{BufMut, BytesMut};
use serde::Deserialize;

use super::{Frame, FrameError, MAX_FRAME_BYTES};
use crate::ops::Mutation;

/// Mutations in the MessagePack encoding they have inside a [`Frame::Mutations`]'s list,
/// back to back.
#[derive(Debug, Default)]
pub struct Writes {
    bytes: BytesMut,
    count: usize,
}

impl Writes {
    /// Appends `mutation`'s encoding.
    pub fn push(&mut self, mutation: &Mutation) {
        let mut writer = (&mut self.bytes).writer();
        // A mutation has no type MessagePack cannot hold, and memory takes any write.
        rmp_serde::encode::write(&mut writer, mutation).expect("a mutation encodes into memory");
        self.count += 1;
    }

    /// Appends `other`'s mutations after these (a script's writes, made on another
    /// thread, to the batch of the connection that ran it).
    pub fn append(&mut self, other: &Writes) {
        self.bytes.extend_from_slice(&other.bytes);
        self.count += other.count;
    }

    /// How many mutations.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the encoded mutations.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Takes the mutations, leaving these empty. The buffer's spare room stays for the
    /// next ones: one allocation of [`Writes::SPARE`] bytes serves the holds of many
    /// writes, where a fresh buffer per hold grew by reallocation at every write.
    pub fn split(&mut self) -> Writes {
        let taken = Writes {
            bytes: self.bytes.split(),
            count: std::mem::take(&mut self.count),
        };
        if self.bytes.capacity() < Self::SPARE / 16 {
            self.bytes.reserve(Self::SPARE);
        }
        taken
    }

    /// The room [`Writes::split`] keeps ahead of the writes.
    pub const SPARE: usize = 64 * 1024;

    /// Forgets the mutations (the buffer stays for the next ones).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }

    /// The mutations as values again.
    ///
    /// # Errors
    /// Never for what [`Writes::push`] encoded; the error names what did not decode.
    pub fn to_mutations(&self) -> Result<Vec<Mutation>, FrameError> {
        let mut decoder = rmp_serde::Deserializer::from_read_ref(&self.bytes[..]);
        (0..self.count)
            .map(|_| {
                Mutation::deserialize(&mut decoder)
                    .map_err(|err| FrameError::Malformed(err.to_string()))
            })
            .collect()
    }
}

impl Frame {
    /// Appends, length-prefixed, the frame `Frame::Mutations { first, seq, mutations }`
    /// whose mutations are those of `parts`, in order: the same bytes as
    /// [`Frame::encode`] gives that frame, without decoding or copying the mutations
    /// twice.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the frame would exceed the limit.
    pub fn encode_writes(
        first: u64,
        seq: u64,
        parts: &[Writes],
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let count: usize = parts.iter().map(Writes::len).sum();
        let start = out.len();
        out.put_u32(0);
        // The layout rmp-serde gives the frame: a map from the variant's name to its fields
        // as an array, the list of mutations an array too; integers in their shortest form.
        {
            let mut writer = (&mut *out).writer();
            let count = u32::try_from(count).map_err(|_| FrameError::TooLarge {
                size: count,
                max: u32::MAX as usize,
            })?;
            // Writing into memory does not fail.
            let _ = rmp::encode::write_map_len(&mut writer, 1);
            let _ = rmp::encode::write_str(&mut writer, "Mutations");
            let _ = rmp::encode::write_array_len(&mut writer, 3);
            let _ = rmp::encode::write_uint(&mut writer, first);
            let _ = rmp::encode::write_uint(&mut writer, seq);
            let _ = rmp::encode::write_array_len(&mut writer, count);
        }
        let mutations: usize = parts.iter().map(Writes::encoded_len).sum();
        let size = out.len() - start - 4 + mutations;
        if size > MAX_FRAME_BYTES {
            out.truncate(start);
            return Err(FrameError::TooLarge {
                size,
                max: MAX_FRAME_BYTES,
            });
        }
        out.reserve(mutations);
        for part in parts {
            out.extend_from_slice(&part.bytes);
        }
        out[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ops::Op;
    use crate::version::Version;

    fn mutations(count: usize) -> Vec<Mutation> {
        let ops = [
            Op::Set {
                value: Bytes::from(vec![b'v'; 1024]),
                expires_at_ms: Some(u64::MAX),
            },
            Op::SetHash {
                fields: vec![(Bytes::from_static(b"f"), Bytes::from_static(b"v"))],
                expires_at_ms: None,
            },
            Op::SetFields {
                fields: vec![(Bytes::from_static(b"g"), Bytes::new())],
            },
            Op::DeleteFields {
                fields: vec![Bytes::from_static(b"h")],
            },
            Op::Delete,
            Op::Expire {
                expires_at_ms: Some(7),
            },
        ];
        (0..count)
            .map(|i| Mutation {
                key: Bytes::from(format!("session:{i}")),
                version: Version {
                    millis: i as u64 * 1_000_003,
                    counter: i as u32,
                    node: 7,
                },
                op: ops[i % ops.len()].clone(),
                db: (i % 3) as u16,
                base: None,
            })
            .collect()
    }

    /// The partner decodes these frames like any other: the bytes must be exactly those
    /// of the frame encoded whole, whatever the numbers and however many mutations (the
    /// lengths' encodings change at 16 and 65,536).
    #[test]
    fn writes_encode_exactly_as_the_whole_frame() {
        let numbers = [(1, 1), (127, 128), (255, 65_536), (1 << 40, u64::MAX)];
        let cases = [0, 1, 15, 16, 17, 300]
            .into_iter()
            .flat_map(|count| numbers.map(|(first, seq)| (count, first, seq)))
            .chain([65_535, 65_536].map(|count| (count, 3, 4)));
        for (count, first, seq) in cases {
            let all = mutations(count);
            // In two parts, as a frame that merged two batches holds them.
            let (one, two) = all.split_at(count / 3);
            let parts: Vec<Writes> = [one, two]
                .iter()
                .map(|part| {
                    let mut writes = Writes::default();
                    part.iter().for_each(|m| writes.push(m));
                    writes
                })
                .collect();
            let mut from_parts = BytesMut::from(&b"before"[..]);
            Frame::encode_writes(first, seq, &parts, &mut from_parts).unwrap();
            let mut whole = BytesMut::from(&b"before"[..]);
            let frame = Frame::Mutations {
                first,
                seq,
                mutations: all.clone(),
            };
            frame.encode(&mut whole).unwrap();
            assert!(from_parts == whole, "{count} mutations, {first}..={seq}");
            assert_eq!(Frame::decode_exact(&from_parts[6..]).unwrap(), frame);
            let decoded: Vec<Mutation> = parts
                .iter()
                .flat_map(|part| part.to_mutations().unwrap())
                .collect();
            assert_eq!(decoded, all);
        }
    }

    /// Split off while the buffer fills again, each part keeps exactly its own writes.
    #[test]
    fn split_parts_keep_their_writes_while_the_buffer_fills_again() {
        let all = mutations(500);
        let mut writes = Writes::default();
        let mut parts = Vec::new();
        for chunk in all.chunks(7) {
            chunk.iter().for_each(|m| writes.push(m));
            parts.push(writes.split());
            assert!(writes.is_empty() && writes.encoded_len() == 0);
        }
        let decoded: Vec<Mutation> = parts
            .iter()
            .flat_map(|part| part.to_mutations().unwrap())
            .collect();
        assert_eq!(decoded, all);
    }

    #[test]
    fn a_frame_past_the_limit_is_refused_and_nothing_written() {
        let mut writes = Writes::default();
        let huge = Mutation {
            key: Bytes::from_static(b"k"),
            version: Version::ZERO,
            op: Op::Set {
                value: Bytes::from(vec![0; MAX_FRAME_BYTES]),
                expires_at_ms: None,
            },
            db: 0,
            base: None,
        };
        writes.push(&huge);
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(matches!(
            Frame::encode_writes(1, 1, &[writes], &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(&out[..], b"kept");
    }
}
