//! The order of replication on one link, without I/O: what is numbered, sent, held back,
//! acknowledged, sent again and applied, and when a writer waiting for its partner wakes.
//!
//! [`LinkCore`] is a state machine in the manner of `quinn-proto`: the link's tasks feed it
//! inputs (a local write, a frame from the partner, a tick of the clock) and perform the
//! [`Action`]s it returns (queue a frame for the stream, multicast a datagram, wake
//! writers, apply the partner's writes, publish protection). It reads no clock, draws no
//! random number and touches no socket, so a test can play any interleaving of writes,
//! losses, duplicates, reorderings and timers against it.
//!
//! Sending side: local writes are numbered in the order they are made and join the
//! pending frame ([`Pending`]); a frame goes by multicast while that path works and has
//! room ([`Unacked`]), else over the stream. The partner's cumulative acknowledgement
//! covers every number up to its own; it wakes the sync writers it covers, oldest first,
//! and a tick ends the waits that outlast the sync timeout (the agent is then
//! *lagging*, so unprotected, until the partner acknowledges in time again). A datagram
//! not acknowledged within its retransmission time, or reported missing, goes again over
//! the stream; too many of those and the link stops multicasting.
//!
//! Receiving side: frames are applied in the order they were numbered, each once,
//! whichever path brought them ([`Delivered`]); a gap is reported once (`Nack`), and an
//! acknowledgement of a frame that came over the stream goes over the stream.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use tandem_common::frame::{Frame, Writes};
use tandem_common::ops::Mutation;
use tokio::time::Instant;

use super::ReplicationMode;
use super::link::{BATCH_WINDOW, Delivered, InFlight, LiveWrites, Outgoing, Pending, Unacked};
use super::multicast::MAX_DATAGRAM;

/// Write batches an async-mode partner may fall behind by before writers wait for it.
pub const ASYNC_BACKLOG: u64 = 256;
/// Snapshot frames in flight before the sender waits for acknowledgements.
pub const SNAPSHOT_WINDOW: u64 = 4;

/// A numbered frame's content, held until every earlier frame has been applied.
#[derive(Debug, PartialEq)]
pub enum Arrived {
    Writes(Vec<Mutation>),
    Snapshot {
        mutations: Vec<Mutation>,
        last: bool,
    },
}

/// How a writer's wait for the partner ended (a closed link drops the waiter instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The partner acknowledged every write up to the one waited for.
    Acked,
    /// The wait took longer than the sync timeout.
    TimedOut,
}

/// What the link's tasks do for the core, in the order given.
#[derive(Debug)]
pub enum Action<W> {
    /// Queue for the link's writer, which sends it over the stream (live writes it may
    /// still multicast, see [`LinkCore::route`]).
    Stream(Outgoing),
    /// Seal and multicast this encoded frame (its first [`CoreConfig::datagram_header`]
    /// bytes are left for the seal's header). If the socket refuses it, report
    /// [`LinkCore::datagram_refused`] with its last number.
    Datagram { seq: u64, datagram: BytesMut },
    /// Send these multicast frames again over the stream, counted as retransmissions
    /// for `reason` (`timeout` or `missing`).
    Retransmit {
        frames: Vec<LiveWrites>,
        reason: &'static str,
    },
    /// Tell these writers how their wait ended.
    Wake { writers: Vec<W>, waited: Waited },
    /// The partner now has every frame up to this number.
    Acked(u64),
    /// Apply the partner's frames, in this order.
    Apply(Vec<Arrived>),
    /// The agent became lagging (unprotected) or protected again: publish it.
    Protection { lagging: bool },
    /// Multicast to the partner degraded and was given up: publish it, probe later.
    MulticastOff,
}

/// What the core needs to know of its link.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    pub mode: ReplicationMode,
    pub sync_timeout: Duration,
    /// Bytes in front of a datagram's frame: the seal's header.
    pub datagram_header: usize,
    /// How much of the partner's socket buffer unacknowledged datagrams may take; `None`
    /// without a multicast socket.
    pub multicast_window: Option<usize>,
}

