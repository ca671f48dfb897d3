//! The gossip key schema: every key a Tandem node publishes, and the typed values behind them.
//!
//! Gossip values are short strings (chitchat keeps one node's state well under a datagram).
//! This module is the only place that knows their spelling: the rest of the code reads and
//! writes a [`NodeAdvert`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The gossip keys. Nothing outside this module spells them.
pub mod keys {
    /// `agent` or `balancer`.
    pub const ROLE: &str = "role";
    /// Lifecycle state, see [`super::NodeState`].
    pub const STATE: &str = "state";
    /// URL the balancer sends this node's users to (agents only).
    pub const APP: &str = "app";
    /// QUIC replication address (agents only).
    pub const REPL: &str = "repl";
    /// The node's subnet (CIDR) and whether it can multicast, see [`super::Subnet`].
    pub const SUBNET: &str = "subnet";
    /// Partner node id and pair epoch, empty when unpaired, see [`super::PartnerRef`].
    pub const PARTNER: &str = "partner";
    /// Number of primary sessions held.
    pub const SESSIONS: &str = "sessions";
    /// The cluster-wide HA switch as this node last saw it, see [`super::HaSwitch`].
    pub const HA: &str = "ha";
    /// Software version.
    pub const VERSION: &str = "version";
    /// Admin HTTP address (health, members, metrics).
    pub const ADMIN: &str = "admin";
    /// `yes` while an agent's writes are not safely on a partner (no partner, or the
    /// partner is not keeping up).
    pub const UNPROTECTED: &str = "unprotected";
    /// How an agent's writes reach its partner (`quic` or `multicast`), empty when
    /// unpaired, see [`super::ReplTransport`].
    pub const TRANSPORT: &str = "transport";
    /// The protocol the node speaks, see [`super::Protocol`].
    pub const PROTOCOL: &str = "protocol";
    /// Agents: write batches sent to the partner and not yet acknowledged.
    pub const LAG: &str = "lag";
    /// Agents: progress of the snapshot being sent to a new partner, see
    /// [`super::SyncProgress`]; empty when none is being sent.
    pub const SNAPSHOT: &str = "snapshot";

    /// Every key, in the order they are published.
    pub const ALL: [&str; 15] = [
        ROLE,
        STATE,
        APP,
        REPL,
        SUBNET,
        PARTNER,
        SESSIONS,
        HA,
        VERSION,
        ADMIN,
        UNPROTECTED,
        TRANSPORT,
        PROTOCOL,
        LAG,
        SNAPSHOT,
    ];
}

/// A value in gossip that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gossip key `{key}`: invalid value {value:?}: {reason}")]
pub struct SchemaError {
    pub key: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl SchemaError {
    fn new(key: &'static str, value: &str, reason: &'static str) -> Self {
        SchemaError {
            key,
            value: value.to_string(),
            reason,
        }
    }
}

/// What a process is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Balancer,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Agent, Role::Balancer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Balancer => "balancer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "balancer" => Ok(Role::Balancer),
            _ => Err(SchemaError::new(
                keys::ROLE,
                s,
                "expected agent or balancer",
            )),
        }
    }
}

/// Lifecycle state a node advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Started, not yet in contact with the cluster.
    Joining,
    /// Receiving a snapshot from a new partner.
    Syncing,
    /// Serving.
    Ready,
    /// Taking no new users; existing users move to the partner.
    Draining,
    /// About to stop.
    Leaving,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Syncing => "syncing",
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Leaving => "leaving",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "joining" => NodeState::Joining,
            "syncing" => NodeState::Syncing,
            "ready" => NodeState::Ready,
            "draining" => NodeState::Draining,
            "leaving" => NodeState::Leaving,
            _ => {
                return Err(SchemaError::new(
                    keys::STATE,
                    s,
                    "expected joining, syncing, ready, draining or leaving",
                ));
            }
        })
    }
}

/// The partner a node advertises: `<node-id>@<epoch>`.
///
/// The epoch increases with every new pair a node forms, so a stale advertisement of an
/// old pair is told apart from the current one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartnerRef {
    pub node_id: String,
    pub epoch: u64,
}

impl fmt::Display for PartnerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.epoch)
    }
}

