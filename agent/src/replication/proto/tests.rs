//! The link's core played by hand (tables of inputs and the actions they must give) and
//! by proptest (any interleaving of writes, losses, duplicates, reorderings and ticks).

use std::collections::VecDeque;

use bytes::Bytes;
use proptest::prelude::*;
use tandem_common::ops::Op;
use tandem_common::version::Version;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(2);
const WINDOW: usize = 4 << 20;

fn core(mode: ReplicationMode) -> LinkCore<u64> {
    LinkCore::new(CoreConfig {
        mode,
        sync_timeout: TIMEOUT,
        datagram_header: 0,
        multicast_window: Some(WINDOW),
    })
}

/// The write numbered `n`: one mutation of key `k<n>`, `size` bytes of value.
fn write(n: u64, size: usize) -> Writes {
    let mut writes = Writes::default();
    writes.push(&Mutation {
        key: Bytes::from(format!("k{n}")),
        version: Version::ZERO,
        op: Op::Set {
            value: Bytes::from(vec![b'v'; size]),
            expires_at_ms: None,
        },
        db: 0,
        base: None,
    });
    writes
}

/// What a write did: the actions, and whether its writer waits for the partner.
struct Written {
    actions: Vec<Action<u64>>,
    waits: bool,
}

/// Write `n` of `size` bytes, made at `now`, and its writer waiting for the partner.
fn written(core: &mut LinkCore<u64>, n: u64, size: usize, now: Instant) -> Written {
    let actions = core.on_write(write(n, size), now);
    let waits = core.wait(now, || n);
    Written { actions, waits }
}

/// The numbers of the writes in `mutations` (their keys).
fn numbers(mutations: &[Mutation]) -> Vec<u64> {
    mutations
        .iter()
        .map(|m| std::str::from_utf8(&m.key[1..]).unwrap().parse().unwrap())
        .collect()
}

fn decode(writes: &LiveWrites) -> Frame {
    let mut encoded = BytesMut::new();
    writes.encode(&mut encoded).unwrap();
    Frame::decode_exact(&encoded).unwrap()
}

