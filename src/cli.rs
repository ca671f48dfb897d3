//! Command-line definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

use tandem_common::config::{
    AgentConfig, BalancerConfig, LogFormat, MulticastMode, NodeConfig, ReplicationMode,
};

/// Highly available user sessions: paired session agents and a sticky balancer.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent beside an app server.
    Agent(AgentArgs),
    /// Run a sticky balancer in front of the agents' apps.
    Balancer(BalancerArgs),
    /// Show the cluster as one node's admin endpoint sees it.
    Members(MembersArgs),
    /// Start a local cluster on loopback (agents and a balancer) until Ctrl-C.
    Demo(DemoArgs),
    /// Print a new cluster key (base64) on stdout: `tandem keygen > cluster.key`.
    Keygen(KeygenArgs),
    /// Show or change a node's gossip keyring (rotation without downtime).
    Keyring(KeyringArgs),
    /// Create the cluster CA and node certificates for replication (mutual TLS).
    Certs(CertsArgs),
    /// Turn high availability on or off for the whole cluster, or show the switch.
    Ha(HaArgs),
    /// Drain a node: its users move to its partner, then it leaves and exits.
    Drain(DrainArgs),
    /// Wait until a node serves with its sessions protected (paired and synced).
    Wait(WaitArgs),
    /// Print the version.
    Version,
}

const LAYERS_HELP: &str = "Every option can also be set in the environment (the variable \
shown with it) and in the --config TOML file, under the option's name with underscores \
(e.g. gossip_addr = \"0.0.0.0:7946\"). Flags win over the environment, the environment \
over the file, the file over the defaults.";

/// Options every cluster process has. Unset options fall back to the environment, the
/// config file, then the defaults shown.
#[derive(Debug, Default, Args)]
pub struct NodeFlags {
    /// TOML configuration file.
    #[arg(long, env = "TANDEM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node id, unique in the cluster [default: the host name].
    #[arg(long, env = "TANDEM_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Cluster name [default: tandem].
    #[arg(long, env = "TANDEM_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// UDP address gossip listens on [default: 0.0.0.0:7946].
    #[arg(long, env = "TANDEM_GOSSIP_ADDR", value_name = "ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    /// Gossip address other nodes reach this node at [default: the gossip address, or the
    /// interface address routing to the seeds when it listens on 0.0.0.0].
    #[arg(long, env = "TANDEM_ADVERTISE_ADDR", value_name = "ADDR")]
    pub advertise_addr: Option<SocketAddr>,
    /// Seed node HOST:PORT to join through; repeatable and comma-separated.
    #[arg(
        long,
        env = "TANDEM_JOIN",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub join: Vec<String>,
    /// Admin HTTP address: /healthz, /readyz, /v1/members, /metrics [default: 0.0.0.0:7951].
    #[arg(long, env = "TANDEM_ADMIN_ADDR", value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Log format, text or json; the filter is RUST_LOG [default: text].
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// How often to gossip, e.g. 200ms [default: 200ms].
    #[arg(long, env = "TANDEM_GOSSIP_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub gossip_interval: Option<Duration>,
    /// Failure detector threshold, in mean heartbeat intervals of silence [default: 8].
    #[arg(long, env = "TANDEM_PHI_THRESHOLD", value_name = "PHI")]
    pub phi_threshold: Option<f64>,
    /// How long dead nodes are remembered, e.g. 15m [default: 15m].
    #[arg(long, env = "TANDEM_DEAD_NODE_GRACE_PERIOD", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub dead_node_grace_period: Option<Duration>,
    /// Cluster key file (`tandem keygen > FILE`): gossip is sealed with it, and the route
    /// cookie secret derived from it. More keys, one per line, are accepted too (the first
    /// one seals). Without a key gossip is unsealed [env TANDEM_GOSSIP_KEY: the key itself].
    #[arg(long, env = "TANDEM_GOSSIP_KEY_FILE", value_name = "FILE")]
    pub gossip_key_file: Option<PathBuf>,
    #[arg(long, env = "TANDEM_GOSSIP_KEY", hide = true, hide_env_values = true)]
    pub gossip_key: Option<String>,
    /// File with the token state-changing admin calls need (Authorization: Bearer TOKEN).
    /// Without one, such calls are accepted from loopback only.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How long a drain (SIGTERM, `tandem drain`) waits for the partner to confirm it holds
    /// every session before the node leaves anyway [default: 30s].
    #[arg(long, env = "TANDEM_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Speak this protocol version (MAJOR.MINOR) instead of the build's, to rehearse an
    /// upgrade.
    #[arg(long, env = "TANDEM_PROTOCOL", value_name = "VERSION", hide = true)]
    pub protocol: Option<tandem_common::schema::Protocol>,
}