impl FromStr for PartnerRef {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Node ids may contain '@' (they are free text); the epoch never does.
        let (node_id, epoch) = s
            .rsplit_once('@')
            .ok_or_else(|| SchemaError::new(keys::PARTNER, s, "expected <node-id>@<epoch>"))?;
        if node_id.is_empty() {
            return Err(SchemaError::new(keys::PARTNER, s, "empty node id"));
        }
        let epoch = epoch
            .parse()
            .map_err(|_| SchemaError::new(keys::PARTNER, s, "epoch is not a number"))?;
        Ok(PartnerRef {
            node_id: node_id.to_string(),
            epoch,
        })
    }
}

/// The cluster-wide HA switch as one node last saw it: `on@<ms>` or `off@<ms>`.
///
/// The newest timestamp wins when nodes disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HaSwitch {
    pub on: bool,
    /// Milliseconds since the Unix epoch when the switch was last set; 0 for the default.
    pub set_at_ms: u64,
}

impl Default for HaSwitch {
    fn default() -> Self {
        HaSwitch {
            on: true,
            set_at_ms: 0,
        }
    }
}

impl fmt::Display for HaSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = if self.on { "on" } else { "off" };
        write!(f, "{on}@{}", self.set_at_ms)
    }
}

impl FromStr for HaSwitch {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (on, at) = s
            .split_once('@')
            .ok_or_else(|| SchemaError::new(keys::HA, s, "expected on@<ms> or off@<ms>"))?;
        let on = match on {
            "on" => true,
            "off" => false,
            _ => return Err(SchemaError::new(keys::HA, s, "expected on or off")),
        };
        let set_at_ms = at
            .parse()
            .map_err(|_| SchemaError::new(keys::HA, s, "timestamp is not a number"))?;
        Ok(HaSwitch { on, set_at_ms })
    }
}

impl HaSwitch {
    /// The switch that wins among what several nodes saw: the newest; at equal times, off.
    pub fn newest(switches: impl IntoIterator<Item = HaSwitch>) -> HaSwitch {
        switches
            .into_iter()
            .max_by_key(|ha| (ha.set_at_ms, !ha.on))
            .unwrap_or_default()
    }
}

/// The protocol a node speaks (replication frames and gossip keys): `<major>.<minor>`.
///
/// Nodes interoperate when their majors are equal and their minors at most one apart: a
/// minor release only adds what the one before can do without, and speaks the lower
/// version to an older peer. Anything else is refused with the two versions named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Protocol {
    pub major: u16,
    pub minor: u16,
}

impl Protocol {
    /// What this build speaks.
    pub const CURRENT: Protocol = Protocol { major: 2, minor: 2 };
    /// The first that carries the script cache to the partner ([`Frame::Scripts`]).
    ///
    /// [`Frame::Scripts`]: crate::frame::Frame::Scripts
    pub const SCRIPTS: Protocol = Protocol { major: 2, minor: 1 };
    /// The first whose deltas name the version they build on ([`Mutation::base`]), that
    /// asks for whole values ([`Frame::Fetch`]), and whose anti-entropy sends versions
    /// before values ([`Frame::Versions`]).
    ///
    /// [`Mutation::base`]: crate::ops::Mutation::base
    /// [`Frame::Fetch`]: crate::frame::Frame::Fetch
    /// [`Frame::Versions`]: crate::frame::Frame::Versions
    pub const DELTA_BASES: Protocol = Protocol { major: 2, minor: 2 };
    /// What a node that does not say speaks (the first release).
    pub const FIRST: Protocol = Protocol { major: 1, minor: 0 };

    /// Whether a node speaking `self` and one speaking `other` work together.
    pub fn compatible(self, other: Protocol) -> bool {
        self.major == other.major && self.minor.abs_diff(other.minor) <= 1
    }

    /// What two compatible nodes speak to each other: the lower of the two.
    pub fn common(self, other: Protocol) -> Protocol {
        self.min(other)
    }

    /// Why a node speaking `self` refuses one speaking `other`, or `None` if it does not.
    pub fn refusal(self, other: Protocol) -> Option<String> {
        (!self.compatible(other)).then(|| {
            format!(
                "it speaks protocol {other} and this node {self}, which works only with \
                 {}.{}–{}.{}",
                self.major,
                self.minor.saturating_sub(1),
                self.major,
                self.minor.saturating_add(1)
            )
        })
    }
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol::CURRENT
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for Protocol {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SchemaError::new(keys::PROTOCOL, s, "expected <major>.<minor>");
        let (major, minor) = s.split_once('.').ok_or_else(err)?;
        Ok(Protocol {
            major: major.parse().map_err(|_| err())?,
            minor: minor.parse().map_err(|_| err())?,
        })
    }
}

