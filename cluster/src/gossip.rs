//! The gossip node: this process as one chitchat member, publishing its [`NodeAdvert`] and
//! reading everyone else's.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
};
use tandem_common::config::GossipConfig;
use tandem_common::member::{Member, newest_incarnations};
use tandem_common::schema::{HaSwitch, NodeAdvert, NodeState, Role};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::names;
use crate::transport::{MeteredTransport, SealedTransport};

/// Heartbeat intervals longer than this are not used to estimate a node's mean interval
/// (a long pause, e.g. a stopped VM, should not teach the detector to be lenient).
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How many heartbeat intervals the failure detector averages over.
const SAMPLING_WINDOW: usize = 1_000;
/// How often a node still looking for its seeds says so.
const JOINING_REMINDER: Duration = Duration::from_secs(10);

/// Where and how this node gossips.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    pub node_id: String,
    pub cluster: String,
    /// UDP address to bind.
    pub listen_addr: SocketAddr,
    /// UDP address other nodes send to.
    pub advertise_addr: SocketAddr,
    /// Seeds as configured (`HOST:PORT`); chitchat resolves them again while running.
    pub seeds: Vec<String>,
    pub tuning: GossipConfig,
    /// Seals and opens every gossip datagram.
    pub keyring: std::sync::Arc<crate::keyring::Keyring>,
}

/// Gossip could not start.
#[derive(Debug, thiserror::Error)]
#[error("gossip: {message}")]
pub struct GossipError {
    addr: SocketAddr,
    message: String,
}

/// A handle to this process's gossip membership. Cheap to clone.
#[derive(Clone)]
pub struct GossipNode {
    inner: Arc<Inner>,
}

struct Inner {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: Mutex<Option<ChitchatHandle>>,
    advert: Mutex<NodeAdvert>,
    self_id: ChitchatId,
    cluster: String,
    seeds: Vec<String>,
    tuning: GossipConfig,
}

impl GossipNode {
    /// Joins the cluster: binds the gossip socket and starts gossiping `advert`.
    ///
    /// # Errors
    /// When the gossip socket cannot be bound.
    pub async fn start(settings: GossipSettings, advert: NodeAdvert) -> Result<Self, GossipError> {
        let transport = SealedTransport::new(settings.keyring.clone());
        Self::start_on(settings, advert, transport).await
    }

