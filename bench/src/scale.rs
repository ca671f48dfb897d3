//! Gossip at scale: clusters of many agents, each a real [`GossipNode`] (chitchat with
//! Tandem's advertisement, failure detector settings and metering), measured for
//!
//! * formation: all nodes started at once, until every node holds every other live;
//! * traffic: bytes and messages each node sends per second in a settled cluster, where
//!   every agent republishes its session count each second as agents do;
//! * join: a new agent, until every node holds it live;
//! * death: a settled agent stops without a word, until no node holds it live.
//!
//! Over [`Transport::Memory`] all nodes run in one process over chitchat's in-memory
//! transport; run on a runtime with paused time, the clock only moves when every node is
//! idle, so the times are the protocol's own, as on hosts with a CPU each, however long
//! the simulation takes. [`Transport::Udp`] runs them over real sealed UDP on loopback
//! addresses in real time, where the nodes share this machine's cores.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chitchat::transport::ChannelTransport;
use metrics_exporter_prometheus::PrometheusHandle;
use tandem_cluster::gossip::{GossipNode, GossipSettings};
use tandem_cluster::keyring::{ClusterKey, Keyring};
use tandem_common::config::GossipConfig;
use tandem_common::schema::{NodeAdvert, NodeState, PartnerRef, ReplTransport, Role, Subnet};
use tokio::time::Instant;

/// How the simulated nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// chitchat's in-process channels (use with paused time).
    Memory,
    /// Sealed UDP on 127.x.y.z addresses, as agents gossip.
    Udp,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: usize,
    pub transport: Transport,
    pub interval: Duration,
    /// How long a settled cluster's traffic is measured.
    pub window: Duration,
}

/// The largest UDP payload over IPv4, as for the real transport.
const MAX_DATAGRAM: usize = 65_507;
/// How often the convergence of a change is checked.
const POLL: Duration = Duration::from_millis(20);
/// How long a change may take to reach every node before the run is called failed.
const GIVE_UP: Duration = Duration::from_secs(120);
/// The nodes every other node is given as seeds.
const SEEDS: usize = 3;
const GOSSIP_PORT: u16 = 7946;

/// What one cluster size measured, in seconds and per node per second.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub nodes: usize,
    pub formed: f64,
    pub join: f64,
    pub death: f64,
    pub bytes: f64,
    pub messages: f64,
}

/// Node `index`'s gossip address: 10.1.0.1 onwards in memory; 127.1.0.1 onwards over
/// UDP (all of 127/8 is local).
fn address(index: usize, transport: Transport) -> SocketAddr {
    let [_, _, high, low] = ((index as u32) + 1).to_be_bytes();
    let first = match transport {
        Transport::Memory => 10,
        Transport::Udp => 127,
    };
    SocketAddr::from((Ipv4Addr::new(first, 1, high, low), GOSSIP_PORT))
}

/// An agent's advertisement as a settled, paired agent publishes it.
fn agent_advert(index: usize) -> NodeAdvert {
    let addr = address(index, Transport::Memory);
    let mut advert = NodeAdvert::new(Role::Agent, env!("CARGO_PKG_VERSION"));
    advert.state = NodeState::Ready;
    advert.app = Some(format!("{}:8080", addr.ip()));
    advert.repl = Some(format!("{}:7947", addr.ip()));
    advert.admin = Some(format!("{}:7948", addr.ip()));
    advert.subnet = Some(Subnet {
        cidr: "10.1.0.0/16".to_string(),
        multicast: true,
    });
    advert.partner = Some(PartnerRef {
        node_id: node_id(index ^ 1),
        epoch: 1,
    });
    advert.unprotected = false;
    advert.transport = Some(ReplTransport::Multicast);
    advert.sessions = 10_000;
    advert
}

fn node_id(index: usize) -> String {
    format!("agent-{index:04}")
}

struct Cluster {
    kind: Transport,
    memory: ChannelTransport,
    keyring: Arc<Keyring>,
    tuning: GossipConfig,
    seeds: Vec<String>,
}

impl Cluster {
    async fn start(&self, index: usize) -> anyhow::Result<GossipNode> {
        let addr = address(index, self.kind);
        let settings = GossipSettings {
            node_id: node_id(index),
            cluster: "scale".to_string(),
            listen_addr: addr,
            advertise_addr: addr,
            seeds: self.seeds.clone(),
            tuning: self.tuning.clone(),
            keyring: self.keyring.clone(),
        };
        let advert = agent_advert(index);
        let node = match self.kind {
            Transport::Memory => GossipNode::start_on(settings, advert, self.memory.clone()).await,
            Transport::Udp => GossipNode::start(settings, advert).await,
        }
        .with_context(|| format!("node {index}"))?;
        // Agents republish their session count every second.
        let publisher = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                publisher.update(|advert| advert.sessions += 1).await;
            }
        });
        Ok(node)
    }
}

