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
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::multicast::{KEY_LEN, Opener, new_key};

/// A multicast frame not acknowledged within this time goes again over the stream.
pub const RETRANSMIT_AFTER: Duration = Duration::from_millis(40);
/// Most multicast frames awaiting acknowledgement; beyond it, frames take the stream.
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

    /// Appends the frame, length-prefixed, to `out`.
    ///
    /// # Errors
    /// The frame exceeds the limit.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        Frame::encode_writes(self.first, self.seq, &self.parts, out)
    }

    /// Takes in the next batch.
    fn extend(&mut self, next: LiveWrites) {
        self.seq = next.seq;
        self.count += next.count;
        self.bytes += next.bytes;
        self.parts.extend(next.parts);
    }
}

/// The frames one write of the link carries: consecutive batches of live writes merged
/// into one frame (up to [`BATCH_BYTES`]), consecutive acknowledgements into the latest.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<Outgoing>,
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
            (Some(Outgoing::Writes(writes)), Outgoing::Writes(more))
                if writes.count < BATCH_MUTATIONS && writes.bytes + more.bytes <= BATCH_BYTES =>
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

    /// Whether the write may wait for more: it is one batch of live writes with room
    /// left (anything else, acknowledgements above all, goes at once).
    pub fn may_wait(&self) -> bool {
        matches!(&self.frames[..], [Outgoing::Writes(writes)] if writes.bytes < BATCH_BYTES / 2)
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

/// Which numbered frames have arrived, whichever path carried them.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Every frame up to this number has arrived.
    upto: u64,
    /// Frames that arrived ahead of a gap: first number → last number.
    ahead: BTreeMap<u64, u64>,
}

impl Delivered {
    /// Records the frame `first..=last`; returns whether it is new (a duplicate, e.g. a
    /// retransmission of a datagram that did arrive, is not).
    pub fn accept(&mut self, first: u64, last: u64) -> bool {
        if last <= self.upto || self.ahead.contains_key(&first) {
            return false;
        }
        if first > self.upto + 1 {
            self.ahead.insert(first, last);
            return true;
        }
        self.upto = last;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.upto + 1 {
                break;
            }
            self.upto = self.upto.max(entry.remove());
        }
        true
    }

    /// The cumulative acknowledgement.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// The first run of missing numbers, when later frames arrived ahead of it: what to
    /// ask the sender for at once instead of waiting for its retransmission timer.
    pub fn gap(&self) -> Option<(u64, u64)> {
        self.ahead
            .first_key_value()
            .map(|(next, _)| (self.upto + 1, next - 1))
    }
}

/// How a writer's wait for the partner ended (a closed link drops the sender instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The partner acknowledged every write up to the one waited for.
    Acked,
    /// The wait took longer than the link allows.
    TimedOut,
}

/// The partner's acknowledgements: the latest, for the tasks that watch it, and the
/// writers waiting for theirs, oldest first. An acknowledgement wakes exactly the writers
/// it covers (a watch would wake every one of them to check), and one timer per link ends
/// the waits that last too long: under load, a connection is woken once per write instead
/// of at every acknowledgement, and no write arms a timer of its own.
pub struct Acked {
    /// Changed under the lock of `waiting`, so that a writer never queues for a number
    /// already acknowledged.
    latest: watch::Sender<u64>,
    /// By number, and so by the time they started (numbers are handed out in order).
    waiting: Mutex<VecDeque<(u64, Instant, oneshot::Sender<Waited>)>>,
}

impl Default for Acked {
    fn default() -> Self {
        Acked {
            latest: watch::Sender::new(0),
            waiting: Mutex::default(),
        }
    }
}

impl Acked {
    /// Follows the latest acknowledgement.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Everything up to this number has been acknowledged.
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Waits for the acknowledgement of `seq`; `None` when it already came. Numbers must
    /// be given in ascending order.
    pub fn wait(&self, seq: u64, now: Instant) -> Option<oneshot::Receiver<Waited>> {
        let mut waiting = self.waiting.lock();
        if seq <= self.latest() {
            return None;
        }
        debug_assert!(waiting.back().is_none_or(|(last, ..)| *last <= seq));
        let (done, waited) = oneshot::channel();
        waiting.push_back((seq, now, done));
        Some(waited)
    }

