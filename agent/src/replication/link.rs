//! The state a link keeps for its two paths: the QUIC stream (ordered, reliable) and,
//! inside a subnet, multicast datagrams (fast, may be lost, duplicated or reordered).
//!
//! Live writes are numbered; a frame carries the numbers `first..=seq`. The receiver
//! acknowledges the highest number up to which it has every frame ([`Delivered`]); the
//! sender keeps what it multicast until that acknowledgement covers it and sends it again
//! over the stream when it does not come in time ([`Unacked`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tandem_common::frame::{Frame, FrameError, Writes};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::multicast::{KEY_LEN, Multicast, Opener, Sealer, new_key};

/// A multicast frame not acknowledged within this time goes again over the stream: the
/// least time, and the time until acknowledgements have been timed. Then it is the
/// smoothed round trip plus four times its variation, as TCP's (RFC 6298): a partner that
/// is slow to acknowledge a burst (a queue, not a loss) does not have it all sent again.
pub const RETRANSMIT_AFTER: Duration = Duration::from_millis(40);
/// The longest a frame waits for its acknowledgement, well within the sync timeout.
const MAX_RETRANSMIT_AFTER: Duration = Duration::from_millis(200);
/// Most multicast frames awaiting acknowledgement; beyond it, frames take the stream. The
/// bytes they may take are bounded too, by the receive buffer ([`Unacked::has_room`]).
pub const SEND_WINDOW: usize = 256;
/// This many retransmissions within [`DEGRADED_PERIOD`] and the link stops multicasting.
const DEGRADED_RETRANSMITS: usize = 16;
const DEGRADED_PERIOD: Duration = Duration::from_secs(1);
/// Multicast frames queued for the link's reader before further ones are dropped (they
/// are then sent again over the stream).
pub const INBOX: usize = 1024;

/// Most mutations coalesced into one frame.
const BATCH_MUTATIONS: usize = 4_096;
/// Batches are coalesced into one frame up to about this many bytes: a frame then fits
/// one multicast datagram, and the partner applies and acknowledges a long burst piece
/// by piece while the rest is still on its way, instead of waiting for all of it.
pub const BATCH_BYTES: usize = super::multicast::MAX_DATAGRAM - 4 * 1024;
/// Frames of live writes the partner may have to acknowledge before the writer holds the
/// next one back to let more writes join it. Each frame costs both sides a packet, a
/// wake-up and an acknowledgement whatever its size; under load, fewer and fuller frames
/// leave more of the cores to the writes themselves.
pub const BATCH_WINDOW: usize = 2;
/// The longest a frame is held back for an acknowledgement.
pub const BATCH_HOLD: Duration = Duration::from_millis(5);

/// What a link's writer sends: a frame, or local writes, encoded as they were made.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Frame),
    Writes(LiveWrites),
    /// Live writes for the stream as they are: numbered and accounted for already (a
    /// multicast frame sent again, or one the socket refused).
    Stream(LiveWrites),
    /// Live writes from this number on wait in the link's pending frame: the writer sends
    /// it unless it has been sent already (see [`Pending`]).
    Flush(u64),
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Outgoing::Frame(frame)
    }
}

/// The live writes numbered `first..=seq`: what goes as one [`Frame::Mutations`].
#[derive(Debug)]
pub struct LiveWrites {
    pub first: u64,
    pub seq: u64,
    /// One per batch merged in, in order.
    parts: Vec<Writes>,
    count: usize,
    bytes: usize,
}

impl LiveWrites {
    /// The batch numbered `seq`.
    pub fn new(seq: u64, writes: Writes) -> Self {
        LiveWrites {
            first: seq,
            seq,
            count: writes.len(),
            bytes: writes.encoded_len(),
            parts: vec![writes],
        }
    }