/// Waits until `done` holds for what every node in `nodes` sees live; returns the time
/// it took.
async fn until_all(
    what: &str,
    nodes: &[GossipNode],
    done: impl Fn(&HashSet<Arc<str>>) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for node in nodes {
            if !done(&node.live_ids().await) {
                all = false;
                break;
            }
        }
        if all {
            return Ok(start.elapsed());
        }
        if start.elapsed() > GIVE_UP {
            bail!("{what}: not seen by every node within {GIVE_UP:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The total of a counter across every node of the process.
fn counter(metrics: &PrometheusHandle, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Runs `scenario`; traffic is read from the process's metrics in `metrics`.
///
/// # Errors
/// A node cannot start, or a change does not reach every node within two minutes.
pub async fn measure(scenario: &Scenario, metrics: &PrometheusHandle) -> anyhow::Result<Outcome> {
    let n = scenario.nodes;
    let mut cluster = Cluster {
        kind: scenario.transport,
        memory: ChannelTransport::with_mtu(MAX_DATAGRAM),
        keyring: Arc::new(Keyring::new("scale", vec![ClusterKey::generate()])),
        tuning: GossipConfig {
            gossip_interval: scenario.interval,
            ..GossipConfig::default()
        },
        seeds: Vec::new(),
    };
    cluster.seeds = (0..SEEDS.min(n))
        .map(|i| address(i, scenario.transport).to_string())
        .collect();

    let started = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for index in 0..n {
        nodes.push(cluster.start(index).await?);
    }
    let all: Vec<String> = (0..n).map(node_id).collect();
    until_all("formation", &nodes, |live| {
        all.iter().all(|id| live.contains(id.as_str()))
    })
    .await?;
    let formed = started.elapsed();
    eprintln!("{n} nodes: every node holds every other live after {formed:.2?}");

    // Let the failure detectors learn the heartbeat rhythm, then measure the traffic.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bytes_before = counter(metrics, "tandem_gossip_bytes_sent_total");
    let messages_before = counter(metrics, "tandem_gossip_messages_sent_total");
    tokio::time::sleep(scenario.window).await;
    let per_node_second = |total: f64| total / n as f64 / scenario.window.as_secs_f64();
    let bytes = per_node_second(counter(metrics, "tandem_gossip_bytes_sent_total") - bytes_before);
    let messages =
        per_node_second(counter(metrics, "tandem_gossip_messages_sent_total") - messages_before);
    eprintln!("{n} nodes: {bytes:.0} bytes and {messages:.1} messages sent per node per second");

    let newcomer = cluster.start(n).await?;
    let newcomer_id = node_id(n);
    let join = until_all("join", &nodes, |live| live.contains(newcomer_id.as_str())).await?;
    eprintln!("{n} nodes: a new node is held live by every node after {join:.2?}");
    nodes.push(newcomer);

    let victim_index = n / 2;
    let victim = nodes.remove(victim_index);
    let victim_id = victim.node_id().to_string();
    victim.halt().await;
    let death = until_all("death", &nodes, |live| !live.contains(victim_id.as_str())).await?;
    eprintln!("{n} nodes: a dead node is held dead by every node after {death:.2?}");

    for node in &nodes {
        node.halt().await;
    }
    Ok(Outcome {
        nodes: n,
        formed: formed.as_secs_f64(),
        join: join.as_secs_f64(),
        death: death.as_secs_f64(),
        bytes,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_join_and_a_death_reach_every_node_and_traffic_is_counted() {
        static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();
        let metrics = METRICS.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap());
        let scenario = Scenario {
            nodes: 12,
            transport: Transport::Memory,
            interval: Duration::from_millis(200),
            window: Duration::from_secs(2),
        };
        let outcome = measure(&scenario, metrics).await.unwrap();
        assert_eq!(outcome.nodes, 12);
        // Every phase ended with every node agreeing (or `measure` failed), and took at
        // least a gossip round: the news travelled, nobody knew it in advance.
        for (what, seconds) in [
            ("formation", outcome.formed),
            ("join", outcome.join),
            ("death", outcome.death),
        ] {
            assert!(seconds >= 0.2, "{what} took {seconds} s, less than a round");
        }
        // Each node starts a round with up to three peers per interval and answers theirs.
        assert!(
            outcome.messages > 5.0,
            "{} messages per node per second",
            outcome.messages
        );
        assert!(
            outcome.bytes > 100.0 * outcome.messages,
            "{} bytes per node per second",
            outcome.bytes
        );
    }
}