/// One link's replication state (see the module's documentation). `W` is how a waiting
/// writer is woken: a channel's sender in the agent, a number in tests.
pub struct LinkCore<W> {
    config: CoreConfig,
    // --- sending ---
    /// The last number handed out (to live writes and snapshot frames alike).
    next_seq: u64,
    /// Live writes not yet handed to the writer.
    pending: Pending,
    /// Frames of live writes sent and not yet acknowledged, by either path.
    in_flight: InFlight,
    /// Frames multicast and not yet acknowledged.
    unacked: Unacked,
    /// The partner's cumulative acknowledgement.
    acked: u64,
    /// Writers waiting for an acknowledgement: the number, when the wait began, the
    /// waker. By number, and so by start (numbers are handed out in order).
    waiters: VecDeque<(u64, Instant, W)>,
    /// A sync write timed out and the partner has not acknowledged in time since.
    lagging: bool,
    /// Whether live writes go by multicast: set when the partner answers a probe,
    /// cleared when the path degrades.
    multicasting: bool,
    /// The probe in flight (0: none).
    probe: u64,
    /// Whether the whole snapshot of this store has been queued for the partner.
    snapshot_queued: bool,
    // --- receiving ---
    delivered: Delivered<Arrived>,
    /// The start of the last gap reported: each gap is reported once.
    nacked: u64,
    /// The acknowledgement to send once the frames at hand are applied.
    ack_due: Option<u64>,
    /// The highest acknowledgement owed on the stream, and the last sent there.
    stream_ack_owed: u64,
    stream_ack_sent: u64,
}

impl<W> LinkCore<W> {
    pub fn new(config: CoreConfig) -> Self {
        LinkCore {
            config,
            next_seq: 0,
            pending: Pending::default(),
            in_flight: InFlight::default(),
            unacked: Unacked::default(),
            acked: 0,
            waiters: VecDeque::new(),
            lagging: false,
            multicasting: false,
            probe: 0,
            snapshot_queued: false,
            delivered: Delivered::default(),
            nacked: 0,
            ack_due: None,
            stream_ack_owed: 0,
            stream_ack_sent: 0,
        }
    }

    // ------------------------------------------------------------------ queries

    /// Everything up to this number has been acknowledged.
    #[cfg(test)]
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The numbers and states a simulation compares between two runs of one seed.
    #[cfg(test)]
    pub fn summary(&self) -> String {
        format!(
            "sent {} acked {} received {} unacked {} waiting {} multicasting {} lagging {}",
            self.next_seq,
            self.acked,
            self.delivered.upto(),
            self.unacked.describe(),
            self.waiters.len(),
            self.multicasting,
            self.lagging
        )
    }

    /// Frames sent (or pending) beyond the partner's acknowledgement.
    pub fn behind(&self) -> u64 {
        self.next_seq.saturating_sub(self.acked)
    }

    /// Whether the partner holds the whole snapshot and every write so far.
    pub fn caught_up(&self) -> bool {
        self.snapshot_queued && self.acked >= self.next_seq
    }

    pub fn lagging(&self) -> bool {
        self.lagging
    }

    pub fn multicasting(&self) -> bool {
        self.multicasting
    }

    /// Whether datagrams await acknowledgement (the writer ticks while they do).
    pub fn awaiting_datagrams(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// When the oldest wait runs out, if any writer waits.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.waiters
            .front()
            .map(|(_, since, _)| *since + self.config.sync_timeout)
    }

    // ------------------------------------------------------------------ sending

    /// Local writes (one hold of the store: a command, a transaction, a script), in the
    /// order the store made them: numbers them and adds them to the pending frame. The
    /// frame they closed, full, goes at once; the writer is told of a new pending frame.
    pub fn on_write(&mut self, writes: Writes, now: Instant) -> Vec<Action<W>> {
        self.next_seq += 1;
        let seq = self.next_seq;
        let mut actions = Vec::new();
        let (full, started) = self.pending.push(LiveWrites::new(seq, writes));
        if let Some(full) = full {
            actions.push(match self.datagram(full, now) {
                Ok((seq, datagram)) => Action::Datagram { seq, datagram },
                Err(full) => Action::Stream(Outgoing::Writes(full)),
            });
        }
        if let Some(first) = started {
            actions.push(Action::Stream(Outgoing::Flush(first)));
        }
        actions
    }

    /// A writer that wrote waits for the partner: in sync mode for everything written so
    /// far, in async mode only when the partner is more than [`ASYNC_BACKLOG`] frames
    /// behind. Returns whether it waits (then `waiter` is woken later).
    pub fn wait(&mut self, now: Instant, waiter: impl FnOnce() -> W) -> bool {
        let seq = self.next_seq;
        let wait_for = match self.config.mode {
            ReplicationMode::Sync => seq,
            ReplicationMode::Async => seq.saturating_sub(ASYNC_BACKLOG),
        };
        if wait_for <= self.acked {
            return false;
        }
        self.waiters.push_back((wait_for, now, waiter()));
        true
    }

    /// The pending frame, if it is still the one starting at `first` (the writer was told
    /// of it by a flush).
    pub fn take_pending(&mut self, first: u64) -> Option<LiveWrites> {
        self.pending.take_from(first)
    }

    /// Whether the writer may hold the pending frame from `first` back for more writes:
    /// it is small, and the partner has [`BATCH_WINDOW`] frames to acknowledge already.
    pub fn may_hold(&mut self, first: u64) -> bool {
        self.in_flight.beyond(self.acked) >= BATCH_WINDOW && self.pending.may_wait(first)
    }