/// Writers woken with `waited`, in order.
fn woken(actions: &[Action<u64>], waited: Waited) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Wake { writers, waited: w } if *w == waited => Some(writers.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn protection(actions: &[Action<u64>]) -> Option<bool> {
    actions.iter().find_map(|action| match action {
        Action::Protection { lagging } => Some(*lagging),
        _ => None,
    })
}

#[test]
fn an_acknowledgement_wakes_the_sync_writers_it_covers_oldest_first() {
    let now = Instant::now();
    let mut a = core(ReplicationMode::Sync);
    for n in 1..=4 {
        let written = written(&mut a, n, 10, now);
        assert!(written.waits, "a sync writer waits for its partner");
    }
    let acks = a.on_ack(2, now).unwrap();
    assert!(matches!(acks[0], Action::Acked(2)));
    assert_eq!(woken(&acks, Waited::Acked), [1, 2]);
    assert!(
        a.on_ack(1, now).unwrap().is_empty(),
        "an old acknowledgement changes nothing"
    );
    assert_eq!(a.behind(), 2);
    assert_eq!(woken(&a.on_ack(4, now).unwrap(), Waited::Acked), [3, 4]);
    assert_eq!(a.behind(), 0);
    assert!(
        a.on_ack(5, now).is_err(),
        "an acknowledgement of a frame never sent breaks the link"
    );
    // A write after the acknowledgement waits for its own number.
    assert!(written(&mut a, 5, 10, now).waits);
    a.close();
    assert!(
        a.on_tick(now + TIMEOUT * 2).is_empty(),
        "a closed link has no waiter left"
    );
}

#[test]
fn waits_past_the_sync_timeout_end_and_the_agent_lags_until_acknowledged_in_time() {
    let start = Instant::now();
    let mut a = core(ReplicationMode::Sync);
    written(&mut a, 1, 10, start);
    written(&mut a, 2, 10, start + Duration::from_millis(500));
    assert_eq!(a.next_timeout(), Some(start + TIMEOUT));
    assert!(
        a.on_tick(start + TIMEOUT - Duration::from_millis(1))
            .is_empty()
    );
    let ticked = a.on_tick(start + TIMEOUT);
    assert_eq!(woken(&ticked, Waited::TimedOut), [1]);
    assert_eq!(protection(&ticked), Some(true), "lagging: unprotected");
    assert!(a.lagging());
    assert_eq!(
        a.next_timeout(),
        Some(start + Duration::from_millis(500) + TIMEOUT)
    );
    // The late acknowledgement of 1 wakes nobody (1 stopped waiting) but 2: in time.
    let acked = a.on_ack(2, start + TIMEOUT).unwrap();
    assert_eq!(woken(&acked, Waited::Acked), [2]);
    assert_eq!(protection(&acked), Some(false), "protected again");
    assert!(!a.lagging());
}

#[test]
fn a_partner_that_catches_up_ends_lagging_even_without_writers() {
    let start = Instant::now();
    let mut a = core(ReplicationMode::Sync);
    written(&mut a, 1, 10, start);
    a.on_tick(start + TIMEOUT);
    assert!(a.lagging());
    let acked = a.on_ack(1, start + TIMEOUT * 2).unwrap();
    assert!(woken(&acked, Waited::Acked).is_empty());
    assert_eq!(protection(&acked), Some(false));
}

#[test]
fn async_writers_wait_only_when_the_partner_falls_too_far_behind() {
    let now = Instant::now();
    let mut a = core(ReplicationMode::Async);
    for n in 1..=ASYNC_BACKLOG {
        assert!(!written(&mut a, n, 1, now).waits);
    }
    let next = ASYNC_BACKLOG + 1;
    assert!(
        written(&mut a, next, 1, now).waits,
        "{ASYNC_BACKLOG} behind: the writer waits for the oldest"
    );
    assert_eq!(woken(&a.on_ack(1, now).unwrap(), Waited::Acked), [next]);
}

#[test]
fn writes_join_the_pending_frame_and_the_writer_is_told_once_per_frame() {
    let now = Instant::now();
    let mut a = core(ReplicationMode::Sync);
    let first = written(&mut a, 1, 100, now);
    assert!(matches!(
        first.actions[..],
        [Action::Stream(Outgoing::Flush(1))]
    ));
    let second = written(&mut a, 2, 100, now);
    assert!(second.actions.is_empty(), "joins the pending frame");
    let frame = a.take_pending(1).expect("the frame from 1");
    assert_eq!((frame.first, frame.seq), (1, 2));
    assert!(a.take_pending(1).is_none(), "handed over once");
    // Not multicasting yet: the frame goes over the stream and counts as in flight.
    let routed = a.route(frame, now).unwrap_err();
    let Frame::Mutations { mutations, .. } = decode(&routed) else {
        panic!("not writes");
    };
    assert_eq!(numbers(&mutations), [1, 2]);
    // A snapshot frame takes the next number, behind the pending writes.
    written(&mut a, 3, 100, now);
    let (seq, actions) = a.on_snapshot_chunk(Vec::new(), true);
    assert_eq!(seq, 4);
    assert!(matches!(
        &actions[..],
        [
            Action::Stream(Outgoing::Writes(pending)),
            Action::Stream(Outgoing::Frame(Frame::Snapshot { seq: 4, last: true, .. }))
        ] if pending.first == 3
    ));
    assert!(!a.caught_up());
    a.on_ack(4, now).unwrap();
    assert!(
        a.caught_up(),
        "the snapshot and every write are acknowledged"
    );
}

#[test]
fn multicast_starts_when_a_probe_is_answered_and_stops_when_it_loses_too_much() {
    let start = Instant::now();
    let mut a = core(ReplicationMode::Async);
    let probe = a.start_probe(7);
    assert!(matches!(probe, Frame::Probe { nonce: 7 }));
    assert!(!a.on_probe_ack(8), "an answer to another probe");
    assert!(a.on_probe_ack(7));
    assert!(a.multicasting());
    assert!(!a.on_probe_ack(7), "already multicasting");
    let mut now = start;
    let mut n = 0;
    // Every datagram is lost: each goes again over the stream once its time ran out,
    // and after enough of them multicast is given up.
    let off = loop {
        n += 1;
        written(&mut a, n, 10, now);
        let frame = a.take_pending(n).unwrap();
        let (seq, datagram) = a.route(frame, now).expect("multicast");
        assert_eq!(seq, n);
        assert!(
            matches!(Frame::decode_exact(&datagram), Ok(Frame::Mutations { first, .. }) if first == n)
        );
        now += Duration::from_millis(50);
        let ticked = a.on_tick(now);
        let resent: Vec<u64> = ticked
            .iter()
            .filter_map(|action| match action {
                Action::Retransmit {
                    frames,
                    reason: "timeout",
                } => Some(frames.iter().map(|f| f.seq)),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(resent, [n], "the lost datagram goes again");
        if ticked
            .iter()
            .any(|action| matches!(action, Action::MulticastOff))
        {
            break n;
        }
        assert!(n < 100, "multicast never given up");
    };
    assert_eq!(off, 16);
    assert!(!a.multicasting());
    written(&mut a, off + 1, 10, now);
    let frame = a.take_pending(off + 1).unwrap();
    assert!(a.route(frame, now).is_err(), "live writes take the stream");
}

#[test]
fn a_refused_datagram_and_a_reported_gap_go_over_the_stream() {
    let now = Instant::now();
    let mut a = core(ReplicationMode::Sync);
    a.start_probe(1);
    a.on_probe_ack(1);
    for n in 1..=3 {
        written(&mut a, n, 10, now);
        let frame = a.take_pending(n).unwrap();
        a.route(frame, now).unwrap();
    }
    assert_eq!(a.datagram_refused(2).map(|w| w.seq), Some(2));
    assert!(a.datagram_refused(2).is_none());
    let nacked = a.on_nack(1, 3, now).unwrap();
    assert!(matches!(
        &nacked[..],
        [Action::Retransmit { frames, reason: "missing" }] if frames.iter().map(|f| f.seq).eq([1, 3])
    ));
    assert!(a.on_nack(3, 1, now).is_err());
    assert!(!a.awaiting_datagrams());
}

#[test]
fn the_receiver_applies_in_order_once_and_reports_each_gap_once() {
    let mut b = core(ReplicationMode::Sync);
    let muts = |n: u64| {
        vec![Mutation {
            key: Bytes::from(format!("k{n}")),
            version: Version::ZERO,
            op: Op::Delete,
            db: 0,
            base: None,
        }]
    };
    let applied = |actions: &[Action<u64>]| -> Vec<u64> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Apply(ready) => Some(ready.iter().flat_map(|arrived| match arrived {
                    Arrived::Writes(m) => numbers(m),
                    Arrived::Snapshot { mutations, .. } => numbers(mutations),
                })),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert_eq!(applied(&b.on_mutations(1, 1, muts(1), false).unwrap()), [1]);
    // 2 is lost; 3 and 4 arrive: the gap is reported once.
    let three = b.on_mutations(3, 3, muts(3), false).unwrap();
    assert!(applied(&three).is_empty());
    assert!(matches!(
        &three[..],
        [Action::Stream(Outgoing::Frame(Frame::Nack {
            from: 2,
            to: 2
        }))]
    ));
    assert!(
        b.on_mutations(4, 4, muts(4), false).unwrap().is_empty(),
        "reported already"
    );
    assert_eq!(b.take_ack(), Some(Frame::Ack { seq: 1 }));
    assert_eq!(b.take_ack(), None, "one acknowledgement for what arrived");
    // The retransmission over the stream fills the gap; its acknowledgement is owed there.
    assert_eq!(
        applied(&b.on_mutations(2, 2, muts(2), true).unwrap()),
        [2, 3, 4]
    );
    b.start_probe(1);
    b.on_probe_ack(1);
    assert_eq!(b.take_ack(), Some(Frame::Ack { seq: 4 }));
    assert!(!b.ack_by_datagram(4), "owed on the stream");
    // A duplicate by datagram is not applied again, and needs no acknowledgement.
    assert!(b.on_mutations(3, 3, muts(3), false).unwrap().is_empty());
    assert_eq!(b.take_ack(), None);
    // A duplicate over the stream is acknowledged there again (the ack may be what was lost).
    assert!(b.on_mutations(4, 4, muts(4), true).unwrap().is_empty());
    assert_eq!(b.take_ack(), Some(Frame::Ack { seq: 4 }));
    assert!(
        b.ack_by_datagram(4),
        "4 is covered by what went by the stream"
    );
    assert!(b.on_mutations(0, 0, muts(0), false).is_err());
    assert!(b.on_mutations(6, 5, muts(6), false).is_err());
}

#[test]
fn acknowledgements_of_frames_that_came_over_the_stream_go_over_the_stream() {
    let mut b = core(ReplicationMode::Sync);
    b.start_probe(1);
    b.on_probe_ack(1);
    assert!(b.ack_by_datagram(3), "nothing came over the stream yet");
    // Frames up to 9 are in, the last over the stream (a retransmission).
    b.stream_ack_owed = 9;
    // An acknowledgement sent before that one, handled after it: it goes by the stream,
    // but does not cover 9, so the next goes by the stream too.
    assert!(!b.ack_by_datagram(5));
    assert!(!b.ack_by_datagram(9));
    assert!(
        b.ack_by_datagram(12),
        "the stream has had its acknowledgement"
    );
}

/// One step of the property test's world.
#[derive(Debug, Clone)]
enum Step {
    /// A local write of this many bytes.
    Write(usize),
    /// The sender's writer runs: sends what was queued for it.
    Flush,
    /// The partner answers the first probe: the sender multicasts.
    Multicast,
    /// The next frame on the stream to the partner arrives.
    Stream,
    /// A datagram in flight to the partner (by index) arrives, is lost, or is doubled.
    Deliver(usize),
    Lose(usize),
    Double(usize),
    /// The partner has no frame at hand: it acknowledges what it applied.
    PartnerIdle,
    /// The next frame from the partner arrives (stream, or the datagram by index).
    Back,
    BackDatagram(usize),
    /// Time passes, in milliseconds.
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..30_000).prop_map(Step::Write),
        3 => Just(Step::Flush),
        1 => Just(Step::Multicast),
        4 => Just(Step::Stream),
        3 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Lose),
        1 => any::<usize>().prop_map(Step::Double),
        2 => Just(Step::PartnerIdle),
        3 => Just(Step::Back),
        2 => any::<usize>().prop_map(Step::BackDatagram),
        2 => (1u64..3_000).prop_map(Step::Tick),
    ]
}

