//! Configuration types of every component, with their documented defaults.
//!
//! These are plain data: the binary fills them from a TOML file, then `TANDEM_*` environment
//! variables, then flags. Field names are the TOML keys; the flag is the same name with
//! dashes (`gossip_addr` → `--gossip-addr`) and the variable the same name upper-cased with
//! the `TANDEM_` prefix (`TANDEM_GOSSIP_ADDR`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Default UDP port for gossip.
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Default TCP port for the admin HTTP endpoint.
pub const DEFAULT_ADMIN_PORT: u16 = 7951;
/// Default TCP port the balancer serves users on.
pub const DEFAULT_LISTEN_PORT: u16 = 8080;
/// Default cluster name.
pub const DEFAULT_CLUSTER: &str = "tandem";

/// Gossip and failure-detection tuning, shared by agents and balancers.
///
/// The defaults are tuned for a LAN: a node killed without warning is reported dead by the
/// others in about one second on a LAN (phi threshold × the mean interval at which its
/// heartbeat reaches us, plus a gossip round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GossipConfig {
    /// How often a node gossips with a few peers. Default `200ms`.
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Phi-accrual threshold above which a silent node is declared dead; the detection time
    /// is about this many mean heartbeat intervals. Default `8`.
    pub phi_threshold: f64,
    /// How long a dead node is remembered before it is forgotten. Default `15m`.
    #[serde(with = "humantime_serde")]
    pub dead_node_grace_period: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            dead_node_grace_period: Duration::from_secs(15 * 60),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings every cluster process (agent or balancer) has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster. Default: the host name.
    pub node_id: String,
    /// Cluster name; nodes of other clusters are ignored. Default `tandem`.
    pub cluster: String,
    /// UDP address gossip listens on. Default `0.0.0.0:7946`.
    pub gossip_addr: SocketAddr,
    /// Address other nodes reach this node's gossip at. Default: `gossip_addr`, with an
    /// unspecified IP replaced by the address of the interface that routes to the seeds.
    pub advertise_addr: Option<SocketAddr>,
    /// Seed nodes, `HOST:PORT` (host names are resolved, and resolved again while running).
    /// In the environment, a comma-separated list.
    #[serde(deserialize_with = "comma_separated")]
    pub join: Vec<String>,
    /// Admin HTTP address: health, members, metrics. Default `0.0.0.0:7951`.
    pub admin_addr: SocketAddr,
    /// Log format: `text` or `json`. Default `text`; the filter is `RUST_LOG`.
    pub log_format: LogFormat,
    #[serde(flatten)]
    pub gossip: GossipConfig,
    /// File with the cluster key(s) gossip is sealed with (`tandem keygen`), the primary
    /// first. Without a key, gossip is unsealed (and the process warns).
    pub gossip_key_file: Option<std::path::PathBuf>,
    /// The cluster key itself (base64), when no key file is given.
    pub gossip_key: Option<String>,
    /// File with the token that state-changing admin calls must carry
    /// (`Authorization: Bearer`). Without one they are accepted from loopback only.
    pub admin_token_file: Option<std::path::PathBuf>,
    /// How long a drain (SIGTERM, `tandem drain`) waits for the partner to confirm that
    /// it holds every session of this node before the node leaves anyway. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The protocol this node speaks: the current one, set otherwise only to rehearse an
    /// upgrade (a hidden flag; not in configuration files).
    #[serde(skip)]
    pub protocol: crate::schema::Protocol,
}

/// Default of [`NodeConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: String::new(),
            cluster: DEFAULT_CLUSTER.to_string(),
            gossip_addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_GOSSIP_PORT)),
            advertise_addr: None,
            join: Vec::new(),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)),
            log_format: LogFormat::Text,
            gossip: GossipConfig::default(),
            gossip_key_file: None,
            gossip_key: None,
            admin_token_file: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            protocol: crate::schema::Protocol::CURRENT,
        }
    }
}

/// Default TCP port of the agent's Redis-protocol endpoint.
pub const DEFAULT_RESP_PORT: u16 = 6380;
/// Default TCP port of the agent's HTTP session API.
pub const DEFAULT_API_PORT: u16 = 7950;
/// Default UDP port of the agent's QUIC replication endpoint.
pub const DEFAULT_REPL_PORT: u16 = 7947;