/// How far the snapshot to a new partner has come: `<keys sent>/<keys in all>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SyncProgress {
    pub sent: u64,
    pub total: u64,
}

impl fmt::Display for SyncProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sent, self.total)
    }
}

impl FromStr for SyncProgress {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SchemaError::new(keys::SNAPSHOT, s, "expected <sent>/<total>");
        let (sent, total) = s.split_once('/').ok_or_else(err)?;
        Ok(SyncProgress {
            sent: sent.parse().map_err(|_| err())?,
            total: total.parse().map_err(|_| err())?,
        })
    }
}

/// How an agent's writes travel to its partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplTransport {
    /// The QUIC stream of the pair (mutual TLS): across subnets, or where multicast fails.
    Quic,
    /// UDP multicast inside the subnet, sealed; the QUIC stream carries the rest.
    Multicast,
}

impl fmt::Display for ReplTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplTransport::Quic => "quic",
            ReplTransport::Multicast => "multicast",
        })
    }
}

impl FromStr for ReplTransport {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(ReplTransport::Quic),
            "multicast" => Ok(ReplTransport::Multicast),
            _ => Err(SchemaError::new(
                keys::TRANSPORT,
                s,
                "expected quic or multicast",
            )),
        }
    }
}

/// The subnet a node sits in and whether it may replicate by multicast there:
/// `<cidr>` or `<cidr>;mcast`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subnet {
    /// The network in CIDR notation, e.g. `10.1.0.0/24`.
    pub cidr: String,
    pub multicast: bool,
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cidr)?;
        if self.multicast {
            f.write_str(";mcast")?;
        }
        Ok(())
    }
}

impl FromStr for Subnet {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (cidr, multicast) = match s.split_once(';') {
            Some((cidr, "mcast")) => (cidr, true),
            Some(_) => return Err(SchemaError::new(keys::SUBNET, s, "unknown flag after ';'")),
            None => (s, false),
        };
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| SchemaError::new(keys::SUBNET, s, "expected <address>/<prefix>"))?;
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| SchemaError::new(keys::SUBNET, s, "not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => {
                return Err(SchemaError::new(
                    keys::SUBNET,
                    s,
                    "prefix length out of range",
                ));
            }
        }
        Ok(Subnet {
            cidr: cidr.to_string(),
            multicast,
        })
    }
}

/// Everything one node publishes in gossip, typed.
///
/// A missing key reads as its default (an agent that has not yet published `partner` is
/// unpaired); a present key that does not parse is an error, so a node with a garbled
/// advertisement is reported rather than silently misread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdvert {
    pub role: Role,
    pub state: NodeState,
    pub app: Option<String>,
    pub repl: Option<String>,
    pub subnet: Option<Subnet>,
    pub partner: Option<PartnerRef>,
    pub sessions: u64,
    pub ha: HaSwitch,
    pub version: String,
    pub admin: Option<String>,
    /// Agents: whether writes are not safely on a partner.
    pub unprotected: bool,
    /// Agents: how writes reach the partner, while paired.
    pub transport: Option<ReplTransport>,
    pub protocol: Protocol,
    /// Agents: write batches not yet acknowledged by the partner.
    pub lag: u64,
    /// Agents: the snapshot being sent to a new partner.
    pub snapshot: Option<SyncProgress>,
}

impl NodeAdvert {
    /// A fresh advertisement for a process that has just started.
    pub fn new(role: Role, version: &str) -> Self {
        NodeAdvert {
            role,
            state: NodeState::Joining,
            app: None,
            repl: None,
            subnet: None,
            partner: None,
            sessions: 0,
            ha: HaSwitch::default(),
            version: version.to_string(),
            admin: None,
            unprotected: role == Role::Agent,
            transport: None,
            protocol: Protocol::CURRENT,
            lag: 0,
            snapshot: None,
        }
    }