#[derive(Debug, Default, Args)]
#[command(after_help = LAYERS_HELP)]
pub struct AgentArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    /// URL balancers send this node's users to, e.g. http://10.0.0.5:8000.
    #[arg(long, env = "TANDEM_APP_URL", value_name = "URL")]
    pub app_url: Option<String>,
    /// Redis-protocol endpoint for the app [default: 127.0.0.1:6380].
    #[arg(long, env = "TANDEM_RESP_ADDR", value_name = "ADDR")]
    pub resp_addr: Option<SocketAddr>,
    /// HTTP session API for the app [default: 127.0.0.1:7950].
    #[arg(long, env = "TANDEM_API_ADDR", value_name = "ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Serve the built-in demo app on HOST:PORT and send this node's users to it.
    #[arg(long, env = "TANDEM_DEMO_APP", value_name = "HOST:PORT")]
    pub demo_app: Option<SocketAddr>,
    /// File with the password RESP clients must AUTH with (as Redis' requirepass)
    /// [default: none: clients on the RESP address need no password].
    #[arg(long, env = "TANDEM_REQUIREPASS_FILE", value_name = "FILE")]
    pub requirepass_file: Option<PathBuf>,
    /// File with the token HTTP session API calls must carry (Authorization: Bearer TOKEN)
    /// [default: none].
    #[arg(long, env = "TANDEM_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Largest key, value or hash field, in bytes [default: 1048576].
    #[arg(long, env = "TANDEM_MAX_VALUE_BYTES", value_name = "BYTES")]
    pub max_value_bytes: Option<u64>,
    /// Memory for sessions, in bytes; writes past it are refused [default: 1/4 of RAM].
    #[arg(long, env = "TANDEM_MAX_MEMORY_BYTES", value_name = "BYTES")]
    pub max_memory_bytes: Option<u64>,
    /// Most keys held [default: 50000000].
    #[arg(long, env = "TANDEM_MAX_KEYS", value_name = "N")]
    pub max_keys: Option<u64>,
    /// Databases offered over RESP, SELECT 0 to N-1 [default: 16, as Redis; at most 1024].
    #[arg(long, env = "TANDEM_DATABASES", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub databases: Option<u16>,
    /// Most RESP clients connected at once (Redis' maxclients) [default: 10000].
    #[arg(long, env = "TANDEM_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,
    /// QUIC replication address (UDP) [default: 0.0.0.0:7947].
    #[arg(long, env = "TANDEM_REPL_ADDR", value_name = "ADDR")]
    pub repl_addr: Option<SocketAddr>,
    /// sync: a write returns once the partner has it; async: at once [default: sync].
    #[arg(long, env = "TANDEM_REPLICATION", value_name = "MODE", value_enum)]
    pub replication: Option<ReplicationArg>,
    /// How long a sync write waits for the partner before going unprotected [default: 500ms].
    #[arg(long, env = "TANDEM_SYNC_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub sync_timeout: Option<Duration>,
    /// How often partners compare their stores and repair differences [default: 30s].
    #[arg(long, env = "TANDEM_ANTI_ENTROPY_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub anti_entropy_interval: Option<Duration>,
    /// Replicate by UDP multicast to a partner in the same subnet: auto (probe it when a
    /// pair forms, fall back to QUIC) or off [default: auto].
    #[arg(long, env = "TANDEM_MULTICAST", value_name = "MODE")]
    pub multicast: Option<MulticastArg>,
    /// Multicast group (IPv4) [default: one in 239.0.0.0/8 derived from the cluster name].
    #[arg(long, env = "TANDEM_MULTICAST_GROUP", value_name = "IP")]
    pub multicast_group: Option<std::net::Ipv4Addr>,
    /// UDP port of the multicast group [default: 7948].
    #[arg(long, env = "TANDEM_MULTICAST_PORT", value_name = "PORT")]
    pub multicast_port: Option<u16>,
    /// How long a script runs before other clients get BUSY and SCRIPT KILL may stop it
    /// (Redis' busy-reply-threshold) [default: 5s].
    #[arg(long, env = "TANDEM_SCRIPT_TIME_LIMIT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub script_time_limit: Option<Duration>,
    /// Memory the Lua interpreter may use, in bytes; a script needing more fails
    /// [default: 134217728].
    #[arg(long, env = "TANDEM_SCRIPT_MEMORY_BYTES", value_name = "BYTES")]
    pub script_memory_bytes: Option<u64>,
    /// Worker threads of the agent's runtime [default: 1].
    #[arg(long, env = "TANDEM_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Directory of the cluster CA and node certificates [default: tandem-tls].
    #[arg(long, env = "TANDEM_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