    /// How many mutations.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of the encoded mutations.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the frame, length-prefixed, to `out`.
    ///
    /// # Errors
    /// The frame exceeds the limit.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        Frame::encode_writes(self.first, self.seq, &self.parts, out)
    }

    /// Whether `next` may join this frame: it follows, and the frame stays within
    /// [`BATCH_BYTES`] and [`BATCH_MUTATIONS`].
    fn has_room_for(&self, next: &LiveWrites) -> bool {
        next.first == self.seq + 1
            && self.count < BATCH_MUTATIONS
            && self.bytes + next.bytes <= BATCH_BYTES
    }

    /// Whether the frame is small enough to wait for more writes to join it.
    fn may_wait(&self) -> bool {
        self.bytes < BATCH_BYTES / 2
    }

    /// Takes in the next batch.
    fn extend(&mut self, next: LiveWrites) {
        self.seq = next.seq;
        self.count += next.count;
        self.bytes += next.bytes;
        self.parts.extend(next.parts);
    }
}

/// The live writes of a link not yet handed to its writer: the frame being filled.
///
/// A connection's writes join the pending frame. The one whose writes do not fit sends
/// the full frame on the spot, by multicast when it can (see [`Dispatch`]): under load the
/// partner then applies each frame while the connections behind it still run, instead
/// of receiving every frame at once after the last connection of the round. Whatever is
/// pending when the writer runs, the writer sends (it is told by [`Outgoing::Flush`]).
#[derive(Debug, Default)]
pub struct Pending {
    frame: Option<LiveWrites>,
}

impl Pending {
    /// Adds the batch; returns the frame it closed, full, to send now, and whether the
    /// writer must be told of the pending frame (with the number it starts at): it is new,
    /// or it has just grown too large to wait for more writes, which the writer may be
    /// holding it back for.
    pub fn push(&mut self, writes: LiveWrites) -> (Option<LiveWrites>, Option<u64>) {
        match &mut self.frame {
            Some(frame) if frame.has_room_for(&writes) => {
                let waited = frame.may_wait();
                frame.extend(writes);
                (None, (waited && !frame.may_wait()).then_some(frame.first))
            }
            _ => {
                let first = writes.first;
                (self.frame.replace(writes), Some(first))
            }
        }
    }

    /// The pending frame, if it is the one starting at `first` (an older flush finds a
    /// frame already sent, and a newer one pending that its own flush will send).
    pub fn take_from(&mut self, first: u64) -> Option<LiveWrites> {
        self.frame.take_if(|frame| frame.first == first)
    }

    /// The pending frame, whichever it is: before another frame takes the next number.
    pub fn take(&mut self) -> Option<LiveWrites> {
        self.frame.take()
    }

    /// Whether the frame pending from `first` may wait for more writes.
    pub fn may_wait(&self, first: u64) -> bool {
        self.frame
            .as_ref()
            .is_some_and(|frame| frame.first == first && frame.may_wait())
    }
}

/// The frames one write of the link carries: consecutive batches of live writes merged
/// into one frame (up to [`BATCH_BYTES`]), consecutive acknowledgements into the latest.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<Outgoing>,
    /// The latest pending frame announced, to take when the batch goes.
    pub flush: Option<u64>,
}

impl Batch {
    /// Most frames in one write.
    const MAX_FRAMES: usize = 64;

    pub fn new(first: Outgoing) -> Self {
        let mut batch = Batch::default();
        batch.push(first);
        batch
    }

    pub fn is_full(&self) -> bool {
        self.frames.len() >= Self::MAX_FRAMES
    }

    pub fn push(&mut self, next: Outgoing) {
        match (self.frames.last_mut(), next) {
            (_, Outgoing::Flush(first)) => self.flush = Some(first),
            (Some(Outgoing::Writes(writes)), Outgoing::Writes(more))
                if writes.has_room_for(&more) =>
            {
                writes.extend(more);
            }
            // Acknowledgements are cumulative: the latest covers the earlier.
            (
                Some(Outgoing::Frame(Frame::Ack { seq })),
                Outgoing::Frame(Frame::Ack { seq: next_seq }),
            ) => *seq = next_seq,
            (_, other) => self.frames.push(other),
        }
    }

    /// Whether the write may wait for more: it only sends the pending frame (anything
    /// else, acknowledgements above all, goes at once).
    pub fn may_wait(&self) -> bool {
        self.frames.is_empty() && self.flush.is_some()
    }
}

