//! Who may take part, with real processes: only holders of the cluster key join or change
//! what the cluster sees; garbage on the gossip port changes nothing; keys rotate on a
//! running cluster without anyone dropping out; admin calls that change state need the
//! admin token.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::users::{User, wait_protected_routes};
use support::{
    Agent, NO_GOSSIP_KEY, Node, cluster_key, counter, free_tcp_addr, free_udp_addr, members,
    tandem, wait_for, write_new_key,
};
use tandem_cluster::keyring::ClusterKey;

const FORM: Duration = Duration::from_secs(30);
/// Long enough for dozens of gossip rounds (200 ms each).
const ROUNDS: Duration = Duration::from_secs(3);

/// A balancer (the lightest cluster process) named `name` joining through `seed`.
fn start_outsider(dir: &Path, name: &str, seed: SocketAddr, key: &[&str]) -> Node {
    let mut extra = vec!["--listen".to_string(), free_tcp_addr().to_string()];
    extra.extend(key.iter().map(|s| s.to_string()));
    Node::start_with(dir, "balancer", name, &[seed], free_udp_addr(), extra)
}

/// A balancer with no cluster key (and the cookie secret file it then needs to start).
fn start_keyless_outsider(dir: &Path, name: &str, seed: SocketAddr) -> Node {
    let secret = dir.join(format!("{name}-secret"));
    std::fs::write(&secret, "an outsider's route cookie secret").unwrap();
    let secret = secret.display().to_string();
    start_outsider(
        dir,
        name,
        seed,
        &[NO_GOSSIP_KEY, "--cookie-secret-file", &secret],
    )
}