/// `--multicast` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MulticastArg {
    Auto,
    Off,
}

/// `--replication` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplicationArg {
    Sync,
    Async,
}

#[derive(Debug, Default, Args)]
#[command(after_help = LAYERS_HELP)]
pub struct BalancerArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    /// HTTP address users connect to [default: 0.0.0.0:8080].
    #[arg(long, env = "TANDEM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Name of the route cookie [default: TANDEM_ROUTE].
    #[arg(long, env = "TANDEM_COOKIE_NAME", value_name = "NAME")]
    pub cookie_name: Option<String>,
    /// File with the secret route cookies are signed with, the same on every balancer
    /// [default: derived from the cluster key (--gossip-key-file); without one the balancer
    /// refuses to start].
    #[arg(long, env = "TANDEM_COOKIE_SECRET_FILE", value_name = "FILE")]
    pub cookie_secret_file: Option<PathBuf>,
    /// How long a route cookie is honoured after it was issued [default: 24h].
    #[arg(long, env = "TANDEM_COOKIE_MAX_AGE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cookie_max_age: Option<Duration>,
    /// Time to connect to an app server before trying its partner [default: 1s].
    #[arg(long, env = "TANDEM_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time an app server may take to answer [default: 60s].
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Largest request body accepted, in bytes [default: 67108864].
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Most user connections open at once; more get 503 [default: 10000].
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most user connections open at once from one client address; more get 429
    /// [default: 1000].
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// Time a user may take to send a request's head, from connecting or from the end of
    /// the previous response (an idle kept-alive connection too) [default: 10s].
    #[arg(long, env = "TANDEM_HEADER_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Slowest a request body may arrive, in bytes/s on average after a first
    /// --header-timeout; slower ones get 408 (0: no limit) [default: 1024].
    #[arg(long, env = "TANDEM_MIN_BODY_RATE", value_name = "BYTES")]
    pub min_body_rate: Option<u64>,
    /// Every user connection starts with a PROXY protocol v1/v2 header naming the client
    /// (behind an L4 load balancer); connections without one are closed.
    #[arg(long, env = "TANDEM_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// PEM certificate chain: serve users over TLS (HTTP/1.1 and HTTP/2) [default: plain HTTP].
    #[arg(
        long,
        env = "TANDEM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "TANDEM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Admin endpoint of any node, e.g. http://127.0.0.1:7951.
    #[arg(
        long,
        env = "TANDEM_ADMIN",
        value_name = "URL",
        default_value = "http://127.0.0.1:7951"
    )]
    pub admin: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Rotation, on every node in turn: `install` the new key, then `use` \
it, then `remove` the old one (and put the new key first in the key files). Turning sealing \
on in a running cluster without a key: `install`, then `use` on every node, then \
`plain refuse` on every node."
)]
pub struct KeyringArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    #[command(subcommand)]
    pub action: KeyringAction,
}

/// The node a command talks to, through its admin endpoint.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// Admin endpoint of the node, e.g. http://10.0.0.5:7951.
    #[arg(long, env = "TANDEM_ADMIN", value_name = "URL")]
    pub admin: String,
    /// File with the node's admin token (needed unless the node is on loopback and has none).
    #[arg(long, env = "TANDEM_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The switch travels by gossip; the newest setting wins. Off: agents end \