/// The last numbers of the frames of live writes sent and not yet acknowledged.
#[derive(Debug, Default)]
pub struct InFlight {
    ends: VecDeque<u64>,
}

impl InFlight {
    pub fn sent(&mut self, seq: u64) {
        self.ends.push_back(seq);
    }

    /// Frames sent beyond `acked`.
    pub fn beyond(&mut self, acked: u64) -> usize {
        while self.ends.front().is_some_and(|&end| end <= acked) {
            self.ends.pop_front();
        }
        self.ends.len()
    }
}

/// Which numbered frames have arrived, whichever path carried them, and the payloads of
/// those that arrived ahead of a gap: a partner applies frames in the order they were
/// numbered, so that deltas (a hash's fields, a list's pushes and pops, a transaction's
/// writes) build on the state the primary had when it made them.
#[derive(Debug)]
pub struct Delivered<T> {
    /// Every frame up to this number has arrived.
    upto: u64,
    /// Frames that arrived ahead of a gap: first number → last number and payload.
    ahead: BTreeMap<u64, (u64, T)>,
}

impl<T> Default for Delivered<T> {
    fn default() -> Self {
        Delivered {
            upto: 0,
            ahead: BTreeMap::new(),
        }
    }
}

impl<T> Delivered<T> {
    /// Records the frame `first..=last`. Returns `None` for a duplicate (e.g. a
    /// retransmission of a datagram that did arrive), else the payloads now in order to
    /// apply: this one and those it unblocked, or none while it waits behind a gap.
    pub fn accept(&mut self, first: u64, last: u64, payload: T) -> Option<Vec<T>> {
        if last <= self.upto || self.ahead.contains_key(&first) {
            return None;
        }
        if first > self.upto + 1 {
            self.ahead.insert(first, (last, payload));
            return Some(Vec::new());
        }
        self.upto = last;
        let mut ready = vec![payload];
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.upto + 1 {
                break;
            }
            let (last, payload) = entry.remove();
            if last > self.upto {
                self.upto = last;
                ready.push(payload);
            }
        }
        Some(ready)
    }

    /// The cumulative acknowledgement.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// Frames held ahead of a gap.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.ahead.len()
    }

    /// The first run of missing numbers, when later frames arrived ahead of it: what to
    /// ask the sender for at once instead of waiting for its retransmission timer.
    pub fn gap(&self) -> Option<(u64, u64)> {
        self.ahead
            .first_key_value()
            .map(|(next, _)| (self.upto + 1, next - 1))
    }
}

/// The partner's latest acknowledgement, for the tasks that wait for one (the snapshot
/// window, the writer holding a frame back). A `Notify` rather than a `watch`: its waiters
/// wake in the order they began to wait, so that a seeded simulation replays exactly.
#[derive(Default)]
pub struct AckSignal {
    seq: AtomicU64,
    closed: AtomicBool,
    changed: Notify,
}

/// The link closed while a task waited for an acknowledgement.
#[derive(Debug)]
pub struct LinkClosed;

impl AckSignal {
    /// Everything up to `seq` is acknowledged.
    pub fn set(&self, seq: u64) {
        self.seq.store(seq, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn get(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// The link is gone: every waiter returns [`LinkClosed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until the acknowledgement satisfies `done`; returns it.
    ///
    /// # Errors
    /// The link closed first.
    pub async fn wait_for(&self, done: impl Fn(u64) -> bool) -> Result<u64, LinkClosed> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Err(LinkClosed);
            }
            let seq = self.get();
            if done(seq) {
                return Ok(seq);
            }
            changed.await;
        }
    }
}