/// The ids `admin`'s node sees live (none while its admin endpoint does not answer yet).
async fn live_ids(admin: SocketAddr) -> Vec<String> {
    let Some(view) = members(admin).await else {
        return Vec::new();
    };
    let mut ids: Vec<String> = view
        .members
        .into_iter()
        .filter(|m| m.live)
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

async fn wait_live(admin: SocketAddr, expected: &[&str]) {
    let what = format!("{admin} to see exactly {expected:?} live");
    wait_for(&what, FORM, || async { live_ids(admin).await == expected }).await;
}

/// `tandem keyring ARGS --admin ADMIN`, which must succeed; returns its output.
fn keyring(admin: SocketAddr, args: &[&str]) -> String {
    let output = tandem()
        .arg("keyring")
        .args(["--admin", &admin.to_string()])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tandem keyring {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_key_holders_join_and_the_key_rotates_without_anyone_dropping_out() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (app1, app2) = (free_tcp_addr().to_string(), free_tcp_addr().to_string());
    let first = Agent::start(dir, "agent-1", &["--demo-app", &app1]);
    let seed = first.node.gossip.to_string();
    let second = Agent::start(dir, "agent-2", &["--join", &seed, "--demo-app", &app2]);
    // A balancer that signs route cookies with the secret it derives from the cluster key.
    let balancer = start_outsider(dir, "balancer-1", first.node.gossip, &[]);
    let listen: SocketAddr = balancer.args_value("--listen").parse().unwrap();
    let admin = first.node.admin;
    let members = ["agent-1", "agent-2", "balancer-1"];
    wait_live(admin, &members).await;
    wait_protected_routes(balancer.admin, "balancer-1", 2).await;
    let mut user = User::new(1);
    let home = user.click(listen).await.unwrap();
    assert_eq!(home.count, 1);

    // Outsiders with another key, and with none, knock at the seed.
    let foreign_key = dir.join("foreign.key");
    write_new_key(&foreign_key);
    let foreign = start_outsider(
        dir,
        "foreign-key",
        first.node.gossip,
        &["--gossip-key-file", &foreign_key.display().to_string()],
    );
    let keyless = start_keyless_outsider(dir, "no-key", first.node.gossip);
    // Garbage on the gossip port, some of it dressed as sealed gossip.
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let mut datagram: Vec<u8> = (0..(i % 700)).map(|j| (i * 31 + j * 7) as u8).collect();
        if i % 2 == 0 {
            datagram.splice(0..0, *b"TG\x01");
        }
        garbage.send_to(&datagram, first.node.gossip).unwrap();
    }
    tokio::time::sleep(ROUNDS).await;
    assert_eq!(live_ids(admin).await, members);
    for outsider in [&foreign, &keyless] {
        assert_eq!(
            live_ids(outsider.admin).await,
            [outsider.name.as_str()],
            "{} learned nothing of the cluster",
            outsider.name
        );
    }
    let refused = |reason: &str| format!("tandem_gossip_refused_total{{reason=\"{reason}\"}}");
    for reason in ["unknown_key", "unsealed"] {
        assert!(
            counter(admin, &refused(reason)).await > 0.0,
            "{reason} counted"
        );
    }

    // Rotation on the running cluster, one node at a time: install, use, remove. The user
    // keeps clicking: its cookie, signed with the old key's secret, is honoured and signed
    // again with the new one's before the old key goes.
    let new_key = dir.join("new.key");
    write_new_key(&new_key);
    let new_id = ClusterKey::read_file(&new_key).unwrap()[0].id().to_string();
    let old_id = ClusterKey::read_file(&cluster_key(dir)).unwrap()[0]
        .id()
        .to_string();
    let nodes = [first.node.admin, second.node.admin, balancer.admin];
    for (clicks, step) in [
        vec!["install", new_key.to_str().unwrap()],
        vec!["use", &new_id],
        vec!["remove", &old_id],
    ]
    .into_iter()
    .enumerate()
    {
        for node in nodes {
            keyring(node, &step);
        }
        tokio::time::sleep(ROUNDS).await;
        for node in nodes {
            assert_eq!(live_ids(node).await, members, "after {step:?}");
        }
        let answer = user.click(listen).await.unwrap();
        assert_eq!(
            (answer.count, &answer.node),
            (clicks as i64 + 2, &home.node),
            "the user's session after {step:?}"
        );
    }
    assert_eq!(keyring(admin, &["list"]), format!("{new_id}  primary\n"));
    // The old key opens nothing any more; the new one lets a newcomer in.
    let old_key = cluster_key(dir).display().to_string();
    let late = start_outsider(
        dir,
        "old-key",
        first.node.gossip,
        &["--gossip-key-file", &old_key],
    );
    let newcomer = start_outsider(
        dir,
        "new-key",
        first.node.gossip,
        &["--gossip-key-file", new_key.to_str().unwrap()],
    );
    let grown = ["agent-1", "agent-2", "balancer-1", "new-key"];
    wait_live(admin, &grown).await;
    tokio::time::sleep(ROUNDS).await;
    assert_eq!(live_ids(admin).await, grown);
    assert_eq!(live_ids(late.admin).await, ["old-key"]);
    drop(newcomer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_admin_calls_need_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "a-long-enough-admin-token\n").unwrap();
    let token_arg = token_file.display().to_string();
    let agent = Agent::start(dir, "agent-1", &["--admin-token-file", &token_arg]);
    let admin = agent.node.admin;
    support::wait_for_port(admin).await;
    let client = reqwest::Client::new();
    let url = format!("http://{admin}/v1/keyring/plain");
    for token in [None, Some("wrong-token-of-some-length")] {
        let mut request = client
            .post(&url)
            .json(&serde_json::json!({ "accept": true }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "token {token:?}");
    }
    assert_eq!(counter(admin, "tandem_admin_refused_total").await, 2.0);
    // Read-only calls stay open; the refused calls changed nothing.
    let (status, body) = support::get(admin, "/v1/keyring").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"accept_plain\":false"), "{body}");
    // The CLI with the token file is let through.
    let out = keyring(
        admin,
        &["--admin-token-file", &token_arg, "plain", "accept"],
    );
    assert!(out.contains("unsealed gossip is accepted"), "{out}");
    // A token file too short to be a secret stops the process at start with a clear error.
    std::fs::write(&token_file, "short").unwrap();
    let output = tandem()
        .args(["agent", "--node-id", "x", "--admin-token-file", &token_arg])
        .args(["--gossip-addr", &free_udp_addr().to_string()])
        .args(["--admin-addr", &free_tcp_addr().to_string()])
        .args(["--resp-addr", &free_tcp_addr().to_string()])
        .args(["--api-addr", &free_tcp_addr().to_string()])
        .args(["--repl-addr", &free_udp_addr().to_string()])
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_session_api_needs_its_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api.token");
    let token = "an-api-token-for-this-test";
    std::fs::write(&token_file, token).unwrap();
    let agent = Agent::start(
        dir.path(),
        "agent-1",
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    support::wait_for_port(agent.api).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/sessions/user-1", agent.api);
    let body = serde_json::json!({ "fields": { "cart": "3 items" } });
    for bearer in [None, Some("not-the-api-token-at-all")] {
        let mut put = client.put(&url).json(&body);
        if let Some(bearer) = bearer {
            put = put.bearer_auth(bearer);
        }
        let response = put.send().await.unwrap();
        assert_eq!(response.status(), 401, "token {bearer:?}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unauthorized", "{error}");
    }
    // Nothing was written by the refused calls; with the token, the API works.
    let get = |token: &'static str| client.get(&url).bearer_auth(token).send();
    assert_eq!(get(token).await.unwrap().status(), 404);
    let put = client.put(&url).bearer_auth(token).json(&body).send();
    assert!(put.await.unwrap().status().is_success());
    let session: serde_json::Value = get(token).await.unwrap().json().await.unwrap();
    assert_eq!(session["fields"]["cart"], "3 items", "{session}");
    assert_eq!(
        counter(agent.node.admin, "tandem_api_unauthorized_total").await,
        2.0
    );
}

/// Deterministic junk: `len` bytes that are not any protocol's.
fn junk(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_port_leaves_every_process_running_and_every_session_intact() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let multicast_port = free_udp_addr().port().to_string();
    let multicast = [
        "--multicast-group",
        "239.77.9.9",
        "--multicast-port",
        &multicast_port,
    ];
    let mut first = Agent::start(dir, "agent-1", &multicast);
    let seed = first.node.gossip.to_string();
    let mut joined = multicast.to_vec();
    joined.extend(["--join", &seed]);
    let mut second = Agent::start(dir, "agent-2", &joined);
    let mut balancer = start_outsider(dir, "balancer-1", first.node.gossip, &[]);
    let admin = first.node.admin;
    wait_for("agent-1 paired with agent-2", FORM, || async {
        support::member(admin, "agent-1")
            .await
            .is_some_and(|m| m.partner.is_some_and(|p| p.node_id == "agent-2"))
    })
    .await;
    // Sessions written in sync mode: each reply means the partner has it.
    let mut client = support::Resp::connect(first.resp).await;
    for i in 0..200 {
        let key = format!("session:{i}");
        assert_eq!(
            client.call(&["SET", &key, &format!("value-{i}")]).await,
            support::Reply::SimpleString("OK".into())
        );
    }

    // TCP: RESP, the HTTP session API, admin endpoints, the balancer's users' port.
    let listen = balancer
        .args_value("--listen")
        .parse::<SocketAddr>()
        .unwrap();
    let tcp = [
        first.resp,
        first.api,
        first.node.admin,
        second.resp,
        balancer.admin,
        listen,
    ];
    for (i, addr) in tcp.iter().enumerate() {
        for round in 0..20u32 {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                continue;
            };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream
                .write_all(&junk(
                    round * 97 + i as u32,
                    1 + (round as usize * 331) % 9000,
                ))
                .await;
            let mut answer = [0u8; 512];
            let _ =
                tokio::time::timeout(Duration::from_millis(200), stream.read(&mut answer)).await;
        }
    }
    // UDP: gossip, QUIC replication, the multicast group.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let group: SocketAddr = format!("239.77.9.9:{multicast_port}").parse().unwrap();
    let repl = first
        .node
        .args_value("--repl-addr")
        .parse::<SocketAddr>()
        .unwrap();
    for target in [
        first.node.gossip,
        second.node.gossip,
        balancer.gossip,
        repl,
        group,
    ] {
        for round in 0..200u32 {
            let _ = udp.send_to(&junk(round + 7, 1 + (round as usize * 53) % 1400), target);
        }
    }

    tokio::time::sleep(ROUNDS).await;
    for node in [&mut first.node, &mut second.node, &mut balancer] {
        assert!(node.is_running(), "{} stopped", node.name);
    }
    for agent in [&first, &second] {
        let mut client = support::Resp::connect(agent.resp).await;
        for i in 0..200 {
            assert_eq!(
                client.call(&["GET", &format!("session:{i}")]).await,
                support::Reply::BulkString(format!("value-{i}").into_bytes()),
                "session:{i} on {}",
                agent.node.name
            );
        }
    }
    // The junk arrived, and was refused where it arrived.
    for series in [
        "tandem_gossip_refused_total{reason=\"unsealed\"}",
        "tandem_repl_multicast_dropped_total{reason=\"malformed\"}",
        "tandem_resp_protocol_errors_total",
    ] {
        assert!(counter(admin, series).await > 0.0, "{series}");
    }
    let partner = support::member(admin, "agent-1").await.unwrap().partner;
    assert_eq!(
        partner.map(|p| p.node_id).as_deref(),
        Some("agent-2"),
        "still paired"
    );
    assert_eq!(
        live_ids(admin).await,
        ["agent-1", "agent-2", "balancer-1"],
        "nobody joined or left"
    );
}