    /// Chooses the path of live writes the writer is about to send: `Ok` with the
    /// datagram to multicast, or `Err` with the writes, to encode on the stream.
    pub fn route(
        &mut self,
        writes: LiveWrites,
        now: Instant,
    ) -> Result<(u64, BytesMut), LiveWrites> {
        let routed = self.datagram(writes, now);
        if let Err(writes) = &routed {
            self.in_flight.sent(writes.seq);
        }
        routed
    }

    /// Encodes the writes as a datagram when the path works and has room, and keeps them
    /// until they are acknowledged.
    fn datagram(
        &mut self,
        writes: LiveWrites,
        now: Instant,
    ) -> Result<(u64, BytesMut), LiveWrites> {
        let Some(window) = self.config.multicast_window.filter(|_| self.multicasting) else {
            return Err(writes);
        };
        let header = self.config.datagram_header;
        if writes.bytes() > MAX_DATAGRAM
            || !self.unacked.has_room(header + writes.bytes() + 64, window)
        {
            return Err(writes);
        }
        let mut datagram = BytesMut::with_capacity(header + writes.bytes() + 64);
        datagram.resize(header, 0);
        if writes.encode(&mut datagram).is_err() || datagram.len() - header > MAX_DATAGRAM - 300 {
            return Err(writes);
        }
        let seq = writes.seq;
        self.in_flight.sent(seq);
        self.unacked.sent(writes, datagram.len(), now);
        Ok((seq, datagram))
    }

    /// The socket refused the datagram ending at `seq`: its frame goes over the stream.
    pub fn datagram_refused(&mut self, seq: u64) -> Option<LiveWrites> {
        self.unacked.refused(seq)
    }

    /// Whether the acknowledgement `seq` may go by datagram (false: over the stream, which
    /// then pays what was owed there up to `seq`). A frame that came over the stream is
    /// acknowledged there: the partner sends a frame over the stream when its datagram
    /// was not acknowledged in time, and the datagram lost may have been the
    /// acknowledgement; another one by datagram could be lost the same way.
    pub fn ack_by_datagram(&mut self, seq: u64) -> bool {
        if !self.multicasting {
            return false;
        }
        if self.stream_ack_owed > self.stream_ack_sent {
            self.stream_ack_sent = seq;
            return false;
        }
        true
    }

    /// The partner acknowledged everything up to `seq`: forgets the datagrams it covers,
    /// wakes the writers it covers, and ends lagging when it came in time.
    ///
    /// # Errors
    /// The acknowledgement covers numbers never sent.
    pub fn on_ack(&mut self, seq: u64, now: Instant) -> Result<Vec<Action<W>>, String> {
        if seq > self.next_seq {
            return Err(format!(
                "acknowledgement of {seq}, beyond the last frame sent ({})",
                self.next_seq
            ));
        }
        self.unacked.acked(seq, now);
        if seq <= self.acked {
            return Ok(Vec::new());
        }
        self.acked = seq;
        let mut actions = vec![Action::Acked(seq)];
        let woken = self.wake_while(Waited::Acked, |waits_for, _| waits_for <= seq);
        let covered = woken.is_some();
        actions.extend(woken);
        // A writer woken in time, or a partner that has everything: protected again.
        if self.lagging && (covered || seq >= self.next_seq) {
            self.lagging = false;
            actions.push(Action::Protection { lagging: false });
        }
        Ok(actions)
    }

    /// The partner reports `from..=to` missing (frames behind a gap): the datagrams that
    /// carry them go again at once.
    ///
    /// # Errors
    /// The range is empty.
    pub fn on_nack(&mut self, from: u64, to: u64, now: Instant) -> Result<Vec<Action<W>>, String> {
        if from > to {
            return Err(format!("nack {from}..={to}"));
        }
        let frames = self.unacked.missing(from, to, now);
        Ok(retransmit(frames, "missing"))
    }