/// The multicast side of one link that is I/O: the keys, and the inbox of frames that
/// arrived by datagram. Which frames go by multicast is the link's core's to decide
/// ([`super::proto::LinkCore`]).
pub struct LinkMulticast {
    /// The key this side seals its datagrams with (given to the partner over the stream).
    pub send_key: [u8; KEY_LEN],
    /// Every datagram takes the next nonce; sealed outside the core's lock.
    sealer: Mutex<Sealer>,
    /// Opens the partner's datagrams, once the partner gave its key.
    pub opener: Mutex<Option<Opener>>,
    /// Frames that arrived by multicast, for the link's reader.
    pub inbox: mpsc::Sender<Frame>,
    /// Signalled when the link stops multicasting, for the prober to try again later.
    pub deactivated: Notify,
    sent: metrics::Counter,
}

impl LinkMulticast {
    /// The link of the pair `epoch`, on the side of `sender`.
    pub fn new(epoch: u64, sender: &str, inbox: mpsc::Sender<Frame>) -> LinkMulticast {
        let send_key = new_key();
        LinkMulticast {
            sealer: Mutex::new(Sealer::new(&send_key, epoch, sender)),
            send_key,
            opener: Mutex::new(None),
            inbox,
            deactivated: Notify::new(),
            sent: metrics::counter!(super::names::MULTICAST_SENT),
        }
    }

    /// Bytes a datagram's header takes in front of its frame.
    pub fn header_len(&self) -> usize {
        self.sealer.lock().header_len()
    }

    /// Seals `datagram` (a frame behind [`LinkMulticast::header_len`] bytes left free)
    /// and multicasts it; false when the socket refused it.
    pub fn send(&self, socket: &Multicast, mut datagram: BytesMut) -> bool {
        self.sealer.lock().seal_in_place(&mut datagram);
        match socket.send(&datagram) {
            Ok(()) => {
                self.sent.increment(1);
                true
            }
            Err(err) => {
                tracing::debug!(error = %err, "multicast send failed; using the stream");
                false
            }
        }
    }

    /// Multicasts a small frame (a probe or an acknowledgement); false when the socket
    /// refused it.
    pub fn send_frame(&self, socket: &Multicast, frame: &Frame) -> bool {
        let mut datagram = BytesMut::with_capacity(128);
        datagram.resize(self.header_len(), 0);
        // These frames are a few bytes: their encoding cannot fail.
        frame.encode(&mut datagram).is_ok() && self.send(socket, datagram)
    }
}

/// What a datagram of `len` bytes takes of a receiver's socket buffer, as Linux counts it
/// (measured on loopback: 832 bytes over the payload for a datagram of 30 or 50 KiB, 2,304
/// bytes in all for one of 1,200).
pub fn buffer_charge(len: usize) -> usize {
    len.max(1280) + 1024
}

/// A frame multicast and not yet acknowledged.
struct Sent {
    at: Instant,
    /// Its datagram's [`buffer_charge`].
    charge: usize,
    writes: LiveWrites,
}

/// Frames sent by multicast and not yet acknowledged, by their last number.
#[derive(Default)]
pub struct Unacked {
    frames: BTreeMap<u64, Sent>,
    /// The sum of the frames' charges: what they may take of the partner's buffer.
    charged: usize,
    /// The smoothed round trip of acknowledged frames and its variation, once timed.
    rtt: Option<(Duration, Duration)>,
    retransmits: VecDeque<Instant>,
}

impl Unacked {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// How many frames await their acknowledgement, and the round trip timed so far.
    #[cfg(test)]
    pub fn describe(&self) -> String {
        format!("{} (rtt {:?})", self.frames.len(), self.rtt)
    }

    /// Whether a datagram of `len` bytes may be multicast with `window` bytes of the
    /// partner's receive buffer to fill. Every unacknowledged frame may still be waiting
    /// in that buffer; one that found it full would be dropped, and sent again over the
    /// stream once its time ran out, and a few of those give the path up. One frame always may go.
    pub fn has_room(&self, len: usize, window: usize) -> bool {
        self.frames.is_empty()
            || (self.frames.len() < SEND_WINDOW && self.charged + buffer_charge(len) <= window)
    }

    /// The frame went as a datagram of `len` bytes at `now`.
    pub fn sent(&mut self, writes: LiveWrites, len: usize, now: Instant) {
        let charge = buffer_charge(len);
        self.charged += charge;
        let sent = Sent {
            at: now,
            charge,
            writes,
        };
        if let Some(replaced) = self.frames.insert(sent.writes.seq, sent) {
            self.charged -= replaced.charge;
        }
    }

