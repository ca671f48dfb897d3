//! The link's writer: sends what the core queued, in one write per batch, live writes
//! by multicast where the core routes them there.

use std::sync::Arc;

use bytes::BytesMut;
use tandem_common::frame::Frame;
use tokio::sync::mpsc;

use super::link::{self, Batch, Outgoing};
use super::transport::{FrameSender, TransportError};
use super::{Inner, LinkShared};

/// Whether the writer may hold the batch back: it only sends the pending frame, which is
/// small, and the partner has frames to acknowledge already (see [`LinkCore::may_hold`]).
fn may_hold(shared: &LinkShared, batch: &Batch) -> bool {
    batch
        .flush
        .filter(|_| batch.may_wait())
        .is_some_and(|first| shared.core.lock().may_hold(first))
}

impl Inner {
    /// Sends the datagrams of full frames made while the store was locked.
    pub(super) fn send_unsent(&self, shared: &LinkShared) {
        let unsent = std::mem::take(&mut *shared.unsent.lock());
        for (seq, datagram) in unsent {
            self.multicast_datagram(shared, seq, datagram);
        }
    }

    /// Seals and multicasts a frame of live writes; a frame the socket refuses goes over
    /// the stream.
    pub(super) fn multicast_datagram(&self, shared: &LinkShared, seq: u64, datagram: BytesMut) {
        let sent = self
            .multicast
            .as_deref()
            .is_some_and(|socket| shared.multicast.send(socket, datagram));
        if !sent && let Some(writes) = shared.core.lock().datagram_refused(seq) {
            let _ = shared.outbound.send(Outgoing::Stream(writes));
        }
    }

    /// Sends queued frames in order, in one write per batch; consecutive mutation batches
    /// travel as one frame. While multicast is active, live writes that fit a datagram go
    /// by multicast, and those not acknowledged in time again by the stream.
    pub(super) async fn write_frames(
        self: Arc<Self>,
        id: u64,
        shared: Arc<LinkShared>,
        mut sender: FrameSender,
        mut outbound: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let socket = self.multicast.as_deref();
        let mut stream = BytesMut::new();
        let mut ticker = tokio::time::interval(link::RETRANSMIT_AFTER / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A connection that multicasts a frame itself also starts the next pending frame
            // and flushes it, which wakes this loop and brings the timer back.
            let awaiting = shared.core.lock().awaiting_datagrams();
            let first = tokio::select! {
                biased;
                frame = outbound.recv() => match frame {
                    Some(frame) => frame,
                    None => return,
                },
                now = ticker.tick(), if awaiting => {
                    let actions = shared.core.lock().on_tick(now);
                    self.perform(&shared, actions);
                    continue;
                }
            };
            // Let the connections that are running right now queue their writes too: they
            // then share one packet (and the partner's one acknowledgement).
            tokio::task::yield_now().await;
            // Full frames a connection made and has not sent yet go first.
            self.send_unsent(&shared);
            let mut batch = Batch::new(first);
            while !batch.is_full() {
                let Ok(next) = outbound.try_recv() else { break };
                batch.push(next);
            }
            // Under load, while the partner has frames to acknowledge, the pending frame
            // waits a little for more writes to join it (they are waiting for the same
            // answer); a connection whose writes no longer fit it sends it meanwhile.
            if may_hold(&shared, &batch) {
                let hold = tokio::time::sleep(link::BATCH_HOLD);
                tokio::pin!(hold);
                while may_hold(&shared, &batch) {
                    let seen = shared.acked.get();
                    tokio::select! {
                        biased;
                        acked = shared.acked.wait_for(|a| a > seen) => if acked.is_err() { break },
                        next = outbound.recv() => match next {
                            Some(next) => batch.push(next),
                            // The link is closing: what is held still goes out.
                            None => break,
                        },
                        () = &mut hold => break,
                    }
                }
            }
            if let Some(first) = batch.flush
                && let Some(pending) = shared.core.lock().take_pending(first)
            {
                batch.push(Outgoing::Writes(pending));
            }
            stream.clear();
            for frame in batch.frames {
                let encoded = match frame {
                    Outgoing::Writes(writes) => {
                        let routed = shared
                            .core
                            .lock()
                            .route(writes, tokio::time::Instant::now());
                        match routed {
                            Ok((seq, datagram)) => {
                                if socket
                                    .is_some_and(|socket| shared.multicast.send(socket, datagram))
                                {
                                    continue;
                                }
                                match shared.core.lock().datagram_refused(seq) {
                                    Some(writes) => writes.encode(&mut stream),
                                    None => continue,
                                }
                            }
                            Err(writes) => writes.encode(&mut stream),
                        }
                    }
                    Outgoing::Stream(writes) => writes.encode(&mut stream),
                    Outgoing::Frame(probe @ Frame::Probe { .. }) => {
                        if let Some(socket) = socket {
                            shared.multicast.send_frame(socket, &probe);
                        }
                        continue;
                    }
                    // The partner's writes are acknowledged the way they came: a datagram
                    // costs both sides less than a packet of the QUIC connection.
                    Outgoing::Frame(ack @ Frame::Ack { seq })
                        if socket.is_some_and(|socket| {
                            shared.core.lock().ack_by_datagram(seq)
                                && shared.multicast.send_frame(socket, &ack)
                        }) =>
                    {
                        continue;
                    }
                    Outgoing::Frame(frame) => frame.encode(&mut stream),
                    Outgoing::Flush(_) => unreachable!("a batch keeps no flush"),
                };
                if let Err(err) = encoded {
                    self.link_failed(id, "encode frame", &TransportError::Frame(err));
                    return;
                }
            }
            if !stream.is_empty()
                && let Err(err) = sender.send_encoded(&stream).await
            {
                self.link_failed(id, "write frame", &err);
                return;
            }
        }
    }
}