/// A RESP connection to `addr` that answered PING, if the agent admitted it.
async fn admitted(addr: SocketAddr) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"PING\r\n").await.ok()?;
    let mut answer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer)).await;
    matches!(read, Ok(Ok(n)) if &answer[..n] == b"+PONG\r\n").then_some(stream)
}

/// Waits until the agent admits one more client, and keeps it.
async fn wait_admitted(addr: SocketAddr) -> tokio::net::TcpStream {
    let started = std::time::Instant::now();
    loop {
        if let Some(stream) = admitted(addr).await {
            return stream;
        }
        assert!(started.elapsed() < FORM, "no RESP slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_max_clients_are_told_so_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "agent-1", &["--max-clients", "2"]);
    support::wait_for_port(agent.resp).await;
    // Slots taken by earlier probes free up as the agent sees them close.
    let first = wait_admitted(agent.resp).await;
    let _second = wait_admitted(agent.resp).await;
    let mut third = support::Resp::connect(agent.resp).await;
    assert_eq!(
        third.reply_bytes().await,
        b"-ERR max number of clients reached\r\n",
        "Redis' words"
    );
    drop(first);
    // The slot is free again once a client leaves.
    wait_admitted(agent.resp).await;
    assert!(counter(agent.node.admin, "tandem_resp_connections_refused_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_takes_only_cluster_certificates_naming_their_holder() {
    use tandem_agent::replication::tls::{NodeTls, init_ca, issue};
    use tandem_agent::replication::transport::{QuicTransport, Transport};
    use tandem_common::frame::Frame;
    use tandem_common::schema::Protocol;

    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "agent-1", &[]);
    support::wait_for_port(agent.resp).await;
    let repl: SocketAddr = agent.node.args_value("--repl-addr").parse().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();

    // A certificate from another CA: the handshake fails, and the agent counts it.
    let other = tempfile::tempdir().unwrap();
    init_ca(other.path()).unwrap();
    issue(other.path(), "agent-2").unwrap();
    let stranger =
        QuicTransport::bind(any, &NodeTls::load(other.path(), "agent-2", false).unwrap()).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), stranger.connect("agent-1", repl));
    assert!(
        matches!(refused.await, Ok(Err(_))),
        "a stranger got a channel"
    );
    wait_for("the refusal counted", FORM, || async {
        counter(agent.node.admin, "tandem_repl_refused_total").await >= 1.0
    })
    .await;

    // A certificate from the cluster CA, for another node than the one it claims to be.
    let tls_dir = dir.path().join("tls");
    issue(&tls_dir, "impostor").unwrap();
    let impostor =
        QuicTransport::bind(any, &NodeTls::load(&tls_dir, "impostor", false).unwrap()).unwrap();
    let mut channel = impostor.connect("agent-1", repl).await.unwrap();
    let hello = Frame::Hello {
        protocol: Protocol::CURRENT,
        cluster: "tandem".into(),
        node_id: "agent-2".into(),
    };
    channel.sender.send(&hello).await.unwrap();
    let _their_hello = channel.receiver.recv().await.unwrap();
    channel
        .sender
        .send(&Frame::Propose { epoch: 1 })
        .await
        .unwrap();
    match channel.receiver.recv().await.unwrap() {
        Frame::Reject { reason } => {
            assert!(reason.contains("not for agent-2"), "{reason}")
        }
        other => panic!("an impostor got {other:?}"),
    }
    let me = support::member(agent.node.admin, "agent-1").await.unwrap();
    assert!(me.partner.is_none(), "the impostor is nobody's partner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_without_a_key_turns_sealed_without_anyone_dropping_out() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let first = Agent::start(dir, "agent-1", &[NO_GOSSIP_KEY]);
    let seed = first.node.gossip.to_string();
    let second = Agent::start(dir, "agent-2", &[NO_GOSSIP_KEY, "--join", &seed]);
    wait_live(first.node.admin, &["agent-1", "agent-2"]).await;
    let key = dir.join("new.key");
    write_new_key(&key);
    let id = ClusterKey::read_file(&key).unwrap()[0].id().to_string();
    // Install everywhere, seal everywhere, then refuse unsealed gossip everywhere.
    for step in [
        vec!["install", key.to_str().unwrap()],
        vec!["use", &id],
        vec!["plain", "refuse"],
    ] {
        for agent in [&first, &second] {
            keyring(agent.node.admin, &step);
        }
        tokio::time::sleep(ROUNDS).await;
        for agent in [&first, &second] {
            assert_eq!(
                live_ids(agent.node.admin).await,
                ["agent-1", "agent-2"],
                "after {step:?}"
            );
        }
    }
    let outsider = start_keyless_outsider(dir, "no-key", first.node.gossip);
    tokio::time::sleep(ROUNDS).await;
    assert_eq!(live_ids(first.node.admin).await, ["agent-1", "agent-2"]);
    assert_eq!(live_ids(outsider.admin).await, ["no-key"]);
}