/// When a session write is acknowledged to the app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Once the partner has it (default): no acknowledged write is lost with one host.
    #[default]
    Sync,
    /// At once; the partner catches up from a queue.
    Async,
}

/// Whether partners in one subnet replicate by multicast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MulticastMode {
    /// Never: every write travels the pair's QUIC stream.
    Off,
    /// Join the subnet's group; a pair in one subnet probes it when it forms and uses it
    /// if the probe is answered, falling back to QUIC when it fails or degrades (default).
    #[default]
    Auto,
}

/// Default UDP port of the multicast group.
pub const DEFAULT_MULTICAST_PORT: u16 = 7948;

/// Configuration of `tandem agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    #[serde(flatten)]
    pub node: NodeConfig,
    /// URL balancers send this node's users to, e.g. `http://10.0.0.5:8000`.
    pub app_url: Option<String>,
    /// Redis-protocol endpoint for the app. Default `127.0.0.1:6380` (local apps only).
    pub resp_addr: SocketAddr,
    /// HTTP session API for the app. Default `127.0.0.1:7950` (local apps only).
    pub api_addr: SocketAddr,
    /// Serve the built-in demo app here (and send this node's users to it).
    pub demo_app: Option<SocketAddr>,
    /// File with the password RESP clients must give (`AUTH`), as Redis' `requirepass`.
    pub requirepass_file: Option<std::path::PathBuf>,
    /// File with the token HTTP session API calls must carry (`Authorization: Bearer`).
    pub api_token_file: Option<std::path::PathBuf>,
    /// Largest key, value, hash field or field value, in bytes. Default 1 MiB.
    pub max_value_bytes: u64,
    /// Memory for sessions, in bytes; writes past it fail with Redis' OOM error and nothing
    /// is evicted. Default: a quarter of the host's memory.
    pub max_memory_bytes: Option<u64>,
    /// Most keys held. Default 50,000,000.
    pub max_keys: u64,
    /// Databases the RESP endpoint offers (`SELECT 0` to `databases - 1`), each its own
    /// keyspace. Default 16, as Redis; at most 1,024.
    pub databases: usize,
    /// Most RESP clients connected at once; more are told so and closed, as Redis'
    /// `maxclients`. Default 10,000.
    pub max_clients: usize,
    /// QUIC replication endpoint (UDP). Default `0.0.0.0:7947`.
    pub repl_addr: SocketAddr,
    /// `sync` (default) or `async`.
    pub replication: ReplicationMode,
    /// `auto` (default) or `off`.
    pub multicast: MulticastMode,
    /// Multicast group (IPv4). Default: one in 239.0.0.0/8 derived from the cluster name.
    pub multicast_group: Option<std::net::Ipv4Addr>,
    /// UDP port of the multicast group. Default 7948.
    pub multicast_port: u16,
    /// How long a sync write waits for the partner before the agent goes unprotected.
    /// Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// How often partners compare digests of their stores and repair what differs.
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// Directory with the cluster CA (`ca.pem`) and this node's certificate
    /// (`<node-id>.pem`, `<node-id>.key`). A missing CA is generated, and a missing node
    /// certificate issued when `ca.key` is there. Default `tandem-tls`.
    pub tls_dir: std::path::PathBuf,
    /// How long a script may run before other clients are answered `BUSY` (and
    /// `SCRIPT KILL` may stop it), as Redis' `busy-reply-threshold`. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub script_time_limit: Duration,
    /// Memory the scripting interpreter may use (its cached scripts and what a running
    /// script allocates); a script that needs more fails, the agent goes on. Default
    /// 128 MiB.
    pub script_memory_bytes: u64,
    /// Worker threads of the agent's runtime. Default 1: an agent sits beside an app server
    /// and, like Redis, serves its sessions from one core without cross-thread hand-offs.
    pub threads: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: NodeConfig::default(),
            app_url: None,
            resp_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_RESP_PORT)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            demo_app: None,
            requirepass_file: None,
            api_token_file: None,
            max_value_bytes: 1 << 20,
            max_memory_bytes: None,
            max_keys: 50_000_000,
            databases: 16,
            max_clients: 10_000,
            repl_addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_REPL_PORT)),
            replication: ReplicationMode::Sync,
            multicast: MulticastMode::Auto,
            multicast_group: None,
            multicast_port: DEFAULT_MULTICAST_PORT,
            sync_timeout: Duration::from_millis(500),
            anti_entropy_interval: Duration::from_secs(30),
            tls_dir: std::path::PathBuf::from("tandem-tls"),
            script_time_limit: Duration::from_secs(5),
            script_memory_bytes: 128 << 20,
            threads: 1,
        }
    }
}