    /// The key-value pairs to publish. Optional fields that are absent are published as
    /// empty strings so that clearing a value (e.g. losing a partner) reaches every node.
    pub fn to_key_values(&self) -> Vec<(&'static str, String)> {
        fn opt<T: ToString>(value: &Option<T>) -> String {
            value.as_ref().map(ToString::to_string).unwrap_or_default()
        }
        vec![
            (keys::ROLE, self.role.to_string()),
            (keys::STATE, self.state.to_string()),
            (keys::APP, opt(&self.app)),
            (keys::REPL, opt(&self.repl)),
            (keys::SUBNET, opt(&self.subnet)),
            (keys::PARTNER, opt(&self.partner)),
            (keys::SESSIONS, self.sessions.to_string()),
            (keys::HA, self.ha.to_string()),
            (keys::VERSION, self.version.clone()),
            (keys::ADMIN, opt(&self.admin)),
            (
                keys::UNPROTECTED,
                if self.unprotected { "yes" } else { "" }.to_string(),
            ),
            (keys::TRANSPORT, opt(&self.transport)),
            (keys::PROTOCOL, self.protocol.to_string()),
            (keys::LAG, self.lag.to_string()),
            (keys::SNAPSHOT, opt(&self.snapshot)),
        ]
    }

    /// Reads an advertisement from a node's key-values, as `get` returns them.
    ///
    /// # Errors
    /// [`SchemaError`] when `role` is missing or any present key does not parse.
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, SchemaError> {
        fn non_empty<'a>(get: &impl Fn(&str) -> Option<&'a str>, key: &str) -> Option<&'a str> {
            get(key).filter(|value| !value.is_empty())
        }
        fn parsed<'a, T: FromStr<Err = SchemaError>>(
            get: &impl Fn(&str) -> Option<&'a str>,
            key: &str,
        ) -> Result<Option<T>, SchemaError> {
            non_empty(get, key).map(str::parse).transpose()
        }
        let role = non_empty(&get, keys::ROLE)
            .ok_or_else(|| SchemaError::new(keys::ROLE, "", "missing"))?
            .parse()?;
        let count = |key: &'static str| match non_empty(&get, key) {
            None => Ok(0),
            Some(value) => value
                .parse()
                .map_err(|_| SchemaError::new(key, value, "not a number")),
        };
        Ok(NodeAdvert {
            role,
            state: parsed(&get, keys::STATE)?.unwrap_or(NodeState::Joining),
            app: non_empty(&get, keys::APP).map(str::to_string),
            repl: non_empty(&get, keys::REPL).map(str::to_string),
            subnet: parsed(&get, keys::SUBNET)?,
            partner: parsed(&get, keys::PARTNER)?,
            sessions: count(keys::SESSIONS)?,
            ha: parsed(&get, keys::HA)?.unwrap_or_default(),
            version: non_empty(&get, keys::VERSION).unwrap_or("").to_string(),
            admin: non_empty(&get, keys::ADMIN).map(str::to_string),
            unprotected: non_empty(&get, keys::UNPROTECTED) == Some("yes"),
            transport: parsed(&get, keys::TRANSPORT)?,
            protocol: parsed(&get, keys::PROTOCOL)?.unwrap_or(Protocol::FIRST),
            lag: count(keys::LAG)?,
            snapshot: parsed(&get, keys::SNAPSHOT)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn advert_of(map: &HashMap<String, String>) -> Result<NodeAdvert, SchemaError> {
        NodeAdvert::from_lookup(|key| map.get(key).map(String::as_str))
    }

    #[test]
    fn every_key_is_published_once() {
        let advert = NodeAdvert::new(Role::Agent, "1.2.3");
        let published: Vec<&str> = advert.to_key_values().iter().map(|(k, _)| *k).collect();
        assert_eq!(published, keys::ALL.to_vec());
    }

    #[test]
    fn full_advert_round_trips() {
        let advert = NodeAdvert {
            role: Role::Agent,
            state: NodeState::Ready,
            app: Some("http://10.0.0.5:8000".into()),
            repl: Some("10.0.0.5:7947".into()),
            subnet: Some(Subnet {
                cidr: "10.0.0.0/24".into(),
                multicast: true,
            }),
            partner: Some(PartnerRef {
                node_id: "web-2".into(),
                epoch: 7,
            }),
            sessions: 1234,
            ha: HaSwitch {
                on: false,
                set_at_ms: 1_700_000_000_000,
            },
            version: "0.1.0".into(),
            admin: Some("10.0.0.5:7951".into()),
            unprotected: true,
            transport: Some(ReplTransport::Multicast),
            protocol: Protocol { major: 1, minor: 3 },
            lag: 12,
            snapshot: Some(SyncProgress {
                sent: 3000,
                total: 100_000,
            }),
        };
        let map: HashMap<String, String> = advert
            .to_key_values()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(map[keys::PARTNER], "web-2@7");
        assert_eq!(map[keys::SUBNET], "10.0.0.0/24;mcast");
        assert_eq!(map[keys::HA], "off@1700000000000");
        assert_eq!(map[keys::TRANSPORT], "multicast");
        assert_eq!(map[keys::PROTOCOL], "1.3");
        assert_eq!(map[keys::SNAPSHOT], "3000/100000");
        assert_eq!(advert_of(&map).unwrap(), advert);
    }

    #[test]
    fn empty_values_read_as_absent() {
        let map = lookup(&[
            ("role", "balancer"),
            ("state", "ready"),
            ("partner", ""),
            ("app", ""),
            ("sessions", ""),
        ]);
        let advert = advert_of(&map).unwrap();
        assert_eq!(advert.role, Role::Balancer);
        assert_eq!(advert.partner, None);
        assert_eq!(advert.app, None);
        assert_eq!(advert.sessions, 0);
        assert_eq!(advert.ha, HaSwitch::default());
    }

    #[test]
    fn garbled_values_are_errors_naming_the_key() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[], "role"),
            (&[("role", "router")], "role"),
            (&[("role", "agent"), ("state", "asleep")], "state"),
            (&[("role", "agent"), ("partner", "web-2")], "partner"),
            (&[("role", "agent"), ("partner", "@3")], "partner"),
            (&[("role", "agent"), ("partner", "web-2@x")], "partner"),
            (&[("role", "agent"), ("sessions", "-1")], "sessions"),
            (&[("role", "agent"), ("ha", "maybe@1")], "ha"),
            (&[("role", "agent"), ("ha", "on")], "ha"),
            (&[("role", "agent"), ("protocol", "1")], "protocol"),
            (&[("role", "agent"), ("protocol", "1.x")], "protocol"),
            (&[("role", "agent"), ("lag", "many")], "lag"),
            (&[("role", "agent"), ("snapshot", "12")], "snapshot"),
            (&[("role", "agent"), ("subnet", "10.0.0.0")], "subnet"),
            (&[("role", "agent"), ("subnet", "10.0.0.0/33")], "subnet"),
            (&[("role", "agent"), ("subnet", "nonsense/8")], "subnet"),
            (
                &[("role", "agent"), ("subnet", "10.0.0.0/8;bcast")],
                "subnet",
            ),
        ];
        for (pairs, key) in table {
            let err = advert_of(&lookup(pairs)).unwrap_err();
            assert_eq!(err.key, *key, "{pairs:?}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn the_newest_ha_switch_wins_and_off_breaks_ties() {
        let at = |on, set_at_ms| HaSwitch { on, set_at_ms };
        assert_eq!(HaSwitch::newest([]), HaSwitch::default());
        assert_eq!(
            HaSwitch::newest([at(true, 5), at(false, 9), at(true, 7)]),
            at(false, 9)
        );
        assert_eq!(HaSwitch::newest([at(true, 9), at(false, 9)]), at(false, 9));
        assert_eq!(
            HaSwitch::newest([HaSwitch::default(), at(true, 1)]),
            at(true, 1)
        );
    }

    #[test]
    fn protocols_one_minor_apart_interoperate() {
        let v = |major, minor| Protocol { major, minor };
        let table = [
            (v(1, 0), v(1, 0), true),
            (v(1, 0), v(1, 1), true),
            (v(1, 4), v(1, 3), true),
            (v(1, 0), v(1, 2), false),
            (v(1, 0), v(2, 0), false),
            (v(2, 1), v(1, 1), false),
        ];
        for (a, b, ok) in table {
            assert_eq!(a.compatible(b), ok, "{a} with {b}");
            assert_eq!(b.compatible(a), ok, "{b} with {a}");
            assert_eq!(a.refusal(b).is_none(), ok);
        }
        assert_eq!(v(1, 4).common(v(1, 3)), v(1, 3));
        let refusal = v(1, 0).refusal(v(2, 0)).unwrap();
        assert!(
            refusal.contains("protocol 2.0") && refusal.contains("1.0"),
            "{refusal}"
        );
        assert_eq!("1.12".parse::<Protocol>().unwrap(), v(1, 12));
    }

    #[test]
    fn partner_ids_may_contain_at_signs() {
        let partner: PartnerRef = "ops@web-2@12".parse().unwrap();
        assert_eq!(partner.node_id, "ops@web-2");
        assert_eq!(partner.epoch, 12);
    }

    #[test]
    fn ipv6_subnets_parse() {
        let subnet: Subnet = "fd00::/64".parse().unwrap();
        assert!(!subnet.multicast);
        assert!("fd00::/129".parse::<Subnet>().is_err());
    }
}