    /// The acknowledgement of everything up to `acked` arrived at `now`: forgets the
    /// frames it covers and times the round trip of the latest.
    pub fn acked(&mut self, acked: u64, now: Instant) {
        let kept = self.frames.split_off(&(acked + 1));
        let done = std::mem::replace(&mut self.frames, kept);
        if let Some((_, latest)) = done.last_key_value() {
            self.time_round_trip(now.duration_since(latest.at));
        }
        for sent in done.into_values() {
            self.charged -= sent.charge;
        }
    }

    fn time_round_trip(&mut self, rtt: Duration) {
        self.rtt = Some(match self.rtt {
            None => (rtt, rtt / 2),
            Some((smoothed, variation)) => (
                (smoothed * 7 + rtt) / 8,
                (variation * 3 + smoothed.abs_diff(rtt)) / 4,
            ),
        });
    }

    /// How long a frame may go unacknowledged before it is sent again.
    pub fn retransmit_after(&self) -> Duration {
        self.rtt.map_or(RETRANSMIT_AFTER, |(smoothed, variation)| {
            (smoothed + variation * 4).clamp(RETRANSMIT_AFTER, MAX_RETRANSMIT_AFTER)
        })
    }

    /// The frames whose time ran out by `now`, to go again over the stream (the link's
    /// reader has forgotten the acknowledged ones as each acknowledgement came).
    pub fn due(&mut self, now: Instant) -> Vec<LiveWrites> {
        let after = self.retransmit_after();
        let expired: Vec<u64> = self
            .frames
            .iter()
            .filter(|(_, sent)| now.duration_since(sent.at) >= after)
            .map(|(seq, _)| *seq)
            .collect();
        self.retransmit(&expired, now)
    }

    /// Takes the frames that carry any of the numbers `from..=to` (the partner reported
    /// them missing), to go again over the stream.
    pub fn missing(&mut self, from: u64, to: u64, now: Instant) -> Vec<LiveWrites> {
        let wanted: Vec<u64> = self
            .frames
            .range(from..)
            .take_while(|(_, sent)| sent.writes.first <= to)
            .map(|(seq, _)| *seq)
            .collect();
        self.retransmit(&wanted, now)
    }

    /// The socket refused the datagram of the frame ending at `seq`: takes it back, for
    /// the stream (not a retransmission: it never left).
    pub fn refused(&mut self, seq: u64) -> Option<LiveWrites> {
        let sent = self.frames.remove(&seq)?;
        self.charged -= sent.charge;
        Some(sent.writes)
    }

    /// Takes the frames numbered `seqs` to send again, counting each as a retransmission.
    fn retransmit(&mut self, seqs: &[u64], now: Instant) -> Vec<LiveWrites> {
        let frames: Vec<LiveWrites> = seqs
            .iter()
            .filter_map(|seq| self.frames.remove(seq))
            .map(|sent| {
                self.charged -= sent.charge;
                sent.writes
            })
            .collect();
        self.count_retransmits(frames.len(), now);
        frames
    }

    fn count_retransmits(&mut self, count: usize, now: Instant) {
        for _ in 0..count {
            self.retransmits.push_back(now);
        }
        while self
            .retransmits
            .front()
            .is_some_and(|at| now.duration_since(*at) > DEGRADED_PERIOD)
        {
            self.retransmits.pop_front();
        }
    }

    /// Whether so many frames needed the stream lately that multicast is not worth it.
    pub fn degraded(&self) -> bool {
        self.retransmits.len() >= DEGRADED_RETRANSMITS
    }

