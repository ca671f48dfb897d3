//! `tandem demo`: a local cluster on loopback, as child processes of this binary.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::DemoArgs;

/// How long the nodes get to leave gracefully before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the cluster to see all its members.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

struct DemoNode {
    name: String,
    role: &'static str,
    gossip: SocketAddr,
    admin: SocketAddr,
    /// Balancers: where users connect. Agents: the demo app.
    listen: Option<SocketAddr>,
    /// Agents: the Redis-protocol and HTTP session endpoints.
    resp: Option<SocketAddr>,
    api: Option<SocketAddr>,
    /// Agents: the replication endpoint (UDP).
    repl: Option<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
}

fn free_udp() -> anyhow::Result<UdpSocket> {
    UdpSocket::bind("127.0.0.1:0").context("no free UDP port on loopback")
}

fn free_tcp() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("no free TCP port on loopback")
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the tandem binary")?;

    // Ports are reserved together and released just before the nodes start, so that no
    // two nodes of the demo get the same one.
    let mut reserved_udp = Vec::new();
    let mut reserved_tcp = Vec::new();
    let mut nodes = Vec::new();
    let roles = (1..=args.agents)
        .map(|i| ("agent", i))
        .chain((1..=args.balancers).map(|i| ("balancer", i)));
    for (role, i) in roles {
        let gossip = free_udp()?;
        let admin = free_tcp()?;
        let listen = free_tcp()?;
        let (resp, api, repl) = if role == "agent" {
            (Some(free_tcp()?), Some(free_tcp()?), Some(free_udp()?))
        } else {
            (None, None, None)
        };
        let addr = |l: &Option<TcpListener>| l.as_ref().map(TcpListener::local_addr).transpose();
        let name = format!("{role}-{i}");
        nodes.push(DemoNode {
            log: dir.join(format!("{name}.log")),
            name,
            role,
            gossip: gossip.local_addr()?,
            admin: admin.local_addr()?,
            listen: Some(listen.local_addr()?),
            resp: addr(&resp)?,
            api: addr(&api)?,
            repl: repl.as_ref().map(UdpSocket::local_addr).transpose()?,
            child: None,
        });
        reserved_udp.extend([Some(gossip), repl].into_iter().flatten());
        reserved_tcp.extend([Some(admin), Some(listen), resp, api].into_iter().flatten());
    }
    let seeds: Vec<String> = nodes
        .iter()
        .filter(|n| n.role == "agent")
        .take(2)
        .map(|n| n.gossip.to_string())
        .collect();
    drop(reserved_udp);
    drop(reserved_tcp);

    // One cluster key: gossip is sealed with it, and every balancer derives the same route
    // cookie secret from it.
    let key_file = dir.join("cluster.key");
    std::fs::write(
        &key_file,
        format!(
            "{}\n",
            tandem_cluster::keyring::ClusterKey::generate().encode()
        ),
    )
    .with_context(|| format!("cannot write {}", key_file.display()))?;

    for node in &mut nodes {
        let log = std::fs::File::create(&node.log)
            .with_context(|| format!("cannot create {}", node.log.display()))?;
        let mut command = Command::new(&exe);
        command
            .arg(node.role)
            .args(["--node-id", &node.name, "--cluster", "tandem-demo"])
            .args(["--gossip-addr", &node.gossip.to_string()])
            .args(["--admin-addr", &node.admin.to_string()])
            .args(["--join", &seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(&key_file)
            .arg("--log-format")
            .arg("text")
            .env_remove("TANDEM_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match (node.role, node.listen) {
            ("agent", Some(app)) => command.args(["--demo-app", &app.to_string()]),
            (_, Some(listen)) => command.args(["--listen", &listen.to_string()]),
            _ => &mut command,
        };
        if let (Some(resp), Some(api), Some(repl)) = (node.resp, node.api, node.repl) {
            command.args([
                "--resp-addr",
                &resp.to_string(),
                "--api-addr",
                &api.to_string(),
            ]);
            command.args(["--repl-addr", &repl.to_string()]);
            command.arg("--tls-dir").arg(dir.join("tls"));
        }
        // SAFETY: set_pdeathsig only makes a syscall; it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        node.child = Some(
            command
                .spawn()
                .with_context(|| format!("cannot start {}", node.name))?,
        );
    }

    println!(
        "tandem demo: {} agent(s) and {} balancer(s) on loopback\n",
        args.agents, args.balancers
    );
    println!(
        "{:<12} {:<28} {:<28} {:<17} GOSSIP (udp)",
        "NODE", "ADMIN", "APP / LISTEN", "RESP"
    );
    for node in &nodes {
        let url =
            |addr: Option<SocketAddr>| addr.map_or("-".to_string(), |a| format!("http://{a}"));
        let resp = node.resp.map_or("-".to_string(), |a| a.to_string());
        println!(
            "{:<12} {:<28} {:<28} {:<17} {}",
            node.name,
            url(Some(node.admin)),
            url(node.listen),
            resp,
            node.gossip
        );
    }
    println!("\nlogs: {}", dir.display());

    let admin = nodes
        .last()
        .map(|n| n.admin)
        .context("the demo has no nodes")?;
    wait_until_formed(admin, nodes.len()).await;
    if let Some(balancer) = nodes.iter().find(|n| n.role == "balancer") {
        let listen = balancer.listen.map(|a| a.to_string()).unwrap_or_default();
        println!(
            "open:    http://{listen}/  (through the balancer; each click counts in your session)"
        );
        println!(
            "status:  http://{}/status  (the topology, live)",
            balancer.admin
        );
        println!(
            "failover: kill -9 the agent the page names (pgrep -f 'node-id NAME '), click again:"
        );
        println!("          the counter carries on at its partner");
    } else if let Some(app) = nodes
        .iter()
        .find(|n| n.role == "agent")
        .and_then(|n| n.listen)
    {
        println!("open:    http://{app}/ (an agent's demo app)");
    }
    if let Some(resp) = nodes.iter().find_map(|n| n.resp) {
        println!("store:   redis-cli -p {} ping", resp.port());
    }
    println!("see it:  tandem members --admin http://{admin}");
    println!("stop it: Ctrl-C (or kill -TERM {})\n", std::process::id());

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = poll.tick() => report_exits(&mut nodes),
        }
    }
    println!("\nstopping the demo cluster…");
    stop_all(&mut nodes).await;
    println!("stopped");
    Ok(())
}

async fn wait_until_formed(admin: SocketAddr, expected: usize) {
    let started = Instant::now();
    while started.elapsed() < FORM_TIMEOUT {
        if let Ok(view) = crate::members::fetch(&admin.to_string()).await {
            let live = view.members.iter().filter(|m| m.live).count();
            if live >= expected {
                println!(
                    "cluster formed: {live} live members after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("warning: the cluster has not formed after {FORM_TIMEOUT:?}; see the logs");
}

fn report_exits(nodes: &mut [DemoNode]) {
    for node in nodes.iter_mut() {
        let Some(child) = node.child.as_mut() else {
            continue;
        };
        if let Ok(Some(status)) = child.try_wait() {
            println!(
                "{} exited ({status}); log: {}",
                node.name,
                node.log.display()
            );
            node.child = None;
        }
    }
}

async fn stop_all(nodes: &mut [DemoNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        let Some(child) = node.child.as_mut() else {
            continue;
        };
        if tokio::time::timeout_at(deadline, child.wait())
            .await
            .is_err()
        {
            println!("{} did not stop in {STOP_GRACE:?}; killing it", node.name);
            let _ = child.kill().await;
        }
    }
}
