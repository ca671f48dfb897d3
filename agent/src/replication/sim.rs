//! Simulation tests: agents over the in-memory transport (or QUIC on loopback) and an
//! in-memory membership board, driven by scripts — join, kill, cut a link, heal it, write —
//! with assertions that must hold within a time. Pairs may also replicate by multicast,
//! over an in-memory group or the loopback interface, through injected faults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tandem_common::member::Member;
use tandem_common::schema::{NodeAdvert, NodeState, Protocol, ReplTransport, Role, Subnet};
use tokio::task::JoinHandle;

use super::membership::{AdvertChange, Membership};
use super::memory::MemoryNetwork;
use super::memory::{FaultRates, Faults, MemoryGroup};
use super::multicast::{Multicast, MulticastConfig};
use super::tls::{self, NodeTls};
use super::transport::{QuicTransport, Transport};
use super::{Replicated, ReplicationConfig, ReplicationMode, Replicator};
use crate::sessions::Sessions;
use crate::store::{Keyspace, Limits, SessionStore, SetCondition, SetExpiry, TokioClock};

/// The cluster's adverts and liveness, as gossip would converge to them.
#[derive(Default)]
struct Board {
    nodes: Mutex<BTreeMap<String, (NodeAdvert, bool)>>,
}

struct BoardView {
    board: Arc<Board>,
    me: String,
}

#[async_trait]
impl Membership for BoardView {
    async fn members(&self) -> Vec<Member> {
        let nodes = self.board.nodes.lock();
        nodes
            .iter()
            .map(|(id, (advert, live))| Member::new(id, 1, "sim".into(), *live, Ok(advert.clone())))
            .collect()
    }

    async fn update(&self, change: AdvertChange) {
        if let Some((advert, _)) = self.board.nodes.lock().get_mut(&self.me) {
            change(advert);
        }
    }
}

struct SimAgent {
    sessions: Sessions,
    tasks: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

/// The stream between partners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Memory,
    /// Real QUIC with mutual TLS on 127.0.0.1, certificates from a fresh cluster CA.
    Quic,
}

/// The multicast path between agents of one subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Datagrams {
    None,
    Memory,
    /// A real group on the loopback interface, on a port of its own.
    Loopback,
}

pub(super) struct Sim {
    network: MemoryNetwork,
    board: Arc<Board>,
    agents: BTreeMap<String, SimAgent>,
    next_host: u8,
    stream: Stream,
    datagrams: Datagrams,
    faults: Option<Faults>,
    tls_dir: tempfile::TempDir,
    group: MemoryGroup,
    loopback: Option<MulticastConfig>,
    /// The agents' wall clock, which moves with tokio's: under simulated time, versions and
    /// pair epochs are the same in every run of a seed.
    clock: TokioClock,
    /// How long sync writes of agents joining from now on wait for the partner.
    pub(super) sync_timeout: Duration,
    /// The protocol agents joining from now on speak.
    protocol: Protocol,
}

/// The wall-clock time at which a simulation starts (1 January 2026).
const SIM_EPOCH_MS: u64 = 1_767_225_600_000;
pub(super) const ROUND: Duration = Duration::from_millis(20);
const SETTLE: Duration = Duration::from_secs(15);
/// How soon a pair probes multicast again after it failed, in simulations.
pub(super) const REPROBE: Duration = Duration::from_millis(300);

/// Aborts the test process, with the threads and their stacks, when threads deadlock on
/// the agent's locks (a cycle in the lock order, which `--threads 1` would hide): a
/// deadlocked test would otherwise only hang. Started once per process.
fn watch_for_deadlocks() {
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let deadlocks = parking_lot::deadlock::check_deadlock();
                if deadlocks.is_empty() {
                    continue;
                }
                for (i, threads) in deadlocks.iter().enumerate() {
                    eprintln!("deadlock {i}:");
                    for thread in threads {
                        eprintln!("thread {:?}:\n{:?}", thread.thread_id(), thread.backtrace());
                    }
                }
                std::process::abort();
            }
        });
    });
}

impl Sim {
    fn new() -> Self {
        Sim::with(Stream::Memory, Datagrams::None, None)
    }

    /// A simulation whose agents use `stream` and `datagrams`, the latter through `faults`.
    ///
    /// # Panics
    /// When a loopback multicast group cannot be set up here.
    pub(super) fn with(stream: Stream, datagrams: Datagrams, faults: Option<Faults>) -> Self {
        watch_for_deadlocks();
        let tls_dir = tempfile::tempdir().expect("a temporary directory");
        if stream == Stream::Quic {
            tls::init_ca(tls_dir.path()).expect("a cluster CA");
        }
        let loopback = (datagrams == Datagrams::Loopback).then(|| {
            // A port nobody else uses, so simulations running side by side keep apart.
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
            let port = probe.local_addr().expect("bound").port();
            MulticastConfig {
                group: std::net::Ipv4Addr::new(239, 77, (port >> 8) as u8, port as u8),
                port,
                interface: std::net::Ipv4Addr::LOCALHOST,
            }
        });
        Sim {
            network: MemoryNetwork::default(),
            board: Arc::new(Board::default()),
            agents: BTreeMap::new(),
            next_host: 1,
            stream,
            datagrams,
            faults,
            tls_dir,
            group: MemoryGroup::default(),
            loopback,
            clock: TokioClock::starting_at(SIM_EPOCH_MS),
            sync_timeout: Duration::from_millis(500),
            protocol: Protocol::CURRENT,
        }
    }

