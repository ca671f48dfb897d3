//! Test support: real `tandem` processes on loopback, and waiting for what they report.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tandem_common::member::{Member, MembersResponse};

/// In a node's extra arguments: start it without a cluster key (unsealed gossip).
pub const NO_GOSSIP_KEY: &str = "--no-gossip-key";

/// The cluster key file of the test cluster in `dir`, created on first use.
pub fn cluster_key(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    if !path.exists() {
        write_new_key(&path);
    }
    path
}

/// Writes a new cluster key to `path`, as `tandem keygen > path` would.
pub fn write_new_key(path: &Path) {
    let key = tandem_cluster::keyring::ClusterKey::generate().encode();
    std::fs::write(path, format!("{key}\n")).unwrap();
}

/// The binary under test.
pub fn tandem() -> Command {
    scrubbed(env!("CARGO_BIN_EXE_tandem"), &[])
}

/// `program` with `leading` arguments, in an environment scrubbed of `TANDEM_*`.
fn scrubbed(program: &str, leading: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(leading);
    // Nothing from the caller's environment may change what the test starts.
    for (name, _) in std::env::vars() {
        if name.starts_with("TANDEM_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

/// Free loopback ports for an agent's RESP, HTTP API and replication endpoints (their
/// defaults are fixed ports, which parallel tests would share), and the test's TLS
/// directory (shared by the agents of one test, so they trust each other).
pub fn agent_endpoint_args(dir: &Path) -> Vec<String> {
    vec![
        "--resp-addr".into(),
        free_tcp_addr().to_string(),
        "--api-addr".into(),
        free_tcp_addr().to_string(),
        "--repl-addr".into(),
        free_udp_addr().to_string(),
        "--tls-dir".into(),
        dir.join("tls").display().to_string(),
    ]
}

/// A loopback port that is free now, for a process about to be started.
///
/// Taken below Linux's ephemeral range (32768 and up), so that the clients' own outgoing
/// connections, which draw from that range, cannot take it before the process binds it;
/// and never handed out twice by one test process.
fn free_port(free: impl Fn(u16) -> bool) -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    // Spread the tests' processes over the range, starting from a place of their own.
    let start = std::process::id() % 12_000;
    let port = (0..12_000u32)
        .map(|i| (20_000 + (start + i * 7) % 12_000) as u16)
        .find(|port| !handed_out.contains(port) && free(*port))
        .expect("a free loopback port below 32000");
    handed_out.push(port);
    port
}

pub fn free_udp_addr() -> SocketAddr {
    let port = free_port(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok());
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn free_tcp_addr() -> SocketAddr {
    let port = free_port(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One `tandem agent` or `tandem balancer` process, killed when dropped.
pub struct Node {
    pub name: String,
    pub gossip: SocketAddr,
    pub admin: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    /// The network namespace the process runs in; `None` for the test's own.
    netns: Option<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts a node of `role` named `name` that joins through `seeds`.
    pub fn start(dir: &Path, role: &str, name: &str, seeds: &[SocketAddr]) -> Node {
        Node::start_at(dir, role, name, seeds, free_udp_addr())
    }

    /// Like [`Node::start`], gossiping on a given address.
    pub fn start_at(
        dir: &Path,
        role: &str,
        name: &str,
        seeds: &[SocketAddr],
        gossip: SocketAddr,
    ) -> Node {
        let extra = if role == "balancer" {
            vec!["--listen".into(), free_tcp_addr().to_string()]
        } else {
            agent_endpoint_args(dir)
        };
        Node::start_with(dir, role, name, seeds, gossip, extra)
    }

    /// Like [`Node::start_at`], with `extra` arguments instead of the role's defaults.
    pub fn start_with(
        dir: &Path,
        role: &str,
        name: &str,
        seeds: &[SocketAddr],
        gossip: SocketAddr,
        extra: Vec<String>,
    ) -> Node {
        let mut node = Node::unstarted(dir, role, name, seeds, gossip, free_tcp_addr(), extra);
        node.spawn();
        node
    }

    /// Like [`Node::start_with`], inside network namespace `netns` (see [`netns::Topology`])
    /// and with the admin endpoint at `admin`: a free loopback port of the test's namespace
    /// means nothing there.
    #[allow(clippy::too_many_arguments)]
    pub fn start_in(
        netns: &str,
        dir: &Path,
        role: &str,
        name: &str,
        seeds: &[SocketAddr],
        gossip: SocketAddr,
        admin: SocketAddr,
        extra: Vec<String>,
    ) -> Node {
        let mut node = Node::unstarted(dir, role, name, seeds, gossip, admin, extra);
        node.netns = Some(netns.into());
        node.spawn();
        node
    }

    /// A node with its command line ready, not yet running.
    fn unstarted(
        dir: &Path,
        role: &str,
        name: &str,
        seeds: &[SocketAddr],
        gossip: SocketAddr,
        admin: SocketAddr,
        extra: Vec<String>,
    ) -> Node {
        let mut args: Vec<String> = vec![
            role.into(),
            "--node-id".into(),
            name.into(),
            "--gossip-addr".into(),
            gossip.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
        ];
        if !seeds.is_empty() {
            let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
            args.extend(["--join".into(), seeds.join(",")]);
        }
        // Every node of a test cluster seals its gossip with the directory's key, unless the
        // test names another key or asks for none.
        let keyless = extra.iter().any(|a| a == NO_GOSSIP_KEY);
        if !keyless && !extra.iter().any(|a| a == "--gossip-key-file") {
            args.extend([
                "--gossip-key-file".into(),
                cluster_key(dir).display().to_string(),
            ]);
        }
        args.extend(extra.into_iter().filter(|a| a != NO_GOSSIP_KEY));
        Node {
            name: name.into(),
            gossip,
            admin,
            args,
            log: dir.join(format!("{name}.log")),
            netns: None,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_tandem");
        let mut command = match self.netns.as_deref() {
            // `ip netns exec` execs the program, so the child's pid is tandem's.
            Some(netns) => scrubbed("ip", &["netns", "exec", netns, binary]),
            None => tandem(),
        };
        let child = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The value given to `flag` on the node's command line.
    pub fn args_value(&self, flag: &str) -> String {
        let at = self.args.iter().position(|a| a == flag);
        let value = at.and_then(|at| self.args.get(at + 1));
        value
            .unwrap_or_else(|| panic!("{} has no {flag}", self.name))
            .clone()
    }

    /// Whether the process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_none()))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// `kill -9`: no goodbye, the cluster must find out by itself.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the node again with the same addresses.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.spawn();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_exit(within)
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > within {
                child.kill().unwrap();
                panic!(
                    "{} did not exit within {within:?}\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// The standard output of a finished command; panics with all its output, naming it
/// `what`, unless it succeeded.
pub fn succeeded(what: &str, output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends a signal by name (`TERM`, `INT`, `KILL`).
pub fn signal(pid: u32, name: &str) {
    let signal: nix::sys::signal::Signal = format!("SIG{name}").parse().expect("signal name");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .unwrap_or_else(|err| panic!("kill -{name} {pid}: {err}"));
}

/// GET `path` from an admin endpoint; `None` when it does not answer.
pub async fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{admin}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The members list of one node; `None` when it does not answer.
pub async fn members(admin: SocketAddr) -> Option<MembersResponse> {
    let (status, body) = get(admin, "/v1/members").await?;
    assert_eq!(status, 200, "{body}");
    Some(serde_json::from_str(&body).expect("members JSON"))
}

/// What `admin` says about node `id`, if it knows it.
pub async fn member(admin: SocketAddr, id: &str) -> Option<Member> {
    members(admin)
        .await?
        .members
        .into_iter()
        .find(|m| m.id == id)
}

/// The partner `id` names in `view`, if it names one.
pub fn partner_in(view: &MembersResponse, id: &str) -> Option<String> {
    view.members
        .iter()
        .find(|m| m.id == id)
        .and_then(|m| m.partner.as_ref())
        .map(|p| p.node_id.clone())
}

/// Whether `a` and `b` are live in `view` and name each other as partners.
pub fn paired_in(view: &MembersResponse, a: &str, b: &str) -> bool {
    let live = |id: &str| view.members.iter().any(|m| m.id == id && m.live);
    live(a)
        && live(b)
        && partner_in(view, a).as_deref() == Some(b)
        && partner_in(view, b).as_deref() == Some(a)
}

/// Polls `check` until it holds; returns how long that took. Panics after `timeout`,
/// naming what was awaited.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether an optional capability (a program, a Python module, root) is here. Without it a
/// test skips with a printed reason, unless `TANDEM_REQUIRE_ALL=1` (as in CI), where a
/// missing capability fails the test instead.
pub fn capability(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("TANDEM_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{what} is required (TANDEM_REQUIRE_ALL=1) but missing");
    }
    eprintln!("SKIP: {what} is missing; install it to run this test");
    false
}

/// Whether `program --version` runs.
pub fn has_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether python3 can import every one of `modules`.
pub fn has_python_modules(modules: &[&str]) -> bool {
    let imports = format!("import {}", modules.join(", "));
    Command::new("python3")
        .args(["-c", &imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// An agent on loopback with its own ports; `resp`/`api` are its session endpoints.
pub struct Agent {
    pub node: Node,
    pub resp: SocketAddr,
    pub api: SocketAddr,
}

impl Agent {
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> Agent {
        let resp = free_tcp_addr();
        let api = free_tcp_addr();
        let mut args: Vec<String> = vec![
            "--resp-addr".into(),
            resp.to_string(),
            "--api-addr".into(),
            api.to_string(),
            "--repl-addr".into(),
            free_udp_addr().to_string(),
            "--tls-dir".into(),
            dir.join("tls").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let node = Node::start_with(dir, "agent", name, &[], free_udp_addr(), args);
        Agent { node, resp, api }
    }
}

/// Arguments that join an agent started next to the cluster at `seed`.
pub fn join_args(seed: &Agent) -> Vec<String> {
    vec!["--join".into(), seed.node.gossip.to_string()]
}

/// Waits until agents `a` and `b` are each other's partners, as both see it, and `b` is
/// protected; returns how long that took.
pub async fn wait_paired(a: &Agent, b: &Agent, a_name: &str, b_name: &str) -> Duration {
    wait_for(
        &format!("{a_name} and {b_name} to pair"),
        Duration::from_secs(30),
        || async {
            let ab = member(a.node.admin, a_name).await;
            let ba = member(a.node.admin, b_name).await;
            let mutual = ab.is_some_and(|m| m.partner.is_some_and(|p| p.node_id == b_name))
                && ba.is_some_and(|m| m.partner.is_some_and(|p| p.node_id == a_name));
            let seen_by_b = member(b.node.admin, b_name)
                .await
                .is_some_and(|m| m.partner.is_some_and(|p| p.node_id == a_name) && !m.unprotected);
            mutual && seen_by_b
        },
    )
    .await
}

/// Two agents named `a` and `b`, `b` joined to `a`, once they are paired.
pub async fn start_pair(dir: &Path, a: &str, b: &str) -> (Agent, Agent) {
    let first = Agent::start(dir, a, &[]);
    let join = join_args(&first);
    let join: Vec<&str> = join.iter().map(String::as_str).collect();
    let second = Agent::start(dir, b, &join);
    wait_for_port(first.resp).await;
    wait_for_port(second.resp).await;
    wait_paired(&first, &second, a, b).await;
    (first, second)
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_for_port(addr: SocketAddr) {
    wait_for(
        &format!("{addr} to accept connections"),
        Duration::from_secs(20),
        || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await;
}

/// A minimal RESP2 client for tests: pipelines commands, decodes replies.
pub struct Resp {
    stream: tokio::net::TcpStream,
    buffer: bytes::BytesMut,
}

pub use redis_protocol::resp2::types::OwnedFrame as Reply;

impl Resp {
    pub async fn connect(addr: SocketAddr) -> Resp {
        Resp {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buffer: bytes::BytesMut::new(),
        }
    }

    /// Sends bytes as they are (inline commands, garbage, a frame split in pieces).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next reply's exact bytes, RESP2 or RESP3; empty if the server closed the
    /// connection.
    pub async fn reply_bytes(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        loop {
            // RESP2 and RESP3 differ in a few types (`$-1` is RESP2 only): try both.
            let complete = match redis_protocol::resp2::decode::decode(&self.buffer) {
                Ok(Some((_, len))) => Some(len),
                _ => redis_protocol::resp3::decode::streaming::decode(&self.buffer)
                    .ok()
                    .flatten()
                    .map(|(_, len)| len),
            };
            if let Some(len) = complete {
                return self.buffer.split_to(len).to_vec();
            }
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                self.stream.read_buf(&mut self.buffer),
            )
            .await
            .expect("a reply within 10 s")
            .unwrap();
            if read == 0 {
                return std::mem::take(&mut self.buffer).to_vec();
            }
        }
    }

    /// Sends all commands in one write, then reads one reply per command.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Vec<Reply> {
        let mut request = Vec::new();
        for args in commands {
            request.extend(encode_command(args));
        }
        self.send_raw(&request).await;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            let bytes = self.reply_bytes().await;
            assert!(!bytes.is_empty(), "the server closed the connection");
            let (frame, _) = redis_protocol::resp2::decode::decode(&bytes)
                .unwrap()
                .expect("a RESP2 reply");
            replies.push(frame);
        }
        replies
    }

    pub async fn call(&mut self, args: &[&str]) -> Reply {
        let command: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.pipeline(&[command]).await.remove(0)
    }

    /// One command; its reply's exact bytes.
    pub async fn call_raw(&mut self, args: &[impl AsRef<[u8]>]) -> Vec<u8> {
        let command: Vec<Vec<u8>> = args.iter().map(|a| a.as_ref().to_vec()).collect();
        self.send_raw(&encode_command(&command)).await;
        self.reply_bytes().await
    }
}

/// What arrives on `stream` until it has been quiet for `quiet` (pushes, several frames
/// of one command, nothing at all).
pub async fn received_until_quiet(stream: &mut tokio::net::TcpStream, quiet: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// A command as a RESP array of bulk strings.
pub fn encode_command(args: &[Vec<u8>]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend(format!("${}\r\n", arg.len()).bytes());
        request.extend(arg);
        request.extend(b"\r\n");
    }
    request
}

/// The value of a series (a metric with its labels) in `admin`'s metrics, 0 when absent.
pub async fn counter(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = get(admin, "/metrics").await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Builds a command from string-ish arguments.
pub fn cmd(args: &[&dyn AsRef<[u8]>]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_ref().to_vec()).collect()
}

pub mod netns;
pub mod users;

/// A `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let addr = free_tcp_addr();
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(addr).await;
        RedisServer { child, addr }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything an agent holds in databases 0-15: per key its type, its value (members of a
/// set in order, so that the storage order does not count) and its deadline.
pub async fn dump(addr: std::net::SocketAddr) -> BTreeMap<(usize, Vec<u8>), String> {
    let mut resp = Resp::connect(addr).await;
    let mut all = BTreeMap::new();
    for db in 0..16 {
        resp.call(&["SELECT", &db.to_string()]).await;
        let Reply::Array(keys) = resp.call(&["KEYS", "*"]).await else {
            panic!("KEYS");
        };
        for key in keys {
            let Reply::BulkString(key) = key else {
                panic!("a key: {key:?}");
            };
            let kind = resp.pipeline(&[cmd(&[&"TYPE", &key])]).await.remove(0);
            let read = match &kind {
                Reply::SimpleString(t) if t == b"string" => cmd(&[&"GET", &key]),
                Reply::SimpleString(t) if t == b"hash" => cmd(&[&"HGETALL", &key]),
                Reply::SimpleString(t) if t == b"set" => cmd(&[&"SMEMBERS", &key]),
                Reply::SimpleString(t) if t == b"zset" => {
                    cmd(&[&"ZRANGE", &key, &"0", &"-1", &"WITHSCORES"])
                }
                Reply::SimpleString(t) if t == b"list" => cmd(&[&"LRANGE", &key, &"0", &"-1"]),
                other => panic!("TYPE {other:?}"),
            };
            let replies = resp.pipeline(&[read, cmd(&[&"PEXPIRETIME", &key])]).await;
            let value = match (&kind, &replies[0]) {
                (Reply::SimpleString(t), Reply::Array(items)) if t == b"set" => {
                    let mut items: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
                    items.sort();
                    items.join(",")
                }
                (_, value) => format!("{value:?}"),
            };
            let Reply::SimpleString(kind) = kind else {
                unreachable!()
            };
            let kind = String::from_utf8_lossy(&kind);
            all.insert(
                (db, key),
                format!("{kind} {value} deadline {:?}", replies[1]),
            );
        }
    }
    all
}

/// The keys whose dumps differ, with both sides.
pub fn differences(
    want: &BTreeMap<(usize, Vec<u8>), String>,
    got: &BTreeMap<(usize, Vec<u8>), String>,
) -> String {
    let mut out = Vec::new();
    for key in want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if want.get(key) != got.get(key) {
            out.push(format!(
                "{key:?}\n  acknowledged: {:?}\n  partner:      {:?}",
                want.get(key),
                got.get(key)
            ));
        }
    }
    out.join("\n")
}