their pairs and stop replicating, balancers keep users on their nodes (a node's death then \
loses its users' sessions). On: agents pair and send each other snapshots, live."
)]
pub struct HaArgs {
    /// on, off or status.
    #[arg(value_enum)]
    pub action: HaAction,
    #[command(flatten)]
    pub target: AdminTarget,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HaAction {
    /// Replicate: agents pair up and sync.
    On,
    /// Stop replicating: agents unpair, sessions stay where they are.
    Off,
    /// Show the switch as the node knows it.
    Status,
}

#[derive(Debug, Args)]
#[command(
    after_help = "SIGTERM drains the same way. The node advertises `draining` (balancers \
send its users to its partner, which holds their sessions), waits until the partner \
confirms it holds everything (or --drain-timeout passes), leaves the cluster and exits 0."
)]
pub struct DrainArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Return once the drain has started instead of waiting for the node to leave.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long, e.g. 2m.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Done when the node is ready and paired with a partner that names it \
back, no snapshot is under way between them and neither is behind; or, when it has no \
partner, when no other agent could pair with it (an odd agent out, or HA off). A node that \
is not reachable yet (restarting) is waited for. Exits 1 on timeout."
)]
pub struct WaitArgs {
    /// Admin endpoint of the node, e.g. http://10.0.0.5:7951.
    #[arg(long, env = "TANDEM_ADMIN", value_name = "URL")]
    pub admin: String,
    /// Give up after this long, e.g. 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum KeyringAction {
    /// List the installed keys by id, marking the primary.
    List,
    /// Install a key (it opens gossip; it seals only once made the primary with `use`).
    Install {
        /// File holding the key (`tandem keygen` output); its first key is installed.
        #[arg(value_name = "KEY_FILE")]
        key_file: PathBuf,
    },
    /// Seal gossip with this installed key from now on.
    Use {
        /// The key's id, as `list` shows it.
        id: String,
    },
    /// Remove an installed key that is not the primary.
    Remove {
        /// The key's id, as `list` shows it.
        id: String,
    },
    /// Accept or refuse unsealed gossip.
    Plain {
        #[arg(value_enum)]
        choice: PlainChoice,
    },
}

/// `tandem keyring plain` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PlainChoice {
    Accept,
    Refuse,
}

#[derive(Debug, Args)]
#[command(
    after_help = "An agent started with --tls-dir DIR needs DIR/ca.pem and its own \
DIR/<node-id>.pem and DIR/<node-id>.key. Keep ca.key on the machine that issues \
certificates, not on the nodes."
)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub action: CertsAction,
}

#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Create the cluster CA (ca.pem, ca.key) in DIR, unless one is there.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue NODE_ID's certificate and key (NODE_ID.pem, NODE_ID.key) from the CA in DIR.
    Issue {
        /// The node ids the agents run with (--node-id); each certificate names its node.
        #[arg(required = true, value_name = "NODE_ID")]
        node_ids: Vec<String>,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Keep a node's existing certificate instead of failing (for setup steps that run
        /// on every start).
        #[arg(long)]
        if_missing: bool,
    },
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the key to FILE (mode 0600) instead of stdout: for setups without a shell.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// With --out: keep an existing key file instead of failing.
    #[arg(long, requires = "out")]
    pub if_missing: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub agents: u16,
    /// Number of balancers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=8))]
    pub balancers: u16,
    /// Directory for the nodes' log files [default: a new directory under the temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl NodeFlags {
    /// Overrides the fields of `node` that were given as flags or in the environment.
    pub fn apply(self, node: &mut NodeConfig) {
        if let Some(node_id) = self.node_id {
            node.node_id = node_id;
        }
        if let Some(cluster) = self.cluster {
            node.cluster = cluster;
        }
        if let Some(addr) = self.gossip_addr {
            node.gossip_addr = addr;
        }
        if self.advertise_addr.is_some() {
            node.advertise_addr = self.advertise_addr;
        }
        if !self.join.is_empty() {
            node.join = self.join;
        }
        if let Some(addr) = self.admin_addr {
            node.admin_addr = addr;
        }
        if let Some(format) = self.log_format {
            node.log_format = match format {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            };
        }
        if let Some(interval) = self.gossip_interval {
            node.gossip.gossip_interval = interval;
        }
        if let Some(phi) = self.phi_threshold {
            node.gossip.phi_threshold = phi;
        }
        if let Some(period) = self.dead_node_grace_period {
            node.gossip.dead_node_grace_period = period;
        }
        if self.gossip_key_file.is_some() {
            node.gossip_key_file = self.gossip_key_file;
        }
        if self.gossip_key.is_some() {
            node.gossip_key = self.gossip_key;
        }
        if self.admin_token_file.is_some() {
            node.admin_token_file = self.admin_token_file;
        }
        if let Some(timeout) = self.drain_timeout {
            node.drain_timeout = timeout;
        }
        if let Some(protocol) = self.protocol {
            node.protocol = protocol;
        }
    }
}