    /// The partner has everything up to `seq`: wakes the writers that waited for it.
    pub fn ack(&self, seq: u64) {
        let mut waiting = self.waiting.lock();
        if seq <= self.latest() {
            return;
        }
        self.latest.send_replace(seq);
        while waiting
            .front()
            .is_some_and(|(waits_for, ..)| *waits_for <= seq)
        {
            let (_, _, done) = waiting.pop_front().expect("checked");
            // A writer that stopped waiting (its connection closed) is not an error.
            let _ = done.send(Waited::Acked);
        }
    }

    /// Ends the waits that have lasted `timeout` by `now`; returns when the oldest wait
    /// left began, if any.
    pub fn expire(&self, now: Instant, timeout: Duration) -> Option<Instant> {
        let mut waiting = self.waiting.lock();
        while waiting
            .front()
            .is_some_and(|(_, since, _)| now.duration_since(*since) >= timeout)
        {
            let (_, _, done) = waiting.pop_front().expect("checked");
            let _ = done.send(Waited::TimedOut);
        }
        waiting.front().map(|(_, since, _)| *since)
    }

    /// The link is gone: every writer stops waiting (its receiver sees the sender closed).
    pub fn close(&self) {
        self.waiting.lock().clear();
    }

    /// Times out, `timeout` after it began, every wait the partner does not answer: sleeps
    /// until the oldest wait is due, so that it wakes about once per `timeout` whatever
    /// the load.
    pub async fn time_out_after(&self, timeout: Duration) {
        loop {
            let oldest = self.expire(Instant::now(), timeout);
            tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now) + timeout).await;
        }
    }
}

/// Multicast state of one link, shared by its writer, its reader and the agent's
/// multicast receiver.
pub struct LinkMulticast {
    /// The key this side seals its datagrams with (given to the partner over the stream).
    pub send_key: [u8; KEY_LEN],
    /// Whether this side sends live writes by multicast: set when the partner answers a
    /// probe, cleared when the path degrades.
    active: AtomicBool,
    /// The probe in flight.
    probe_nonce: AtomicU64,
    /// Signalled when the link stops multicasting, for the prober to try again later.
    pub deactivated: Notify,
    /// Opens the partner's datagrams, once the partner gave its key.
    pub opener: Mutex<Option<Opener>>,
    /// The pair epoch every datagram of this link carries.
    pub epoch: u64,
    /// Frames that arrived by multicast, for the link's reader.
    pub inbox: mpsc::Sender<Frame>,
    /// Numbers the partner reported missing, for the link's writer to send again.
    pub nacks: mpsc::UnboundedSender<(u64, u64)>,
    /// The highest acknowledgement owed on the stream, and the last one sent there (see
    /// [`LinkMulticast::ack_by_datagram`]).
    stream_ack_owed: AtomicU64,
    stream_ack_sent: AtomicU64,
}

impl LinkMulticast {
    pub fn new(
        epoch: u64,
        inbox: mpsc::Sender<Frame>,
        nacks: mpsc::UnboundedSender<(u64, u64)>,
    ) -> LinkMulticast {
        LinkMulticast {
            send_key: new_key(),
            active: AtomicBool::new(false),
            probe_nonce: AtomicU64::new(0),
            deactivated: Notify::new(),
            opener: Mutex::new(None),
            epoch,
            inbox,
            nacks,
            stream_ack_owed: AtomicU64::new(0),
            stream_ack_sent: AtomicU64::new(0),
        }
    }

    /// A frame came over the stream: the acknowledgement that covers it, `upto`, must
    /// travel the stream too. The partner sends a frame over the stream when its datagram
    /// was not acknowledged in time, and the datagram that was lost may have been the
    /// acknowledgement; another one by datagram could be lost the same way.
    pub fn owe_stream_ack(&self, upto: u64) {
        self.stream_ack_owed.fetch_max(upto, Ordering::Relaxed);
    }

