//! The snapshot a new partner receives: the whole store, in chunks, with a few frames
//! unacknowledged at a time.

use std::sync::Arc;
use std::time::Duration;

use tandem_common::ops::Mutation;
use tandem_common::schema::SyncProgress;
use tracing::info;

use super::proto::{Action, SNAPSHOT_WINDOW};
use super::{Inner, names};

/// Keys per snapshot frame.
pub(super) const SNAPSHOT_CHUNK_KEYS: usize = 1_000;

/// About the most bytes of one snapshot or repair frame: the keys read at once are sent in
/// frames of about this size, far below the frame limit whatever their values' sizes.
pub(super) const CHUNK_BYTES: usize = 8 << 20;

/// `mutations` cut, in order, into frames of about [`CHUNK_BYTES`] each (a larger mutation
/// alone); one empty frame for none.
pub(super) fn in_frames(mutations: Vec<Mutation>) -> Vec<Vec<Mutation>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = 0;
    for mutation in mutations {
        let size = mutation.encoded_size();
        if !frame.is_empty() && bytes + size > CHUNK_BYTES {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += size;
        frame.push(mutation);
    }
    if !frame.is_empty() || frames.is_empty() {
        frames.push(frame);
    }
    frames
}

impl Inner {
    /// Sends this agent's whole store to the new partner, a chunk at a time, with at most
    /// a few chunks unacknowledged.
    pub(super) async fn send_snapshot(self: Arc<Self>, id: u64, partner: String) {
        let started = tokio::time::Instant::now();
        let mut cursor = Some(0);
        let mut sent = 0u64;
        self.store.gate().idle().await;
        let total = self.store.stats().0 as u64;
        self.publish_snapshot(Some(SyncProgress { sent, total }));
        let mut last_report = started;
        while let Some(at) = cursor {
            self.store.gate().idle().await;
            let (next, mutations) = self
                .store
                .run(|ks, now| ks.snapshot_chunk(at, SNAPSHOT_CHUNK_KEYS, now))
                .value;
            cursor = next;
            let frames = in_frames(mutations);
            let count = frames.len();
            for (i, mutations) in frames.into_iter().enumerate() {
                let keys = mutations.len() as u64;
                let (seq, shared) = {
                    let state = self.state.lock();
                    let Some(link) = state.link(id) else {
                        return;
                    };
                    let last = cursor.is_none() && i + 1 == count;
                    let (seq, actions) = link.shared.core.lock().on_snapshot_chunk(mutations, last);
                    // Under the state lock, as live writes: frames go in the order of their
                    // numbers.
                    for action in actions {
                        if let Action::Stream(outgoing) = action
                            && link.shared.outbound.send(outgoing).is_err()
                        {
                            return;
                        }
                    }
                    (seq, link.shared.clone())
                };
                sent += keys;
                metrics::counter!(names::SNAPSHOT_KEYS_SENT).increment(keys);
                if last_report.elapsed() >= Duration::from_secs(1) {
                    info!(%partner, keys_sent = sent, keys_total = total, "snapshot in progress");
                    self.publish_snapshot(Some(SyncProgress {
                        sent,
                        total: total.max(sent),
                    }));
                    last_report = tokio::time::Instant::now();
                }
                let window = seq.saturating_sub(SNAPSHOT_WINDOW);
                if shared.acked.wait_for(|a| a >= window).await.is_err() {
                    self.publish_snapshot(None);
                    return;
                }
            }
        }
        self.publish_snapshot(None);
        info!(%partner, keys = sent, elapsed = ?started.elapsed(), "snapshot sent");
    }

    /// Publishes how far the snapshot to the partner has come (`None`: none in progress).
    /// As with [`Inner::publish_protection`], the update publishes the latest progress when
    /// it runs, so updates that overtake each other do no harm.
    pub(super) fn publish_snapshot(self: &Arc<Self>, progress: Option<SyncProgress>) {
        *self.snapshot_progress.lock() = progress;
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            gossip
                .update(Box::new(move |advert| {
                    advert.snapshot = *inner.snapshot_progress.lock();
                }))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use tandem_common::frame::{Frame, MAX_FRAME_BYTES};
    use tandem_common::ops::Op;
    use tandem_common::version::Version;

    use super::*;

    /// A snapshot or repair reads up to 1,000 keys at once; with large values they must
    /// still travel in frames the partner accepts, in order and every one of them.
    #[test]
    pub(super) fn keys_read_at_once_travel_in_frames_below_the_limit() {
        let key = |i: usize, size: usize| Mutation {
            key: Bytes::from(format!("session:{i}")),
            version: Version::ZERO,
            op: Op::Set {
                value: Bytes::from(vec![b'v'; size]),
                expires_at_ms: None,
            },
            db: 0,
            base: None,
        };
        // 40 values of 3 MiB: 120 MiB read at once.
        let mutations: Vec<Mutation> = (0..40).map(|i| key(i, 3 << 20)).collect();
        let frames = in_frames(mutations.clone());
        assert!(frames.len() > 1);
        for mutations in &frames {
            let mut encoded = BytesMut::new();
            Frame::Snapshot {
                seq: 1,
                mutations: mutations.clone(),
                last: false,
            }
            .encode(&mut encoded)
            .unwrap();
            assert!(encoded.len() <= CHUNK_BYTES + (3 << 20) && encoded.len() < MAX_FRAME_BYTES);
        }
        assert_eq!(frames.concat(), mutations, "every key, in order");
        // Nothing read: one empty frame still goes (the last of a snapshot says so).
        assert_eq!(in_frames(Vec::new()), vec![Vec::<Mutation>::new()]);
        // A key larger than a frame's share goes alone.
        let one = in_frames(vec![key(0, 10), key(1, CHUNK_BYTES), key(2, 10)]);
        assert_eq!(one.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
