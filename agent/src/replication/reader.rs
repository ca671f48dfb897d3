//! The link's reader: the partner's frames, from the stream and the multicast inbox, fed
//! to the core; what it answers, performed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tandem_common::frame::Frame;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::anti_entropy::Exchange;
use super::multicast;
use super::proto::{Action, Arrived};
use super::transport::{FrameReceiver, TransportError};
use super::{Inner, LinkShared, Waker, names};

fn malformed(reason: String) -> TransportError {
    TransportError::Frame(tandem_common::frame::FrameError::Malformed(reason))
}

impl Inner {
    /// Applies the partner's frames that are in order, oldest first.
    pub(super) fn apply_arrived(self: &Arc<Self>, shared: &LinkShared, ready: Vec<Arrived>) {
        for arrived in ready {
            match arrived {
                Arrived::Writes(mutations) => {
                    self.mutations_received.increment(mutations.len() as u64);
                    let keys = self.store.apply(mutations).diverged;
                    if !keys.is_empty() {
                        // Both sides wrote these keys: the partner's whole values replace
                        // what the deltas were applied to here.
                        metrics::counter!(names::DIVERGED_KEYS).increment(keys.len() as u64);
                        debug!(keys = keys.len(), "fetching keys both sides wrote");
                        let _ = shared.outbound.send(Frame::Fetch { keys }.into());
                    }
                }
                Arrived::Snapshot { mutations, last } => {
                    let keys = mutations.len() as u64;
                    metrics::counter!(names::SNAPSHOT_KEYS_RECEIVED).increment(keys);
                    let total = shared.snapshot_keys.fetch_add(keys, Ordering::Relaxed) + keys;
                    self.store.apply(mutations);
                    if last {
                        info!(keys = total, "snapshot from the partner applied");
                        self.set_syncing(false);
                    }
                }
            }
        }
    }

    /// Reads the partner's frames, from the stream and from the multicast inbox, feeds
    /// them to the core and performs what it answers; acknowledges what it applied once
    /// no frame is at hand.
    pub(super) async fn read_frames(
        self: Arc<Self>,
        id: u64,
        shared: Arc<LinkShared>,
        mut receiver: FrameReceiver,
        mut inbox: mpsc::Receiver<Frame>,
    ) {
        // Which path is looked at first when both have a frame: they take turns, which is
        // fair and, unlike `select!`'s random pick, replays in a seeded simulation.
        let mut stream_first = false;
        loop {
            // Each frame with the path it took: true for the stream.
            let next = match receiver.buffered() {
                Ok(Some(frame)) => Ok((frame, true)),
                Ok(None) => {
                    // Frames that have already arrived are applied before one
                    // acknowledgement covers them all.
                    if let Some(ack) = shared.core.lock().take_ack() {
                        let _ = shared.outbound.send(ack.into());
                    }
                    stream_first = !stream_first;
                    if stream_first {
                        tokio::select! {
                            biased;
                            frame = receiver.recv() => frame.map(|frame| (frame, true)),
                            Some(frame) = inbox.recv() => Ok((frame, false)),
                        }
                    } else {
                        tokio::select! {
                            biased;
                            Some(frame) = inbox.recv() => Ok((frame, false)),
                            frame = receiver.recv() => frame.map(|frame| (frame, true)),
                        }
                    }
                }
                Err(err) => Err(err),
            };
            let (frame, by_stream) = match next {
                Ok(frame) => frame,
                Err(err) => {
                    self.link_failed(id, "read frame", &err);
                    return;
                }
            };
            let frame = match Exchange::take(frame) {
                Ok(Ok(exchange)) => {
                    Self::hand_to_anti_entropy(&shared, exchange).await;
                    continue;
                }
                Ok(Err(frame)) => frame,
                Err(reason) => {
                    self.link_failed(id, "frame from the partner", &malformed(reason));
                    return;
                }
            };
            // A script holds the keyspace: apply once it is done, without blocking a thread.
            self.store.gate().idle().await;
            let actions = match self.take_frame(&shared, frame, by_stream) {
                Ok(actions) => actions,
                Err(reason) => {
                    self.link_failed(id, "frame from the partner", &malformed(reason));
                    return;
                }
            };
            self.perform(&shared, actions);
        }
    }

    /// Hands a frame of the partner's anti-entropy to the link's task for it: a repair
    /// waits for room (it carries data), a digest or request finding the task still busy
    /// with the last round is skipped (the next round makes it again).
    async fn hand_to_anti_entropy(shared: &LinkShared, exchange: Exchange) {
        match exchange {
            // What the partner sends or asks for whole is never dropped: a fetch stands
            // for keys both sides wrote.
            Exchange::Repair(_) | Exchange::Fetch(_) => {
                let _ = shared.anti_entropy.send(exchange).await;
            }
            _ => {
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    shared.anti_entropy.try_send(exchange)
                {
                    debug!("anti-entropy busy with the last round: a comparison skipped");
                }
            }
        }
    }

    /// One frame from the partner: the core's answer, or why the frame breaks the link.
    pub(super) fn take_frame(
        self: &Arc<Self>,
        shared: &LinkShared,
        frame: Frame,
        by_stream: bool,
    ) -> Result<Vec<Action<Waker>>, String> {
        let now = tokio::time::Instant::now();
        let nothing = Ok(Vec::new());
        match frame {
            Frame::Mutations {
                first,
                seq,
                mutations,
            } => shared
                .core
                .lock()
                .on_mutations(first, seq, mutations, by_stream),
            Frame::Snapshot {
                seq,
                mutations,
                last,
            } => shared.core.lock().on_snapshot(seq, mutations, last),
            Frame::Ack { seq } => {
                let mut core = shared.core.lock();
                let actions = core.on_ack(seq, now);
                self.lag.set(core.behind() as f64);
                actions
            }
            Frame::Nack { from, to } => shared.core.lock().on_nack(from, to, now),
            Frame::Probe { nonce } => {
                let _ = shared.outbound.send(Frame::ProbeAck { nonce }.into());
                nothing
            }
            Frame::ProbeAck { nonce } => {
                if shared.core.lock().on_probe_ack(nonce) {
                    info!(
                        "the partner receives this agent's multicast: live writes go by multicast"
                    );
                    self.publish_protection();
                }
                nothing
            }
            Frame::MulticastKey { key } => {
                let opener = multicast::Opener::new(&key).ok_or("multicast key of a wrong size")?;
                *shared.multicast.opener.lock() = Some(opener);
                nothing
            }
            Frame::Scripts { bodies } => {
                if let Some(cache) = self.scripts.get() {
                    cache.learn(bodies);
                }
                nothing
            }
            other => Err(format!("unexpected frame on a running link: {other:?}")),
        }
    }
}