    /// Time passed: ends the waits past the sync timeout, sends again the datagrams past
    /// their retransmission time, and gives multicast up when it loses too much.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action<W>> {
        let mut actions = Vec::new();
        let timeout = self.config.sync_timeout;
        let expired = self.wake_while(Waited::TimedOut, |_, since| {
            now.saturating_duration_since(since) >= timeout
        });
        if let Some(expired) = expired {
            actions.push(expired);
            if !self.lagging {
                self.lagging = true;
                actions.push(Action::Protection { lagging: true });
            }
        }
        let mut due = self.unacked.due(now);
        if self.multicasting && self.unacked.degraded() {
            self.multicasting = false;
            self.probe = 0;
            due.extend(self.unacked.drain());
            actions.push(Action::MulticastOff);
        }
        actions.extend(retransmit(due, "timeout"));
        actions
    }

    /// Wakes the waiting writers, oldest first, while `due(number waited for, since)`
    /// holds: the action telling them `waited`, if any was due.
    fn wake_while(
        &mut self,
        waited: Waited,
        due: impl Fn(u64, Instant) -> bool,
    ) -> Option<Action<W>> {
        let count = self
            .waiters
            .iter()
            .take_while(|(waits_for, since, _)| due(*waits_for, *since))
            .count();
        (count > 0).then(|| Action::Wake {
            writers: self.waiters.drain(..count).map(|(.., w)| w).collect(),
            waited,
        })
    }

    /// Starts a probe of the multicast path with `nonce` (nonzero, unpredictable).
    pub fn start_probe(&mut self, nonce: u64) -> Frame {
        self.probe = nonce;
        Frame::Probe { nonce }
    }

    /// The partner answered a probe: multicast works from here to there. Returns whether
    /// this switched live writes to multicast.
    pub fn on_probe_ack(&mut self, nonce: u64) -> bool {
        if nonce == 0
            || nonce != self.probe
            || self.multicasting
            || self.config.multicast_window.is_none()
        {
            return false;
        }
        self.multicasting = true;
        true
    }

    /// The next frame of the snapshot: the live writes pending go first (they were
    /// numbered before it).
    pub fn on_snapshot_chunk(
        &mut self,
        mutations: Vec<Mutation>,
        last: bool,
    ) -> (u64, Vec<Action<W>>) {
        let mut actions = Vec::new();
        if let Some(pending) = self.pending.take() {
            actions.push(Action::Stream(Outgoing::Writes(pending)));
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        actions.push(Action::Stream(
            Frame::Snapshot {
                seq,
                mutations,
                last,
            }
            .into(),
        ));
        self.snapshot_queued |= last;
        (seq, actions)
    }

    /// The link is closing: every waiting writer stops waiting (its waker is dropped).
    pub fn close(&mut self) {
        self.waiters.clear();
    }

    // ------------------------------------------------------------------ receiving

    /// The partner's live writes `first..=seq`, by the stream or by datagram.
    ///
    /// # Errors
    /// The numbers are out of order.
    pub fn on_mutations(
        &mut self,
        first: u64,
        seq: u64,
        mutations: Vec<Mutation>,
        by_stream: bool,
    ) -> Result<Vec<Action<W>>, String> {
        if first > seq || first == 0 {
            return Err(format!("mutations {first}..={seq}"));
        }
        let mut actions = Vec::new();
        let ready = self
            .delivered
            .accept(first, seq, Arrived::Writes(mutations));
        let new = ready.is_some();
        if let Some(ready) = ready {
            if !ready.is_empty() {
                actions.push(Action::Apply(ready));
            }
            if let Some((from, to)) = self.delivered.gap()
                && from > self.nacked
            {
                self.nacked = from;
                actions.push(Action::Stream(Frame::Nack { from, to }.into()));
            }
        }
        // A frame sent again over the stream is acknowledged there even when its
        // datagram did arrive: the acknowledgement may be what was lost.
        if by_stream {
            self.stream_ack_owed = self.stream_ack_owed.max(self.delivered.upto());
        }
        if new || by_stream {
            self.ack_due = Some(self.delivered.upto());
        }
        Ok(actions)
    }

    /// A frame of the partner's snapshot (always over the stream).
    ///
    /// # Errors
    /// The number is zero.
    pub fn on_snapshot(
        &mut self,
        seq: u64,
        mutations: Vec<Mutation>,
        last: bool,
    ) -> Result<Vec<Action<W>>, String> {
        if seq == 0 {
            return Err("snapshot frame 0".into());
        }
        let mut actions = Vec::new();
        if let Some(ready) = self
            .delivered
            .accept(seq, seq, Arrived::Snapshot { mutations, last })
            && !ready.is_empty()
        {
            actions.push(Action::Apply(ready));
        }
        self.stream_ack_owed = self.stream_ack_owed.max(self.delivered.upto());
        self.ack_due = Some(self.delivered.upto());
        Ok(actions)
    }

    /// The acknowledgement to send now that the frames at hand are applied: one covers
    /// all the frames read in a row.
    pub fn take_ack(&mut self) -> Option<Frame> {
        self.ack_due.take().map(|seq| Frame::Ack { seq })
    }
}

fn retransmit<W>(frames: Vec<LiveWrites>, reason: &'static str) -> Vec<Action<W>> {
    if frames.is_empty() {
        Vec::new()
    } else {
        vec![Action::Retransmit { frames, reason }]
    }
}

#[cfg(test)]
mod tests;