    /// Joins the cluster over `transport` (metered here) instead of sealed UDP: for
    /// simulations of many nodes in one process.
    ///
    /// # Errors
    /// When the transport cannot open the gossip address.
    pub async fn start_on(
        settings: GossipSettings,
        advert: NodeAdvert,
        transport: impl Transport,
    ) -> Result<Self, GossipError> {
        // A restarted node must be a new incarnation: chitchat ignores updates from a node
        // that comes back with the generation it had before.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let self_id = ChitchatId::new(
            settings.node_id.clone(),
            generation,
            settings.advertise_addr,
        );
        let tuning = settings.tuning.clone();
        let config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: settings.cluster.clone(),
            gossip_interval: tuning.gossip_interval,
            listen_addr: settings.listen_addr,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: tuning.phi_threshold,
                sampling_window_size: SAMPLING_WINDOW,
                max_interval: MAX_HEARTBEAT_INTERVAL,
                // Before a node's own heartbeat rhythm is known, assume it gossips at our
                // pace; chitchat's 5 s default makes the first detection very slow.
                initial_interval: tuning.gossip_interval,
                dead_node_grace_period: tuning.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: tuning.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let key_values = advert
            .to_key_values()
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        let transport = MeteredTransport::new(transport);
        let handle = chitchat::spawn_chitchat(config, key_values, &transport)
            .await
            .map_err(|err| GossipError {
                addr: settings.listen_addr,
                message: format!("{err:#}"),
            })?;
        info!(
            node_id = %self_id.node_id,
            generation,
            listen = %settings.listen_addr,
            advertise = %settings.advertise_addr,
            seeds = ?settings.seeds,
            "gossip started"
        );
        Ok(GossipNode {
            inner: Arc::new(Inner {
                chitchat: handle.chitchat(),
                handle: Mutex::new(Some(handle)),
                advert: Mutex::new(advert),
                self_id,
                cluster: settings.cluster,
                seeds: settings.seeds,
                tuning,
            }),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.self_id.node_id
    }

    /// The gossip address other nodes reach this node at (its IP is the node's address).
    pub fn advertise_addr(&self) -> SocketAddr {
        self.inner.self_id.gossip_advertise_addr
    }

    pub fn generation(&self) -> u64 {
        self.inner.self_id.generation_id
    }

    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    pub fn tuning(&self) -> &GossipConfig {
        &self.inner.tuning
    }

    /// What this node currently advertises.
    pub fn advert(&self) -> NodeAdvert {
        self.inner.advert.lock().expect("advert lock").clone()
    }

    /// Changes this node's advertisement and publishes the keys that changed.
    pub async fn update(&self, change: impl FnOnce(&mut NodeAdvert)) {
        let advert = {
            let mut advert = self.inner.advert.lock().expect("advert lock");
            change(&mut advert);
            advert.clone()
        };
        let mut chitchat = self.inner.chitchat.lock().await;
        let own = chitchat.self_node_state();
        for (key, value) in advert.to_key_values() {
            // chitchat only bumps the version for values that actually change.
            own.set(key, value);
        }
    }

    /// Every known node (newest incarnation of each id), as this node sees it now. A node
    /// whose protocol this one cannot work with carries the reason in `problem`.
    pub async fn members(&self) -> Vec<Member> {
        let own = self.advert().protocol;
        let chitchat = self.inner.chitchat.lock().await;
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let members = chitchat.node_states().iter().map(|(id, state)| {
            let advert = NodeAdvert::from_lookup(|key| state.get(key));
            let mut member = Member::new(
                &id.node_id,
                id.generation_id,
                id.gossip_advertise_addr.to_string(),
                live.contains(id),
                advert,
            );
            if let Some(reason) = member.protocol.and_then(|theirs| own.refusal(theirs)) {
                member.problem = Some(format!("not worked with: {reason}"));
            }
            member
        });
        newest_incarnations(members)
    }

    /// The ids of the nodes this node holds live now (itself included); cheaper than
    /// [`members`](Self::members) where only liveness matters.
    pub async fn live_ids(&self) -> HashSet<Arc<str>> {
        let chitchat = self.inner.chitchat.lock().await;
        chitchat.live_nodes().map(|id| id.node_id.clone()).collect()
    }

    /// The cluster-wide HA switch as this node knows it (the newest it has seen).
    pub fn ha(&self) -> HaSwitch {
        self.advert().ha
    }

    /// Sets the cluster-wide HA switch; gossip carries it to every node, where the newest
    /// setting wins. Returns the switch as set.
    pub async fn set_ha(&self, on: bool) -> HaSwitch {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let mut set = HaSwitch { on, set_at_ms: now };
        self.update(|advert| {
            // Newer than what this node has seen, even if its clock is behind.
            set.set_at_ms = set.set_at_ms.max(advert.ha.set_at_ms + 1);
            advert.ha = set;
        })
        .await;
        info!(
            ha = if on { "on" } else { "off" },
            set_at_ms = set.set_at_ms,
            "HA switch set"
        );
        set
    }

    /// Leaves the cluster: advertises `leaving`, lets two gossip rounds carry it, stops.
    ///
    /// chitchat has no leave message; peers that saw `leaving` stop sending users here at
    /// once, the others find out through the failure detector.
    pub async fn leave(&self) {
        self.update(|advert| advert.state = NodeState::Leaving)
            .await;
        info!("leaving the cluster");
        tokio::time::sleep(self.inner.tuning.gossip_interval * 2).await;
        self.halt().await;
    }

    /// Stops gossiping at once without telling anyone: to its peers, as if the node died.
    pub async fn halt(&self) {
        let handle = self.inner.handle.lock().expect("handle lock").take();
        if let Some(handle) = handle
            && let Err(err) = handle.shutdown().await
        {
            warn!(error = %err, "gossip did not stop cleanly");
        }
    }

    /// Watches membership every gossip round: logs joins and deaths, keeps the membership
    /// gauges current, and turns this node `ready` once it is in contact with the cluster.
    pub fn spawn_watch(&self) -> JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move { node.watch().await })
    }

    async fn watch(self) {
        let role = self.advert().role;
        metrics::gauge!(
            names::NODE_INFO,
            "node_id" => self.node_id().to_string(),
            "role" => role.as_str(),
            "version" => self.advert().version,
        )
        .set(1.0);
        let mut ticker = tokio::time::interval(self.inner.tuning.gossip_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: BTreeMap<(String, u64), bool> = BTreeMap::new();
        let mut refused: HashSet<(String, u64)> = HashSet::new();
        let mut joining_since = tokio::time::Instant::now();
        loop {
            ticker.tick().await;
            let members = self.members().await;
            record_membership_gauges(&members);
            let current: BTreeMap<(String, u64), bool> = members
                .iter()
                .map(|m| ((m.id.clone(), m.generation), m.live))
                .collect();
            for ((id, generation), live) in &current {
                let was_live = previous.get(&(id.clone(), *generation)).copied();
                match (was_live, live) {
                    (None | Some(false), true) if id.as_str() != self.node_id() => {
                        info!(node = %id, generation, "member is live");
                        metrics::counter!(names::MEMBER_EVENTS, "event" => "joined").increment(1);
                    }
                    (Some(true), false) => {
                        warn!(node = %id, generation, "member is dead");
                        metrics::counter!(names::MEMBER_EVENTS, "event" => "died").increment(1);
                    }
                    _ => {}
                }
            }
            previous = current;
            let protocol = self.advert().protocol;
            for member in &members {
                let refusal = member.protocol.and_then(|theirs| protocol.refusal(theirs));
                if let Some(reason) = refusal
                    && refused.insert((member.id.clone(), member.generation))
                {
                    warn!(
                        node = %member.id,
                        %reason,
                        "refusing a node of an incompatible protocol: it is neither paired \
                         with nor routed to"
                    );
                    metrics::counter!(names::MEMBER_EVENTS, "event" => "refused").increment(1);
                }
            }

            // The newest HA switch anyone advertises wins; adopting it passes it on.
            let newest = HaSwitch::newest(members.iter().filter_map(|m| m.ha));
            let own = self.advert().ha;
            if HaSwitch::newest([own, newest]) != own {
                info!(
                    ha = if newest.on { "on" } else { "off" },
                    set_at_ms = newest.set_at_ms,
                    "the cluster-wide HA switch changed"
                );
                self.update(|advert| advert.ha = newest).await;
            }
            metrics::gauge!(names::HA_ON).set(if self.ha().on { 1.0 } else { 0.0 });

            let state = self.advert().state;
            for known in [
                NodeState::Joining,
                NodeState::Syncing,
                NodeState::Ready,
                NodeState::Draining,
                NodeState::Leaving,
            ] {
                let value = if known == state { 1.0 } else { 0.0 };
                metrics::gauge!(names::NODE_STATE, "state" => known.as_str()).set(value);
            }
            if state == NodeState::Joining {
                let others_live = members
                    .iter()
                    .filter(|m| m.live && m.id != self.node_id())
                    .count();
                if self.inner.seeds.is_empty() || others_live > 0 {
                    info!(members = members.len(), live_peers = others_live, "ready");
                    self.update(|advert| advert.state = NodeState::Ready).await;
                } else if joining_since.elapsed() >= JOINING_REMINDER {
                    warn!(seeds = ?self.inner.seeds, "no seed has answered yet; still trying");
                    joining_since = tokio::time::Instant::now();
                }
            }
        }
    }
}

fn record_membership_gauges(members: &[Member]) {
    let roles = Role::ALL.iter().map(|role| Some(*role)).chain([None]);
    for role in roles {
        for live in [true, false] {
            let count = members
                .iter()
                .filter(|m| m.role == role && m.live == live)
                .count();
            metrics::gauge!(
                names::MEMBERS,
                "role" => role.map_or("unknown", Role::as_str),
                "liveness" => if live { "live" } else { "dead" },
            )
            .set(count as f64);
        }
    }
}