    /// Everything still unacknowledged (the path is given up: it all goes by stream).
    pub fn drain(&mut self) -> Vec<LiveWrites> {
        self.charged = 0;
        std::mem::take(&mut self.frames)
            .into_values()
            .map(|sent| sent.writes)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tandem_common::ops::{Mutation, Op};
    use tandem_common::version::Version;

    /// A batch of `count` writes of 1 KiB numbered `seq`.
    fn writes(seq: u64, count: usize) -> LiveWrites {
        let mutation = Mutation {
            key: Bytes::from_static(b"session:1"),
            version: Version::ZERO,
            op: Op::Set {
                value: Bytes::from(vec![0; 1024]),
                expires_at_ms: None,
            },
            db: 0,
            base: None,
        };
        let mut writes = Writes::default();
        (0..count).for_each(|_| writes.push(&mutation));
        LiveWrites::new(seq, writes)
    }

    /// The numbers of live writes, to compare.
    fn numbers(writes: &[LiveWrites]) -> Vec<(u64, u64)> {
        writes.iter().map(|w| (w.first, w.seq)).collect()
    }

    #[test]
    fn batches_merge_up_to_a_datagram_and_acknowledgements_into_the_latest() {
        let mut batch = Batch::new(Outgoing::Flush(1));
        assert!(
            batch.may_wait(),
            "a batch that only sends the pending frame may wait for more writes"
        );
        assert!(batch.frames.is_empty(), "the flush is not a frame");
        batch.push(Outgoing::Writes(writes(1, 1)));
        assert!(!batch.may_wait(), "live writes handed over go at once");
        for seq in 2..=100 {
            batch.push(Outgoing::Writes(writes(seq, 1)));
        }
        let frames: Vec<&LiveWrites> = batch
            .frames
            .iter()
            .map(|frame| match frame {
                Outgoing::Writes(writes) => writes,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(frames.len() > 1, "100 KiB do not fit one frame");
        assert_eq!(
            frames.iter().map(|w| w.count()).sum::<usize>(),
            100,
            "no write lost"
        );
        assert_eq!(frames.last().unwrap().seq, 100);
        let mut next = 1;
        for writes in &frames {
            assert_eq!(writes.first, next, "the frames follow each other");
            next = writes.seq + 1;
            let mut encoded = BytesMut::new();
            writes.encode(&mut encoded).unwrap();
            assert!(encoded.len() <= BATCH_BYTES + 64, "{} bytes", encoded.len());
            let Frame::Mutations { mutations, .. } = Frame::decode_exact(&encoded).unwrap() else {
                panic!("not a frame of writes");
            };
            assert_eq!(mutations.len(), writes.count());
        }
        assert!(!batch.may_wait(), "several frames go at once");

        let mut acks = Batch::new(Frame::Ack { seq: 3 }.into());
        acks.push(Frame::Ack { seq: 7 }.into());
        assert!(matches!(
            acks.frames[..],
            [Outgoing::Frame(Frame::Ack { seq: 7 })]
        ));
        assert!(!acks.may_wait(), "an acknowledgement never waits");
        acks.push(Outgoing::Flush(1));
        assert!(!acks.may_wait(), "nor does the pending frame behind it");
        assert_eq!(acks.flush, Some(1));
    }

    #[test]
    fn the_pending_frame_fills_up_to_a_datagram_and_is_handed_over_once() {
        let mut pending = Pending::default();
        // 17 writes of 1 KiB per batch, as a pipeline of 17 SETs gives.
        let (full, started) = pending.push(writes(1, 17));
        assert!(full.is_none());
        assert_eq!(started, Some(1), "the writer is told of the new frame");
        assert!(pending.may_wait(1), "17 KiB may wait for more");
        let batch_bytes = writes(1, 17).bytes;
        let mut seq = 1;
        let closed = loop {
            seq += 1;
            let (full, started) = pending.push(writes(seq, 17));
            if let Some(full) = full {
                assert_eq!(
                    started,
                    Some(seq),
                    "the batch that did not fit starts the next"
                );
                break full;
            }
            // The writer hears of the frame again once it is too large to wait.
            let half = BATCH_BYTES / 2;
            let just_past =
                batch_bytes * seq as usize >= half && batch_bytes * (seq as usize - 1) < half;
            assert_eq!(
                started,
                just_past.then_some(1),
                "batch {seq} joined the pending frame"
            );
        };
        assert_eq!((closed.first, closed.seq), (1, seq - 1));
        assert!(closed.bytes <= BATCH_BYTES && closed.bytes + batch_bytes > BATCH_BYTES);
        assert!(!pending.may_wait(seq + 1), "no frame pending from there");
        // The writer's flush for the closed frame finds nothing: it was sent already.
        assert!(pending.take_from(1).is_none());
        assert!(pending.may_wait(seq), "the new frame is small");
        let next = pending
            .take_from(seq)
            .expect("the frame the latest flush announced");
        assert_eq!((next.first, next.seq, next.count()), (seq, seq, 17));
        assert!(pending.take().is_none());
        // A frame that does not follow (another frame took a number between) starts anew.
        pending.push(writes(20, 1));
        let (full, started) = pending.push(writes(22, 1));
        assert_eq!(full.map(|f| (f.first, f.seq)), Some((20, 20)));
        assert_eq!(started, Some(22));
    }

    #[test]
    fn frames_in_flight_are_those_beyond_the_acknowledgement() {
        let mut in_flight = InFlight::default();
        assert_eq!(in_flight.beyond(0), 0);
        in_flight.sent(3);
        in_flight.sent(8);
        in_flight.sent(9);
        assert_eq!(in_flight.beyond(0), 3);
        assert_eq!(
            in_flight.beyond(5),
            2,
            "the frame ending at 3 is acknowledged"
        );
        assert_eq!(in_flight.beyond(9), 0);
    }

    #[test]
    fn acknowledgement_waits_for_gaps_and_ignores_duplicates() {
        let mut delivered = Delivered::default();
        assert_eq!(delivered.accept(1, 3, "1-3"), Some(vec!["1-3"]));
        assert_eq!(delivered.upto(), 3);
        // 4..=5 lost on the way; 6 and 7..=9 arrive first.
        assert_eq!(delivered.gap(), None);
        assert_eq!(
            delivered.accept(6, 6, "6"),
            Some(vec![]),
            "held behind the gap"
        );
        assert_eq!(delivered.gap(), Some((4, 5)), "the gap is reported");
        assert_eq!(delivered.accept(7, 9, "7-9"), Some(vec![]));
        assert_eq!(delivered.upto(), 3);
        assert_eq!(delivered.waiting(), 2);
        assert_eq!(
            delivered.accept(7, 9, "7-9"),
            None,
            "a duplicate is not new"
        );
        // The retransmission fills the gap: everything up to 9 is acknowledged.
        assert_eq!(
            delivered.accept(4, 5, "4-5"),
            Some(vec!["4-5", "6", "7-9"]),
            "the gap filled: everything held is applied, in order"
        );
        assert_eq!(delivered.upto(), 9);
        assert_eq!(delivered.gap(), None);
        assert_eq!(delivered.waiting(), 0);
        assert_eq!(delivered.accept(4, 5, "4-5"), None);
        assert_eq!(delivered.accept(1, 3, "1-3"), None);
        assert_eq!(delivered.accept(10, 10, "10"), Some(vec!["10"]));
        assert_eq!(delivered.upto(), 10);
    }

    #[test]
    fn unacknowledged_frames_go_again_after_their_time_and_too_many_degrade() {
        let start = Instant::now();
        let mut unacked = Unacked::default();
        for seq in 1..=3 {
            unacked.sent(writes(seq, 0), 100, start);
        }
        assert!(unacked.due(start).is_empty(), "not yet due");
        // 1 is acknowledged; 2 and 3 time out.
        unacked.acked(1, start);
        let due = unacked.due(start + RETRANSMIT_AFTER);
        assert_eq!(numbers(&due), [(2, 2), (3, 3)]);
        assert!(unacked.is_empty());
        assert!(!unacked.degraded());
        let later = start + RETRANSMIT_AFTER * 2;
        for seq in 4..4 + DEGRADED_RETRANSMITS as u64 {
            unacked.sent(writes(seq, 0), 100, later);
        }
        unacked.due(later + RETRANSMIT_AFTER);
        assert!(unacked.degraded());
    }

    #[test]
    fn unacknowledged_frames_fit_the_receive_buffer_and_acknowledged_ones_free_it() {
        let now = Instant::now();
        let datagram = 63 * 1024; // charged as 64 KiB
        let window = 4 * 1024 * 1024;
        let mut unacked = Unacked::default();
        assert!(
            unacked.has_room(2 * window, window),
            "with nothing unacknowledged, one frame may go whatever its size"
        );
        let mut seq = 0;
        while unacked.has_room(datagram, window) {
            seq += 1;
            unacked.sent(writes(seq, 0), datagram, now);
        }
        assert_eq!(seq, 64, "64 datagrams of 64 KiB fill 4 MiB");
        assert!(
            unacked.has_room(1, window + buffer_charge(1)),
            "a small frame fits what is left"
        );
        unacked.acked(2, now);
        for _ in 0..2 {
            assert!(unacked.has_room(datagram, window));
            seq += 1;
            unacked.sent(writes(seq, 0), datagram, now);
        }
        assert!(!unacked.has_room(datagram, window));
        // Frames sent again over the stream, or all of them when the path is given up,
        // leave the buffer too.
        assert_eq!(unacked.missing(3, 3, now).len(), 1);
        assert!(unacked.has_room(datagram, window));
        assert_eq!(unacked.drain().len(), 63);
        assert_eq!(unacked.charged, 0);
    }

    #[test]
    fn a_partner_slow_to_acknowledge_gets_more_time_before_frames_go_again() {
        let start = Instant::now();
        let mut unacked = Unacked::default();
        assert_eq!(unacked.retransmit_after(), RETRANSMIT_AFTER, "until timed");
        // Quick acknowledgements keep the least time.
        for seq in 1..=10 {
            let sent = start + Duration::from_millis(seq);
            unacked.sent(writes(seq, 0), 100, sent);
            unacked.acked(seq, sent + Duration::from_micros(200));
        }
        assert_eq!(unacked.retransmit_after(), RETRANSMIT_AFTER);
        // The partner falls behind: acknowledgements take 30 ms, then 60 ms.
        let mut now = start + Duration::from_millis(100);
        for (seq, rtt) in (11..=30).zip([30, 60].into_iter().cycle()) {
            unacked.sent(writes(seq, 0), 100, now);
            now += Duration::from_millis(rtt);
            unacked.acked(seq, now);
        }
        let after = unacked.retransmit_after();
        assert!(
            after > Duration::from_millis(60) && after <= MAX_RETRANSMIT_AFTER,
            "{after:?}"
        );
        // A frame as late as its acknowledgements usually are is not sent again.
        unacked.sent(writes(31, 0), 100, now);
        assert!(unacked.due(now + Duration::from_millis(60)).is_empty());
        assert_eq!(numbers(&unacked.due(now + after)), [(31, 31)]);
        // Acknowledgements that never come: at most the longest wait.
        for seq in 32..=40 {
            unacked.sent(writes(seq, 0), 100, now);
            now += Duration::from_secs(1);
            unacked.acked(seq, now);
        }
        assert_eq!(unacked.retransmit_after(), MAX_RETRANSMIT_AFTER);
    }

    #[test]
    fn frames_reported_missing_go_again_at_once() {
        let now = Instant::now();
        let mut unacked = Unacked::default();
        for (first, seq) in [(1, 2), (3, 3), (4, 6), (7, 7)] {
            let mut frame = writes(first, 0);
            frame.extend(writes(seq, 0));
            unacked.sent(frame, 100, now);
        }
        // The partner has 1..=2 and 7, misses 3..=6.
        assert_eq!(numbers(&unacked.missing(3, 6, now)), [(3, 3), (4, 6)]);
        // A gap inside a frame takes the whole frame; nothing is sent twice.
        assert_eq!(numbers(&unacked.missing(5, 5, now)), []);
        assert_eq!(numbers(&unacked.missing(1, 1, now)), [(1, 2)]);
        unacked.acked(7, now);
        assert_eq!(numbers(&unacked.due(now + RETRANSMIT_AFTER)), []);
        assert!(unacked.is_empty());
    }
}