impl AgentArgs {
    pub fn apply(self, config: &mut AgentConfig) {
        self.node.apply(&mut config.node);
        if self.app_url.is_some() {
            config.app_url = self.app_url;
        }
        if let Some(addr) = self.resp_addr {
            config.resp_addr = addr;
        }
        if let Some(addr) = self.api_addr {
            config.api_addr = addr;
        }
        if self.demo_app.is_some() {
            config.demo_app = self.demo_app;
        }
        if self.requirepass_file.is_some() {
            config.requirepass_file = self.requirepass_file;
        }
        if self.api_token_file.is_some() {
            config.api_token_file = self.api_token_file;
        }
        if let Some(bytes) = self.max_value_bytes {
            config.max_value_bytes = bytes;
        }
        if self.max_memory_bytes.is_some() {
            config.max_memory_bytes = self.max_memory_bytes;
        }
        if let Some(clients) = self.max_clients {
            config.max_clients = clients;
        }
        if let Some(keys) = self.max_keys {
            config.max_keys = keys;
        }
        if let Some(databases) = self.databases {
            config.databases = usize::from(databases);
        }
        if let Some(addr) = self.repl_addr {
            config.repl_addr = addr;
        }
        if let Some(mode) = self.replication {
            config.replication = match mode {
                ReplicationArg::Sync => ReplicationMode::Sync,
                ReplicationArg::Async => ReplicationMode::Async,
            };
        }
        if let Some(timeout) = self.sync_timeout {
            config.sync_timeout = timeout;
        }
        if let Some(dir) = self.tls_dir {
            config.tls_dir = dir;
        }
        if let Some(interval) = self.anti_entropy_interval {
            config.anti_entropy_interval = interval;
        }
        if let Some(mode) = self.multicast {
            config.multicast = match mode {
                MulticastArg::Auto => MulticastMode::Auto,
                MulticastArg::Off => MulticastMode::Off,
            };
        }
        if let Some(group) = self.multicast_group {
            config.multicast_group = Some(group);
        }
        if let Some(port) = self.multicast_port {
            config.multicast_port = port;
        }
        if let Some(limit) = self.script_time_limit {
            config.script_time_limit = limit;
        }
        if let Some(bytes) = self.script_memory_bytes {
            config.script_memory_bytes = bytes;
        }
        if let Some(threads) = self.threads {
            config.threads = usize::from(threads);
        }
    }
}

impl BalancerArgs {
    pub fn apply(self, config: &mut BalancerConfig) {
        self.node.apply(&mut config.node);
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(name) = self.cookie_name {
            config.cookie_name = name;
        }
        if self.cookie_secret_file.is_some() {
            config.cookie_secret_file = self.cookie_secret_file;
        }
        if let Some(age) = self.cookie_max_age {
            config.cookie_max_age = age;
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout = timeout;
        }
        if let Some(timeout) = self.request_timeout {
            config.request_timeout = timeout;
        }
        if let Some(connections) = self.max_connections {
            config.max_connections = connections;
        }
        if let Some(connections) = self.max_connections_per_client {
            config.max_connections_per_client = connections;
        }
        if let Some(timeout) = self.header_timeout {
            config.header_timeout = timeout;
        }
        if let Some(rate) = self.min_body_rate {
            config.min_body_rate = rate;
        }
        if self.proxy_protocol {
            config.proxy_protocol = true;
        }
        if let Some(bytes) = self.max_body_bytes {
            config.max_body_bytes = bytes;
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
            config.tls_key = self.tls_key;
        }
    }
}