    pub(super) fn join(&mut self, id: &str, subnet: &str) {
        let (transport, addr): (Arc<dyn Transport>, SocketAddr) = match self.stream {
            Stream::Memory => {
                let addr = SocketAddr::from(([10, 0, 0, self.next_host], 7947));
                (Arc::new(self.network.bind(addr)), addr)
            }
            Stream::Quic => {
                tls::issue(self.tls_dir.path(), id).expect("a node certificate");
                let tls = NodeTls::load(self.tls_dir.path(), id, false).expect("node TLS");
                let quic = QuicTransport::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &tls)
                    .expect("a QUIC endpoint on loopback");
                let addr = quic.local_addr();
                (Arc::new(quic), addr)
            }
        };
        self.next_host += 1;
        let mut advert = NodeAdvert::new(Role::Agent, "sim");
        advert.protocol = self.protocol;
        advert.state = NodeState::Ready;
        advert.repl = Some(addr.to_string());
        advert.subnet = Some(Subnet {
            cidr: subnet.into(),
            multicast: self.datagrams != Datagrams::None,
        });
        self.board
            .nodes
            .lock()
            .insert(id.to_string(), (advert, true));
        let store = SessionStore::new(id, Limits::default(), self.clock);
        let replicator = Replicator::new(
            ReplicationConfig {
                node_id: id.to_string(),
                cluster: "sim".into(),
                mode: ReplicationMode::Sync,
                sync_timeout: self.sync_timeout,
                confirm_timeout: Duration::from_secs(1),
                anti_entropy_interval: Duration::from_millis(200),
                reprobe_after: REPROBE,
                protocol: self.protocol,
            },
            store.clone(),
            Some(transport),
            Some(Arc::new(BoardView {
                board: self.board.clone(),
                me: id.to_string(),
            })),
        );
        let multicast = match (self.datagrams, self.loopback) {
            (Datagrams::Memory, _) => Some(Multicast::memory(&self.group, addr)),
            (Datagrams::Loopback, Some(config)) => {
                Some(Multicast::bind(config).expect("a multicast group on loopback"))
            }
            _ => None,
        };
        let replicator = match multicast {
            Some(multicast) => replicator.with_multicast(match &self.faults {
                Some(faults) => multicast.with_faults(faults.clone()),
                None => multicast,
            }),
            None => replicator,
        };
        let tasks = replicator.spawn(ROUND);
        let sessions = Sessions::new(store, replicator);
        self.agents.insert(
            id.to_string(),
            SimAgent {
                sessions,
                tasks,
                addr,
            },
        );
    }

    /// The agent dies: no goodbye; the board reports it dead, as the failure detector would.
    fn kill(&mut self, id: &str) {
        let agent = self.agents.remove(id).expect("a running agent");
        for task in &agent.tasks {
            task.abort();
        }
        agent.sessions.replicator.shutdown();
        self.network.unbind(agent.addr);
        if let Some((_, live)) = self.board.nodes.lock().get_mut(id) {
            *live = false;
        }
    }

    fn cut(&self, a: &str, b: &str) {
        assert_eq!(self.stream, Stream::Memory, "links are cut in memory only");
        self.network.cut(self.agents[a].addr, self.agents[b].addr);
    }

    fn heal(&self, a: &str, b: &str) {
        self.network.heal(self.agents[a].addr, self.agents[b].addr);
    }

    /// The agent stops for `time`, as a process does under `SIGSTOP`, a long GC pause or
    /// a VM migration, shorter than failure detection: nothing it sent or was sent moves
    /// over its open channels until it resumes (then it all does), its multicast is
    /// lost both ways, nobody can connect to it, and its store takes nothing from the
    /// partner.
    fn pause(&self, id: &str, time: Duration) {
        let addr = self.agents[id].addr;
        let hold = self.agents[id].sessions.store.gate().begin();
        let (network, group) = (self.network.clone(), self.group.clone());
        network.stall(addr);
        group.set_stalled(addr, true);
        tokio::spawn(async move {
            tokio::time::sleep(time).await;
            network.resume(addr);
            group.set_stalled(addr, false);
            drop(hold);
        });
    }

    /// The agent's store is held for `time` (a long script, a slow disk, a starved CPU):
    /// as a partner, it applies nothing meanwhile and acknowledges late.
    fn slow_down(&self, id: &str, time: Duration) {
        let hold = self.agents[id].sessions.store.gate().begin();
        tokio::spawn(async move {
            tokio::time::sleep(time).await;
            drop(hold);
        });
    }

    /// The transport the agent advertises for its live writes.
    pub(super) fn transport(&self, id: &str) -> Option<ReplTransport> {
        self.board
            .nodes
            .lock()
            .get(id)
            .and_then(|(advert, _)| advert.transport)
    }

    /// How many of the agent's sync writes gave up waiting for the partner.
    pub(super) fn sync_timeouts(&self, id: &str) -> u64 {
        self.agents[id].sessions.replicator.sync_timeouts()
    }

    /// Whether the agent advertises itself as unprotected (e.g. after a sync timeout).
    pub(super) fn unprotected(&self, id: &str) -> bool {
        self.board
            .nodes
            .lock()
            .get(id)
            .is_none_or(|(advert, _)| advert.unprotected)
    }

    /// Each running agent's link: its partner, numbers and states.
    fn link_summaries(&self) -> Vec<String> {
        self.agents
            .iter()
            .map(|(id, a)| format!("{id} -> {:?}", a.sessions.replicator.link_summary()))
            .collect()
    }

    /// Each running agent's link partner.
    fn links(&self) -> BTreeMap<String, Option<String>> {
        self.agents
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    a.sessions.replicator.partner().map(|p| p.node_id),
                )
            })
            .collect()
    }

    /// Never may two agents hold a link to the same agent.
    fn assert_no_agent_in_two_pairs(&self) {
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        for (id, partner) in self.links() {
            if let Some(partner) = partner
                && let Some(other) = claimed.insert(partner.clone(), id.clone())
            {
                panic!(
                    "{partner} is linked from both {other} and {id}: {:?}",
                    self.links()
                );
            }
        }
    }

    /// Every running agent is in a mutual pair, advertised on the board, except at most one.
    fn settled(&self) -> bool {
        let links = self.links();
        let nodes = self.board.nodes.lock();
        let mut lone = 0;
        for (id, partner) in &links {
            match partner {
                Some(p) => {
                    let mutual = links.get(p).cloned().flatten().as_deref() == Some(id.as_str());
                    let advertised = nodes.get(id).is_some_and(|(advert, _)| {
                        advert.partner.as_ref().is_some_and(|a| a.node_id == *p)
                    });
                    if !mutual || !advertised {
                        return false;
                    }
                }
                None => lone += 1,
            }
        }
        lone <= 1 && lone == links.len() % 2
    }

    pub(super) async fn settle(&self, what: &str) {
        let started = tokio::time::Instant::now();
        loop {
            self.assert_no_agent_in_two_pairs();
            if self.settled() {
                return;
            }
            assert!(
                started.elapsed() < SETTLE,
                "not settled after {SETTLE:?} ({what}): {:?}",
                self.links()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `check` holds, failing the test after the settle time.
    pub(super) async fn eventually(&self, what: &str, check: impl Fn(&Sim) -> bool) {
        let started = tokio::time::Instant::now();
        while !check(self) {
            assert!(started.elapsed() < SETTLE, "not after {SETTLE:?}: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `problem` finds none, failing the test with the last it found after
    /// the settle time.
    async fn until_none(&self, what: &str, problem: impl Fn(&Sim) -> Option<String>) {
        let started = tokio::time::Instant::now();
        while let Some(problem) = problem(self) {
            assert!(
                started.elapsed() < SETTLE,
                "not after {SETTLE:?}: {what}: {problem}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(super) async fn set(&self, on: &str, key: &str, value: &str) {
        let (key, value) = (Bytes::from(key.to_string()), Bytes::from(value.to_string()));
        self.agents[on]
            .sessions
            .run(|ks, now| plain_set(ks, key, value, now))
            .await;
    }

    /// Appends `item` to the list `key`. A push replicates as a delta: applied twice on
    /// the partner, the item would be there twice.
    pub(super) async fn rpush(&self, on: &str, key: &str, item: &str) -> usize {
        let (key, item) = (Bytes::from(key.to_string()), Bytes::from(item.to_string()));
        self.agents[on]
            .sessions
            .run(|ks, now| ks.push(key, false, vec![item], false, now).unwrap())
            .await
    }

    /// `SET key key` and `RPUSH list key` in one hold of the store (as one transaction), and
    /// how its writes reached the partner.
    pub(super) async fn write(&self, on: &str, key: &str, list: &str) -> Option<Replicated> {
        let (key, list) = (Bytes::from(key.to_string()), Bytes::from(list.to_string()));
        self.agents[on]
            .sessions
            .run_replicated(|ks, now| {
                plain_set(ks, key.clone(), key.clone(), now);
                ks.push(list, false, vec![key], false, now).unwrap();
            })
            .await
            .1
    }

    /// The items of the list `key` (none without it).
    fn list(&self, on: &str, key: &str) -> Vec<Bytes> {
        self.agents[on]
            .sessions
            .store
            .run(|ks, now| {
                ks.list_at(key.as_bytes(), now)
                    .unwrap()
                    .map_or_else(Vec::new, |list| list.iter().cloned().collect())
            })
            .value
    }

    /// The length of the list `key` (0 without it).
    pub(super) fn list_len(&self, on: &str, key: &str) -> usize {
        self.list(on, key).len()
    }

    pub(super) fn get(&self, on: &str, key: &str) -> Option<Bytes> {
        self.agents[on]
            .sessions
            .store
            .run(|ks, now| ks.get(key.as_bytes(), now).unwrap())
            .value
    }
}

/// `SET key value`, with no option.
fn plain_set(ks: &mut Keyspace, key: Bytes, value: Bytes, now: u64) {
    ks.set(
        key,
        value,
        SetExpiry::None,
        SetCondition::Always,
        false,
        now,
    )
    .expect("a plain SET succeeds");
}

fn ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("agent-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_pair_whatever_the_join_order() {
    for n in [2, 3, 5, 8] {
        // One by one, in ascending and descending order, spread over two subnets.
        for descending in [false, true] {
            let mut sim = Sim::new();
            let mut order = ids(n);
            if descending {
                order.reverse();
            }
            for (i, id) in order.iter().enumerate() {
                sim.join(
                    id,
                    if i % 2 == 0 {
                        "10.1.0.0/24"
                    } else {
                        "10.2.0.0/24"
                    },
                );
                tokio::time::sleep(ROUND * 3).await;
                sim.assert_no_agent_in_two_pairs();
            }
            sim.settle(&format!("{n} agents joined one by one")).await;
        }
        // All at once.
        let mut sim = Sim::new();
        for id in ids(n) {
            sim.join(&id, "10.1.0.0/24");
        }
        sim.settle(&format!("{n} agents joined at once")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_any_point_end_with_every_live_agent_paired_but_one() {
    let mut sim = Sim::new();
    for id in ids(8) {
        sim.join(&id, "10.1.0.0/24");
    }
    // A kill while pairs are still forming.
    tokio::time::sleep(ROUND).await;
    sim.kill("agent-3");
    sim.settle("a kill during formation").await;
    // Then one at a time, paired agents and lone ones alike, down to one survivor.
    for victim in [
        "agent-1", "agent-8", "agent-5", "agent-2", "agent-7", "agent-4",
    ] {
        sim.kill(victim);
        sim.settle(&format!("after killing {victim}")).await;
    }
    assert_eq!(sim.links().len(), 1);
    // A newcomer pairs with the survivor and receives its sessions.
    sim.set("agent-6", "survivor-key", "kept").await;
    sim.join("agent-9", "10.1.0.0/24");
    sim.settle("a newcomer").await;
    let partner = sim.links()["agent-6"].clone();
    assert_eq!(partner.as_deref(), Some("agent-9"));
    sim.eventually("the snapshot arrived", |sim| {
        sim.get("agent-9", "survivor-key").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_partner_and_a_partition_heals_to_the_newest_version() {
    let mut sim = Sim::new();
    sim.join("a", "10.1.0.0/24");
    sim.join("b", "10.1.0.0/24");
    sim.settle("a pair").await;

    // Sync writes on either side are on the other once acknowledged.
    sim.set("a", "shared", "v0").await;
    sim.set("b", "from-b", "1").await;
    assert_eq!(sim.get("b", "shared").as_deref(), Some(&b"v0"[..]));
    assert_eq!(sim.get("a", "from-b").as_deref(), Some(&b"1"[..]));

    // The link is cut: both keep serving, each on its own.
    sim.cut("a", "b");
    sim.eventually("the cut link was noticed", |sim| {
        sim.links().values().all(Option::is_none)
    })
    .await;
    sim.set("a", "shared", "written-on-a").await;
    sim.set("a", "only-a", "x").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    sim.set("b", "shared", "written-on-b-later").await;
    sim.set("b", "only-b", "y").await;
    assert_eq!(sim.get("a", "only-b"), None);

    // Healed: they pair again and converge on the newest version of every key.
    sim.heal("a", "b");
    sim.settle("after the partition healed").await;
    sim.eventually("converged after healing", |sim| {
        ["a", "b"].iter().all(|side| {
            sim.get(side, "shared").as_deref() == Some(&b"written-on-b-later"[..])
                && sim.get(side, "only-a").is_some()
                && sim.get(side, "only-b").is_some()
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_differences_the_stream_missed() {
    // Protocol 2.2 compares versions before values: only the three keys that differ go
    // whole. A partner of 2.1 is sent the whole of every shard that differs.
    let sent = anti_entropy_repairs(Protocol::CURRENT).await;
    assert_eq!(sent, 3, "only the keys that differ are sent");
    let sent = anti_entropy_repairs(Protocol { major: 2, minor: 1 }).await;
    assert!(
        sent > 3,
        "{sent} keys sent: the whole of each shard that differs"
    );
}

/// Repairs by anti-entropy between an agent and a partner speaking `protocol`; returns
/// how many keys both sent whole.
async fn anti_entropy_repairs(protocol: Protocol) -> u64 {
    let mut sim = Sim::new();
    sim.join("a", "10.1.0.0/24");
    sim.protocol = protocol;
    sim.join("b", "10.1.0.0/24");
    sim.settle("a pair").await;
    for i in 0..50 {
        sim.set("a", &format!("k{i}"), "v").await;
    }
    // Many keys in every shard, the same on both sides.
    sim.agents["a"]
        .sessions
        .run(|ks, now| {
            for i in 0..4_000 {
                let key = Bytes::from(format!("bulk{i}"));
                plain_set(ks, key.clone(), key, now);
            }
        })
        .await;
    // Writes that never went over the link (as if lost), on both sides: a key only b
    // has, a newer value only a has, a delete only a made.
    let local = |on: &str, key: &str, value: Option<&str>| {
        let (key, value) = (
            Bytes::from(key.to_string()),
            value.map(|v| Bytes::from(v.to_string())),
        );
        sim.agents[on].sessions.store.run(|ks, now| {
            // Not recorded, so never handed to the link: as if its frame were lost.
            ks.set_recording(false);
            match value {
                Some(value) => plain_set(ks, key, value, now),
                None => drop(ks.delete(&[key], now)),
            }
            ks.set_recording(true);
        });
    };
    local("b", "only-on-b", Some("1"));
    local("a", "k1", Some("newer-on-a"));
    local("a", "k2", None);
    assert_eq!(sim.get("b", "k1").as_deref(), Some(&b"v"[..]));

    sim.eventually("anti-entropy repaired the differences", |sim| {
        sim.get("a", "only-on-b").is_some()
            && sim.get("b", "k1").as_deref() == Some(&b"newer-on-a"[..])
            && sim.get("b", "k2").is_none()
            && sim.get("a", "k2").is_none()
    })
    .await;
    // A round or two more: nothing else goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ["a", "b"]
        .iter()
        .map(|id| sim.agents[*id].sessions.replicator.repair_keys_sent())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_one_list_from_both_sides_at_once_converge() {
    let mut sim = Sim::new();
    sim.join("a", "10.1.0.0/24");
    sim.join("b", "10.1.0.0/24");
    sim.settle("a pair").await;
    for round in 0..20 {
        // Both sides push before either hears of the other's push: each delta arrives
        // for another value than the one it was made on.
        let (x, y) = (format!("a{round}"), format!("b{round}"));
        tokio::join!(sim.rpush("a", "shared", &x), sim.rpush("b", "shared", &y));
    }
    // Whichever value wins, both sides hold the same one: the same version never names
    // two values.
    let lists = |sim: &Sim| (sim.list("a", "shared"), sim.list("b", "shared"));
    sim.until_none("both sides hold one list", |sim| {
        let (a, b) = lists(sim);
        (a != b).then(|| format!("a holds {a:?} and b {b:?}"))
    })
    .await;
    assert!(!lists(&sim).0.is_empty());
}

/// Seeds of the seeded scenarios: `SIM_SEED=n` replays one, `SIM_SEEDS=n` plays that many
/// (200 by default).
fn seeds() -> Vec<u64> {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match var("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=var("SIM_SEEDS").unwrap_or(200)).collect(),
    }
}

/// What a seeded scenario did, step by step, each step stamped with the simulated time
/// since it began and also logged (so that `SIM_LOG=1` shows it among the agents' lines).
struct Trace {
    start: tokio::time::Instant,
    lines: Vec<String>,
}

impl Trace {
    fn new() -> Self {
        Trace {
            start: tokio::time::Instant::now(),
            lines: Vec::new(),
        }
    }

    fn note(&mut self, step: impl std::fmt::Display) {
        let line = format!("{:?} {step}", self.start.elapsed());
        tracing::info!("{line}");
        self.lines.push(line);
    }
}

/// A simulation's log: every event of the agents, to debug level, each line stamped with
/// the simulated time.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stamps log lines with the time since the simulation started, in simulated time.
struct SimTime(tokio::time::Instant);

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:>12?}", self.0.elapsed())
    }
}

/// Runs `scenario` for `seed` on a runtime of one thread whose time is simulated (it
/// jumps to the next timer whenever every task waits), so that hours of pairing rounds
/// take milliseconds. With `log`, also returns the agents' log. A failure names the seed
/// to replay.
fn simulate<T>(seed: u64, log: bool, scenario: impl AsyncFnOnce(u64) -> T) -> (T, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let shown = std::env::var_os("SIM_LOG").is_some();
    let log = log || shown;
    let lines = Log::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let _logging = log.then(|| {
                let lines = lines.clone();
                tracing::subscriber::set_default(
                    tracing_subscriber::fmt()
                        .with_env_filter("tandem_agent=debug")
                        .with_timer(SimTime(tokio::time::Instant::now()))
                        .with_ansi(false)
                        .with_writer(move || lines.clone())
                        .finish(),
                )
            });
            scenario(seed).await
        })
    }));
    let lines = String::from_utf8_lossy(&lines.0.lock()).into_owned();
    if shown {
        eprintln!("--- the log of seed {seed}\n{lines}");
    }
    let outcome = outcome.unwrap_or_else(|panic| {
        eprintln!(
            "failed with seed {seed}: replay it with SIM_SEED={seed} (SIM_LOG=1 prints its log)"
        );
        std::panic::resume_unwind(panic)
    });
    (outcome, lines)
}

/// Fails unless two runs of `seed` logged the same lines at the same simulated times,
/// naming the first line where they part.
fn assert_replayed(seed: u64, first: &str, second: &str) {
    let (first, second): (Vec<_>, Vec<_>) = (first.lines().collect(), second.lines().collect());
    let parted = first
        .iter()
        .zip(&second)
        .position(|(a, b)| a != b)
        .or_else(|| (first.len() != second.len()).then(|| first.len().min(second.len())));
    if let Some(at) = parted {
        let around = |log: &[&str]| log[at.saturating_sub(3)..(at + 2).min(log.len())].join("\n");
        panic!(
            "seed {seed} did not replay: the runs part at line {at} of {}:\n--- first run\n{}\n--- second run\n{}",
            first.len(),
            around(&first),
            around(&second)
        );
    }
}

/// Agents join in an order and at moments the seed picks, over two subnets, some killed
/// as they join; whatever the order, every live agent ends in a mutual pair but one, and
/// no agent is ever in two pairs. Returns what happened, in simulated time, to compare
/// two runs of one seed.
async fn seeded_joins(seed: u64) -> Vec<String> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let n = rng.random_range(2..=8);
    let mut order = ids(n);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut sim = Sim::new();
    let mut trace = Trace::new();
    for id in &order {
        let subnet = if rng.random_bool(0.5) {
            "10.1.0.0/24"
        } else {
            "10.2.0.0/24"
        };
        sim.join(id, subnet);
        tokio::time::sleep(ROUND * rng.random_range(0..8)).await;
        sim.assert_no_agent_in_two_pairs();
        trace.note(format!("{id} joined {subnet}: {:?}", sim.link_summaries()));
        // Now and then an agent dies as soon as it has joined.
        if sim.agents.len() > 2 && rng.random_bool(0.15) {
            sim.kill(id);
            trace.note(format!("killed {id}"));
        }
    }
    sim.settle(&format!("seed {seed}: {order:?} joined")).await;
    trace.note(format!("settled: {:?}", sim.links()));
    trace.lines
}

/// Plays `scenario` for every seed (200 in CI, `SIM_SEEDS` for more); every tenth (and a
/// seed given alone) is played twice with the agents' log captured, and the two runs
/// must agree on every step and every log line, at the same simulated time: a seed
/// replays its run.
fn play_seeds(scenario: impl AsyncFn(u64) -> Vec<String> + Copy) {
    let seeds = seeds();
    let alone = seeds.len() == 1;
    for seed in seeds {
        if alone || seed % 10 == 1 {
            let (trace, log) = simulate(seed, true, scenario);
            let (again, relog) = simulate(seed, true, scenario);
            assert!(!log.is_empty(), "seed {seed}: the agents logged nothing");
            assert_eq!(trace, again, "seed {seed} replayed");
            assert_replayed(seed, &log, &relog);
        } else {
            simulate(seed, false, scenario);
        }
    }
}

#[test]
fn agents_pair_in_every_seeded_join_order_on_simulated_time() {
    play_seeds(seeded_joins);
}

/// A simulation whose multicast (in memory) loses up to `drop` of the datagrams, and
/// doubles and reorders up to `other` of them, at rates `rng` picks.
fn lossy(rng: &mut rand::rngs::SmallRng, seed: u64, drop: f64, other: f64) -> (Sim, FaultRates) {
    use rand::RngExt;
    let rates = FaultRates {
        drop: rng.random_range(0.0..drop),
        duplicate: rng.random_range(0.0..other),
        reorder: rng.random_range(0.0..other),
    };
    let faults = Faults::new(rates, seed);
    (
        Sim::with(Stream::Memory, Datagrams::Memory, Some(faults)),
        rates,
    )
}

/// A pair in one subnet replicating by multicast that loses, doubles and reorders
/// datagrams at rates the seed picks, with writers on both sides while the seed cuts and
/// heals their link. Every write acknowledged by the partner (not given up on after the
/// sync timeout) is on the partner when acknowledged; once healed, both sides hold every
/// write, each push once. Returns what happened, in simulated time.
async fn seeded_faults(seed: u64) -> Vec<String> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mut sim, rates) = lossy(&mut rng, seed, 0.3, 0.2);
    sim.join("a", "10.1.0.0/24");
    sim.join("b", "10.1.0.0/24");
    sim.settle(&format!("seed {seed}: a pair")).await;
    sim.eventually(&format!("seed {seed}: multicast in use"), |sim| {
        ["a", "b"]
            .iter()
            .all(|side| sim.transport(side) == Some(ReplTransport::Multicast))
    })
    .await;
    let mut trace = Trace::new();
    trace.note(format!("{rates:?}"));
    let mut cut = false;
    let mut pushed = [0usize; 2];
    for step in 0..rng.random_range(20..80) {
        match rng.random_range(0..10) {
            0 if !cut => {
                sim.cut("a", "b");
                cut = true;
                trace.note("cut");
            }
            1 if cut => {
                sim.heal("a", "b");
                cut = false;
                trace.note("healed");
            }
            2 => tokio::time::sleep(ROUND * rng.random_range(1..20)).await,
            _ => {
                let side = rng.random_range(0..2);
                let (on, other) = [("a", "b"), ("b", "a")][side];
                let key = format!("{on}-{step}");
                let paired = sim.links()[on].is_some();
                let timeouts = sim.sync_timeouts(on);
                sim.set(on, &key, &key).await;
                sim.rpush(on, &format!("log-{on}"), &key).await;
                pushed[side] += 1;
                // Acknowledged by the partner, not given up on: the partner has it.
                if paired && sim.links()[on].is_some() && sim.sync_timeouts(on) == timeouts {
                    assert_eq!(
                        sim.get(other, &key).as_deref(),
                        Some(key.as_bytes()),
                        "seed {seed}: {key} acknowledged before {other} had it"
                    );
                }
                trace.note(format!(
                    "{key} by {:?}: {:?}",
                    sim.transport(on),
                    sim.link_summaries()
                ));
            }
        }
    }
    if cut {
        sim.heal("a", "b");
    }
    sim.settle(&format!("seed {seed}: healed")).await;
    sim.eventually(&format!("seed {seed}: both hold every write"), |sim| {
        ["a", "b"].iter().all(|side| {
            sim.list_len(side, "log-a") == pushed[0] && sim.list_len(side, "log-b") == pushed[1]
        })
    })
    .await;
    trace.note("converged");
    trace.lines
}

#[test]
fn writes_survive_seeded_loss_and_partitions_on_simulated_time() {
    play_seeds(seeded_faults);
}

/// Four to six agents under a seeded schedule of overlapping faults, with a writer on a
/// running agent at most steps: kills (of a paired agent between its writes, of a
/// survivor while it sends its snapshot) and restarts under the same id with an empty
/// store, partitions between any two agents (partners or not), pauses of up to 3 s,
/// slow partners, and multicast that loses, doubles and reorders. Each write is a
/// `SET` of a key of its own and an `RPUSH` of it to its agent's log, in one hold.
///
/// Checked: a write the partner acknowledged is on the partner when acknowledged; once
/// the faults end, no agent is in two pairs, every acknowledged write is still on every
/// agent that held it and is still running, partners agree on every acknowledged write
/// and every log, and no log holds an item twice (a push applied twice). (Meanwhile an
/// agent held up, slow or paused, may still count on a link its partner has given up,
/// until it runs again: it acknowledges nothing through it.) Returns what happened, in
/// simulated time.
async fn seeded_nemesis(seed: u64) -> Vec<String> {
    use rand::{RngExt, SeedableRng};
    use std::collections::BTreeSet;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mut sim, rates) = lossy(&mut rng, seed, 0.1, 0.1);
    let n = rng.random_range(4..=6);
    let subnets = ["10.1.0.0/24", "10.2.0.0/24"];
    let mut subnet_of = BTreeMap::new();
    for id in ids(n) {
        let subnet = subnets[rng.random_range(0..2)];
        subnet_of.insert(id.clone(), subnet);
        sim.join(&id, subnet);
    }
    sim.settle(&format!("seed {seed}: {n} agents")).await;
    let start = tokio::time::Instant::now();
    let mut trace = Trace::new();
    trace.note(format!("{n} agents, {rates:?}"));
    // Each acknowledged write's key, with the agents that held it then and still run.
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dead: Vec<String> = Vec::new();
    // Paused or slow agents take no writes until then.
    let mut busy_until: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut last_fault_ends = start;
    for step in 0..rng.random_range(40..120) {
        let now = tokio::time::Instant::now();
        let live: Vec<String> = sim.agents.keys().cloned().collect();
        let idle: Vec<String> = live
            .iter()
            .filter(|id| busy_until.get(*id).is_none_or(|until| *until <= now))
            .cloned()
            .collect();
        let pick = |rng: &mut rand::rngs::SmallRng, among: &[String]| {
            among[rng.random_range(0..among.len())].clone()
        };
        let event = match rng.random_range(0..24) {
            0 if live.len() > 2 => {
                let victim = pick(&mut rng, &live);
                sim.kill(&victim);
                for holders in acked.values_mut() {
                    holders.remove(&victim);
                }
                busy_until.remove(&victim);
                dead.push(victim.clone());
                format!("killed {victim}")
            }
            1 if !dead.is_empty() => {
                let id = dead.swap_remove(rng.random_range(0..dead.len()));
                // A process takes a while to start: its clock is past the versions of
                // the incarnation before (a clock stepped back across a restart could
                // repeat them; see docs/replication.md).
                let time = ROUND * rng.random_range(1..25);
                tokio::time::sleep(time).await;
                sim.join(&id, subnet_of[&id]);
                format!("restarted {id} after {time:?}")
            }
            2 | 3 => {
                let a = pick(&mut rng, &live);
                let b = pick(&mut rng, &live);
                if a == b {
                    continue;
                }
                sim.cut(&a, &b);
                format!("cut {a} from {b}")
            }
            4 => {
                sim.network.heal_all();
                "healed every cut".into()
            }
            5 | 6 if !idle.is_empty() => {
                let id = pick(&mut rng, &idle);
                let time = ROUND * rng.random_range(1..150);
                let pause = rng.random_bool(0.5);
                if pause {
                    sim.pause(&id, time);
                } else {
                    sim.slow_down(&id, time);
                }
                busy_until.insert(id.clone(), now + time);
                last_fault_ends = last_fault_ends.max(now + time);
                format!(
                    "{} {id} for {time:?}",
                    if pause { "paused" } else { "slowed" }
                )
            }
            7 | 8 => {
                let time = ROUND * rng.random_range(1..30);
                tokio::time::sleep(time).await;
                format!("slept {time:?}")
            }
            _ if !idle.is_empty() => {
                let on = pick(&mut rng, &idle);
                let key = format!("{on}-{step}");
                let before = sim.links()[&on].clone();
                let replicated = sim.write(&on, &key, &format!("log-{on}")).await;
                let after = sim.links().get(&on).cloned().flatten();
                let mut holders = BTreeSet::from([on.clone()]);
                if replicated == Some(Replicated::Acked)
                    && let Some(partner) = before.filter(|p| after.as_ref() == Some(p))
                {
                    assert_eq!(
                        sim.get(&partner, &key).as_deref(),
                        Some(key.as_bytes()),
                        "seed {seed}: {key} acknowledged before {partner} had it"
                    );
                    holders.insert(partner);
                }
                acked.insert(key.clone(), holders);
                format!("{key} on {on}: {replicated:?}")
            }
            _ => continue,
        };
        trace.note(format!("{event}: {:?}", sim.link_summaries()));
    }
    sim.network.heal_all();
    tokio::time::sleep_until(last_fault_ends).await;
    sim.settle(&format!("seed {seed}: after the faults")).await;
    let logs: Vec<String> = ids(n).iter().map(|id| format!("log-{id}")).collect();
    sim.until_none(&format!("seed {seed}: partners agree"), |sim| {
        let lost = acked.iter().find_map(|(key, holders)| {
            let lost_by = holders
                .iter()
                .find(|h| sim.get(h, key).as_deref() != Some(key.as_bytes()))?;
            Some(format!("{lost_by} lost {key}"))
        });
        let links = sim.links();
        let mut pairs = links
            .iter()
            .filter_map(|(a, b)| Some((a, b.as_ref()?)))
            .filter(|(a, b)| a < b);
        lost.or_else(|| {
            pairs.find_map(|(a, b)| {
                let key = acked.keys().find(|key| sim.get(a, key) != sim.get(b, key));
                let log = logs.iter().find(|log| sim.list(a, log) != sim.list(b, log));
                match (key, log) {
                    (Some(key), _) => Some(format!(
                        "{a} and {b} differ on {key}: {:?} and {:?}",
                        sim.get(a, key),
                        sim.get(b, key)
                    )),
                    (None, Some(log)) => Some(format!(
                        "{a} and {b} differ on {log}: {:?} and {:?}",
                        sim.list(a, log),
                        sim.list(b, log)
                    )),
                    (None, None) => None,
                }
            })
        })
    })
    .await;
    for id in sim.agents.keys() {
        for log in &logs {
            let items = sim.list(id, log);
            let unique: BTreeSet<_> = items.iter().collect();
            assert_eq!(
                unique.len(),
                items.len(),
                "seed {seed}: a push applied twice in {log} on {id}: {items:?}"
            );
        }
    }
    trace.note("converged");
    trace.lines
}

#[test]
fn acknowledged_writes_survive_a_seeded_nemesis_on_simulated_time() {
    play_seeds(seeded_nemesis);
}