/// Configuration of `tandem balancer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerConfig {
    #[serde(flatten)]
    pub node: NodeConfig,
    /// HTTP address users connect to. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Name of the route cookie. Default `TANDEM_ROUTE`.
    pub cookie_name: String,
    /// File holding the secret route cookies are signed with; every balancer of the
    /// cluster needs the same one. Default: derived from the cluster key; without a key
    /// either, the balancer refuses to start.
    pub cookie_secret_file: Option<std::path::PathBuf>,
    /// How long a route cookie is honoured after it was issued (it is refreshed while
    /// the user is active). Default `24h`.
    #[serde(with = "humantime_serde")]
    pub cookie_max_age: Duration,
    /// How long connecting to an app server may take before the balancer tries the
    /// partner. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an app server may take to answer. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413. Default 64 MiB.
    pub max_body_bytes: u64,
    /// Most user connections open at once; more are answered 503 and closed. Default
    /// 10,000.
    pub max_connections: usize,
    /// Most user connections open at once from one client address (the peer's, or the
    /// one a PROXY protocol header gives); more are answered 429 and closed. Default 1,000.
    pub max_connections_per_client: usize,
    /// How long a user may take to send a request's head, counted from the connection's
    /// start or the end of the previous response (so also how long a kept-alive
    /// connection may stay idle). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Slowest a request body may arrive, in bytes per second on average, after a first
    /// `header_timeout` (a slow upload would otherwise hold its connection forever);
    /// slower ones get 408. 0: no limit. Default 1,024.
    pub min_body_rate: u64,
    /// Every user connection starts with a PROXY protocol (v1 or v2) header naming the
    /// client, as an L4 load balancer in front of the balancer sends it; a connection
    /// without a valid one is closed. Default off.
    pub proxy_protocol: bool,
    /// PEM certificate chain: serve users over TLS (HTTP/1.1 and HTTP/2 by ALPN).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            node: NodeConfig::default(),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_LISTEN_PORT)),
            cookie_name: "TANDEM_ROUTE".to_string(),
            cookie_secret_file: None,
            cookie_max_age: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 64 << 20,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            header_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            proxy_protocol: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Accepts a list, or one string of comma-separated items (as environment variables give).
fn comma_separated<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => vec![text],
        OneOrMany::Many(items) => items,
    };
    Ok(items
        .iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_accepts_lists_and_comma_separated_text() {
        let config: NodeConfig = serde_json::from_str(r#"{"join": ["a:1, b:2", "c:3"]}"#).unwrap();
        assert_eq!(config.join, ["a:1", "b:2", "c:3"]);
        let config: NodeConfig = serde_json::from_str(r#"{"join": "a:1,,b:2"}"#).unwrap();
        assert_eq!(config.join, ["a:1", "b:2"]);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = BalancerConfig::default();
        assert_eq!(config.node.gossip_addr.port(), 7946);
        assert_eq!(config.node.admin_addr.port(), 7951);
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.node.cluster, "tandem");
        assert_eq!(
            config.node.gossip.gossip_interval,
            Duration::from_millis(200)
        );
        assert_eq!(
            config.node.gossip.dead_node_grace_period,
            Duration::from_secs(900)
        );
    }

    #[test]
    fn durations_read_as_human_text() {
        let config: NodeConfig =
            serde_json::from_str(r#"{"gossip_interval": "150ms", "phi_threshold": 6}"#).unwrap();
        assert_eq!(config.gossip.gossip_interval, Duration::from_millis(150));
        assert_eq!(config.gossip.phi_threshold, 6.0);
    }
}