    /// Whether the acknowledgement `seq` may go by datagram (false: by the stream, which
    /// then pays what was owed there up to `seq`). Called by the link's writer alone.
    pub fn ack_by_datagram(&self, seq: u64) -> bool {
        if self.stream_ack_owed.load(Ordering::Relaxed)
            > self.stream_ack_sent.load(Ordering::Relaxed)
        {
            self.stream_ack_sent.store(seq, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts a probe; returns its nonce.
    pub fn start_probe(&self) -> u64 {
        let nonce = u64::from_be_bytes(new_key()[..8].try_into().expect("8 bytes")) | 1;
        self.probe_nonce.store(nonce, Ordering::Relaxed);
        nonce
    }

    /// The partner answered a probe: multicast works from here to there. Returns whether
    /// this switched the link to multicast.
    pub fn probe_answered(&self, nonce: u64) -> bool {
        nonce != 0
            && self.probe_nonce.load(Ordering::Relaxed) == nonce
            && !self.active.swap(true, Ordering::Relaxed)
    }

    /// Stops multicasting (the path degraded). Returns whether it was active.
    pub fn deactivate(&self) -> bool {
        // An answer to the probe that activated it must not activate it again.
        self.probe_nonce.store(0, Ordering::Relaxed);
        let was = self.active.swap(false, Ordering::Relaxed);
        if was {
            self.deactivated.notify_one();
        }
        was
    }
}

/// Frames sent by multicast and not yet acknowledged, by their last number.
#[derive(Default)]
pub struct Unacked {
    frames: BTreeMap<u64, (Instant, LiveWrites)>,
    retransmits: VecDeque<Instant>,
}

impl Unacked {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.frames.len() < SEND_WINDOW
    }

    pub fn sent(&mut self, writes: LiveWrites, now: Instant) {
        self.frames.insert(writes.seq, (now, writes));
    }

    /// Forgets what `acked` covers and returns the frames whose time ran out, to go again
    /// over the stream.
    pub fn due(&mut self, acked: u64, now: Instant) -> Vec<LiveWrites> {
        self.frames = self.frames.split_off(&(acked + 1));
        let expired: Vec<u64> = self
            .frames
            .iter()
            .filter(|(_, (sent, _))| now.duration_since(*sent) >= RETRANSMIT_AFTER)
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
            .take_while(|(_, (_, writes))| writes.first <= to)
            .map(|(seq, _)| *seq)
            .collect();
        self.retransmit(&wanted, now)
    }

    /// Takes the frames numbered `seqs` to send again, counting each as a retransmission.
    fn retransmit(&mut self, seqs: &[u64], now: Instant) -> Vec<LiveWrites> {
        let frames: Vec<LiveWrites> = seqs
            .iter()
            .filter_map(|seq| self.frames.remove(seq).map(|(_, frame)| frame))
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
        std::mem::take(&mut self.frames)
            .into_values()
            .map(|(_, frame)| frame)
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
        let mut batch = Batch::new(Outgoing::Writes(writes(1, 1)));
        assert!(
            batch.may_wait(),
            "one small batch of writes may wait for more"
        );
        for seq in 2..=100 {
            batch.push(Outgoing::Writes(writes(seq, 1)));
        }
        let frames: Vec<&LiveWrites> = batch
            .frames
            .iter()
            .map(|frame| match frame {
                Outgoing::Writes(writes) => writes,
                other @ Outgoing::Frame(_) => panic!("{other:?}"),
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
        acks.push(Outgoing::Writes(writes(1, 1)));
        assert!(!acks.may_wait());
    }

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_wakes_the_writers_it_covers_and_late_ones_time_out() {
        let acks = Acked::default();
        let mut latest = acks.watch();
        let now = Instant::now();
        let mut waits: Vec<_> = (1..=4).map(|seq| acks.wait(seq, now).unwrap()).collect();
        acks.ack(2);
        assert_eq!(*latest.borrow_and_update(), 2);
        assert_eq!(waits[0].try_recv(), Ok(Waited::Acked));
        assert_eq!(waits[1].try_recv(), Ok(Waited::Acked));
        assert!(waits[2].try_recv().is_err(), "3 is not acknowledged yet");
        assert!(acks.wait(2, now).is_none(), "2 needs no waiting any more");
        // An older acknowledgement arriving late changes nothing.
        acks.ack(1);
        assert_eq!(*latest.borrow(), 2);
        assert!(!latest.has_changed().unwrap());

        // One timer for the link: 3 and 4 wait the whole timeout, 5 (later) a little more.
        let timeout = Duration::from_millis(500);
        let timer = async { acks.time_out_after(timeout).await };
        let checks = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut late = acks.wait(5, Instant::now()).unwrap();
            let waited = waits.remove(2).await;
            assert_eq!(waited, Ok(Waited::TimedOut));
            assert_eq!(
                Instant::now() - now,
                timeout,
                "3 waited exactly the timeout"
            );
            assert_eq!(waits.remove(2).await, Ok(Waited::TimedOut));
            assert!(late.try_recv().is_err(), "5 has time left");
            assert_eq!(late.await, Ok(Waited::TimedOut));
            assert_eq!(Instant::now() - now, timeout + Duration::from_millis(100));
            // A closed link ends every wait: the writer sees the sender gone.
            let gone = acks.wait(6, Instant::now()).unwrap();
            acks.close();
            assert!(gone.await.is_err());
        };
        tokio::select! {
            () = timer => unreachable!("the timer runs until the link ends"),
            () = checks => {}
        }
    }

    #[test]
    fn acknowledgements_of_frames_that_came_over_the_stream_go_over_the_stream() {
        let (inbox, _) = mpsc::channel(1);
        let (nacks, _) = mpsc::unbounded_channel();
        let link = LinkMulticast::new(1, inbox, nacks);
        assert!(link.ack_by_datagram(3), "nothing came over the stream yet");
        // Frames up to 9 are in, the last over the stream (a retransmission).
        link.owe_stream_ack(9);
        // An acknowledgement sent before that one, handled after it: it goes by the
        // stream, but does not cover 9, so the next goes by the stream too.
        assert!(!link.ack_by_datagram(5));
        assert!(!link.ack_by_datagram(9));
        assert!(
            link.ack_by_datagram(12),
            "the stream has had its acknowledgement"
        );
        link.owe_stream_ack(4);
        assert!(
            link.ack_by_datagram(13),
            "4 is covered by what went by the stream"
        );
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
        assert!(delivered.accept(1, 3));
        assert_eq!(delivered.upto(), 3);
        // 4..=5 lost on the way; 6 and 7..=9 arrive first.
        assert_eq!(delivered.gap(), None);
        assert!(delivered.accept(6, 6));
        assert_eq!(delivered.gap(), Some((4, 5)), "the gap is reported");
        assert!(delivered.accept(7, 9));
        assert_eq!(delivered.upto(), 3);
        assert!(!delivered.accept(7, 9), "a duplicate is not new");
        // The retransmission fills the gap: everything up to 9 is acknowledged.
        assert!(delivered.accept(4, 5));
        assert_eq!(delivered.upto(), 9);
        assert_eq!(delivered.gap(), None);
        assert!(!delivered.accept(4, 5));
        assert!(!delivered.accept(1, 3));
        assert!(delivered.accept(10, 10));
        assert_eq!(delivered.upto(), 10);
    }

    #[test]
    fn unacknowledged_frames_go_again_after_their_time_and_too_many_degrade() {
        let start = Instant::now();
        let mut unacked = Unacked::default();
        for seq in 1..=3 {
            unacked.sent(writes(seq, 0), start);
        }
        assert!(unacked.due(0, start).is_empty(), "not yet due");
        // 1 is acknowledged; 2 and 3 time out.
        let due = unacked.due(1, start + RETRANSMIT_AFTER);
        assert_eq!(numbers(&due), [(2, 2), (3, 3)]);
        assert!(unacked.is_empty());
        assert!(!unacked.degraded());
        let later = start + RETRANSMIT_AFTER * 2;
        for seq in 4..4 + DEGRADED_RETRANSMITS as u64 {
            unacked.sent(writes(seq, 0), later);
        }
        unacked.due(3, later + RETRANSMIT_AFTER);
        assert!(unacked.degraded());
    }

    #[test]
    fn frames_reported_missing_go_again_at_once() {
        let now = Instant::now();
        let mut unacked = Unacked::default();
        for (first, seq) in [(1, 2), (3, 3), (4, 6), (7, 7)] {
            let mut frame = writes(first, 0);
            frame.extend(writes(seq, 0));
            unacked.sent(frame, now);
        }
        // The partner has 1..=2 and 7, misses 3..=6.
        assert_eq!(numbers(&unacked.missing(3, 6, now)), [(3, 3), (4, 6)]);
        // A gap inside a frame takes the whole frame; nothing is sent twice.
        assert_eq!(numbers(&unacked.missing(5, 5, now)), []);
        assert_eq!(numbers(&unacked.missing(1, 1, now)), [(1, 2)]);
        assert_eq!(numbers(&unacked.due(7, now + RETRANSMIT_AFTER)), []);
        assert!(unacked.is_empty());
    }
}