/// A sender and its partner, with a reliable stream and a lossy datagram path each way,
/// played step by step.
struct World {
    mode: ReplicationMode,
    now: Instant,
    a: LinkCore<u64>,
    b: LinkCore<u64>,
    /// What the sender queued for its writer.
    writer: VecDeque<Outgoing>,
    /// Frames on their way, by path.
    to_b: VecDeque<Frame>,
    datagrams_to_b: Vec<Frame>,
    to_a: VecDeque<Frame>,
    datagrams_to_a: Vec<Frame>,
    written: u64,
    /// The writes the partner applied, in order.
    applied: Vec<u64>,
    /// The highest acknowledgement the partner sent.
    acknowledged: u64,
    /// Sync writers told their write is on the partner, and those that timed out.
    acked_writers: Vec<u64>,
    timed_out: Vec<u64>,
}

impl World {
    fn new(mode: ReplicationMode) -> Self {
        World {
            mode,
            now: Instant::now(),
            a: core(mode),
            b: core(mode),
            writer: VecDeque::new(),
            to_b: VecDeque::new(),
            datagrams_to_b: Vec::new(),
            to_a: VecDeque::new(),
            datagrams_to_a: Vec::new(),
            written: 0,
            applied: Vec::new(),
            acknowledged: 0,
            acked_writers: Vec::new(),
            timed_out: Vec::new(),
        }
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Write(size) => {
                self.written += 1;
                let n = self.written;
                let actions = self.a.on_write(write(n, size), self.now);
                // The writer waits for what it waits for: its own write in sync mode, the
                // write the backlog allows in async mode.
                let target = match self.mode {
                    ReplicationMode::Sync => n,
                    ReplicationMode::Async => n.saturating_sub(ASYNC_BACKLOG),
                };
                self.a.wait(self.now, || target);
                self.sender(actions);
            }
            Step::Flush => self.flush(),
            Step::Multicast => {
                self.a.start_probe(1);
                self.a.on_probe_ack(1);
                self.b.start_probe(1);
                self.b.on_probe_ack(1);
            }
            Step::Stream => {
                if let Some(frame) = self.to_b.pop_front() {
                    self.at_partner(frame, true);
                }
            }
            Step::Deliver(i) => {
                if !self.datagrams_to_b.is_empty() {
                    let frame = self.datagrams_to_b.remove(i % self.datagrams_to_b.len());
                    self.at_partner(frame, false);
                }
            }
            Step::Lose(i) => {
                if !self.datagrams_to_b.is_empty() {
                    self.datagrams_to_b.remove(i % self.datagrams_to_b.len());
                }
            }
            Step::Double(i) => {
                if !self.datagrams_to_b.is_empty() {
                    let frame = self.datagrams_to_b[i % self.datagrams_to_b.len()].clone();
                    self.datagrams_to_b.push(frame);
                }
            }
            Step::PartnerIdle => {
                if let Some(Frame::Ack { seq }) = self.b.take_ack() {
                    assert!(
                        seq <= self.applied.len() as u64,
                        "acknowledges only what it applied"
                    );
                    self.acknowledged = self.acknowledged.max(seq);
                    if self.b.ack_by_datagram(seq) {
                        self.datagrams_to_a.push(Frame::Ack { seq });
                    } else {
                        self.to_a.push_back(Frame::Ack { seq });
                    }
                }
            }
            Step::Back => {
                if let Some(frame) = self.to_a.pop_front() {
                    self.at_sender(frame);
                }
            }
            Step::BackDatagram(i) => {
                if !self.datagrams_to_a.is_empty() {
                    let frame = self.datagrams_to_a.remove(i % self.datagrams_to_a.len());
                    self.at_sender(frame);
                }
            }
            Step::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                let actions = self.a.on_tick(self.now);
                self.sender(actions);
            }
        }
    }

    /// Performs the sender's actions as the agent's tasks do.
    fn sender(&mut self, actions: Vec<Action<u64>>) {
        for action in actions {
            match action {
                Action::Stream(outgoing) => self.writer.push_back(outgoing),
                Action::Datagram { datagram, .. } => {
                    self.datagrams_to_b
                        .push(Frame::decode_exact(&datagram).unwrap());
                }
                Action::Retransmit { frames, .. } => {
                    self.writer.extend(frames.into_iter().map(Outgoing::Stream));
                }
                Action::Wake { writers, waited } => {
                    for n in writers {
                        assert!(n <= self.written);
                        if waited == Waited::Acked {
                            // The heart of it: a writer told its write is safe only when
                            // the partner has applied it.
                            assert!(
                                self.applied.len() as u64 >= n && self.acknowledged >= n,
                                "writer {n} woken with {} applied",
                                self.applied.len()
                            );
                            self.acked_writers.push(n);
                        } else {
                            self.timed_out.push(n);
                        }
                    }
                }
                Action::Acked(seq) => assert!(seq <= self.acknowledged),
                Action::Apply(_) => panic!("the sender received nothing"),
                Action::Protection { .. } | Action::MulticastOff => {}
            }
        }
    }

    /// The sender's writer: routes live writes, sends the rest over the stream.
    fn flush(&mut self) {
        while let Some(outgoing) = self.writer.pop_front() {
            let writes = match outgoing {
                Outgoing::Flush(first) => match self.a.take_pending(first) {
                    Some(writes) => writes,
                    None => continue,
                },
                Outgoing::Writes(writes) => writes,
                Outgoing::Stream(writes) => {
                    self.to_b.push_back(decode(&writes));
                    continue;
                }
                Outgoing::Frame(frame) => {
                    self.to_b.push_back(frame);
                    continue;
                }
            };
            match self.a.route(writes, self.now) {
                Ok((_, datagram)) => self
                    .datagrams_to_b
                    .push(Frame::decode_exact(&datagram).unwrap()),
                Err(writes) => self.to_b.push_back(decode(&writes)),
            }
        }
    }

    fn at_partner(&mut self, frame: Frame, by_stream: bool) {
        let actions = match frame {
            Frame::Mutations {
                first,
                seq,
                mutations,
            } => self
                .b
                .on_mutations(first, seq, mutations, by_stream)
                .unwrap(),
            Frame::Snapshot {
                seq,
                mutations,
                last,
            } => self.b.on_snapshot(seq, mutations, last).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        for action in actions {
            match action {
                Action::Apply(ready) => {
                    for arrived in ready {
                        let Arrived::Writes(mutations) = arrived else {
                            panic!("no snapshot here");
                        };
                        for n in numbers(&mutations) {
                            assert_eq!(n, self.applied.len() as u64 + 1, "applied once, in order");
                            self.applied.push(n);
                        }
                    }
                }
                Action::Stream(Outgoing::Frame(nack @ Frame::Nack { .. })) => {
                    self.to_a.push_back(nack)
                }
                other => panic!("the partner only applies and reports gaps: {other:?}"),
            }
        }
    }

    fn at_sender(&mut self, frame: Frame) {
        let actions = match frame {
            Frame::Ack { seq } => self.a.on_ack(seq, self.now).unwrap(),
            Frame::Nack { from, to } => self.a.on_nack(from, to, self.now).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        self.sender(actions);
    }

    /// Lets everything in flight arrive, with time for retransmissions, until quiet.
    fn settle(&mut self) {
        for _ in 0..1_000 {
            self.flush();
            while let Some(frame) = self.to_b.pop_front() {
                self.at_partner(frame, true);
            }
            while let Some(frame) = self.datagrams_to_b.pop() {
                self.at_partner(frame, false);
            }
            self.run(Step::PartnerIdle);
            while let Some(frame) = self.to_a.pop_front() {
                self.at_sender(frame);
            }
            while let Some(frame) = self.datagrams_to_a.pop() {
                self.at_sender(frame);
            }
            if self.a.behind() == 0 && self.writer.is_empty() && !self.a.awaiting_datagrams() {
                return;
            }
            self.run(Step::Tick(100));
        }
        panic!("the link never settled: {} behind", self.a.behind());
    }
}

/// Interleavings the property test plays: `PROPTEST_CASES`, or 512.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(512)
}

proptest! {
    // 512 interleavings in CI; `PROPTEST_CASES=100000` for a long run (BENCHMARKS.md).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// For any interleaving of writes, losses, duplicates, reorderings and time, every
    /// write a sync writer was told is safe is on the partner, the partner applies each
    /// write once and in order, and once the paths are quiet it has them all.
    #[test]
    fn every_acknowledged_write_is_on_the_partner_once_and_in_order(
        steps in proptest::collection::vec(step(), 1..300),
        sync in any::<bool>(),
    ) {
        let mode = if sync { ReplicationMode::Sync } else { ReplicationMode::Async };
        let mut world = World::new(mode);
        for step in steps {
            world.run(step);
        }
        world.settle();
        prop_assert_eq!(world.applied.len() as u64, world.written);
        prop_assert_eq!(world.a.acked(), world.written);
        let mut told: Vec<u64> =
            world.acked_writers.iter().chain(&world.timed_out).copied().collect();
        told.sort_unstable();
        if sync {
            let all: Vec<u64> = (1..=world.written).collect();
            prop_assert_eq!(told, all, "every sync writer is answered once");
        }
    }
}
