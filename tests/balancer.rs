//! The balancer with real processes: sticky users, failover to the partner with nothing
//! lost, placement on another pair when both die, identical routing on two balancers,
//! hostile input.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::users::{
    Counter, DemoCluster, Interruption, User, run_users, run_users_around, start_balancer,
    start_balancer_with, wait_protected_routes,
};
use support::{Agent, Node, free_tcp_addr, free_udp_addr, wait_for, wait_for_port};

const FORM: Duration = Duration::from_secs(30);
const USERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_users_keep_their_sessions_through_the_death_of_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DemoCluster::start(dir.path(), 4).await;
    let balancer = cluster.listen;

    // 50 users, 20 clicks each: counts 1..20, every answer from the same node.
    let users: Vec<User> = (0..USERS).map(User::new).collect();
    let results = run_users(users, balancer, 20).await;
    let mut home: BTreeMap<usize, (String, Option<String>)> = BTreeMap::new();
    let mut users = Vec::new();
    for (user, answers) in results {
        let answers: Vec<Counter> = answers.into_iter().collect::<Result<_, _>>().unwrap();
        let counts: Vec<i64> = answers.iter().map(|a| a.count).collect();
        assert_eq!(counts, (1..=20).collect::<Vec<_>>(), "user {}", user.id);
        assert!(
            answers.iter().all(|a| a.node == answers[0].node),
            "user {} moved: {answers:?}",
            user.id
        );
        home.insert(
            user.id,
            (answers[0].node.clone(), answers[0].partner.clone()),
        );
        users.push(user);
    }
    let nodes_used: std::collections::BTreeSet<&String> = home.values().map(|(n, _)| n).collect();
    assert_eq!(
        nodes_used.len(),
        4,
        "new users are spread over every node: {home:?}"
    );

    // 20 more clicks each; one agent is killed while they run.
    let victim = home[&0].0.clone();
    let victim_partner = home[&0].1.clone().expect("protected nodes have partners");
    // The kill comes after a quarter of the clicks; users pause at their 11th until it has.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let interruption = Arc::new(Interruption {
        after: USERS * 20 / 4,
        done: done_rx,
        answered: Arc::default(),
        reached: Arc::default(),
    });
    let clicking = {
        let interruption = interruption.clone();
        tokio::spawn(
            async move { run_users_around(users, balancer, 20, Some(&interruption)).await },
        )
    };
    interruption.reached.notified().await;
    cluster.agents.get_mut(&victim).unwrap().node.kill();
    done_tx.send(true).unwrap();
    let results = clicking.await.unwrap();
    let mut users = Vec::new();
    for (user, answers) in results {
        let answers: Vec<Counter> = answers
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|err| panic!("user {} saw a failed request: {err}", user.id));
        let counts: Vec<i64> = answers.iter().map(|a| a.count).collect();
        assert_eq!(
            counts,
            (21..=40).collect::<Vec<_>>(),
            "user {} lost or repeated a click",
            user.id
        );
        let (first_home, _) = &home[&user.id];
        let last = answers.last().unwrap();
        if *first_home == victim {
            assert_eq!(
                last.node, victim_partner,
                "user {} continued on the partner",
                user.id
            );
        } else {
            assert_eq!(last.node, *first_home, "user {} stayed home", user.id);
        }
        users.push(user);
    }

    // The partner dies too: its users land on the other pair (their sessions are gone,
    // as in the seed design), and nobody gets a 5xx.
    cluster.agents.get_mut(&victim_partner).unwrap().node.kill();
    let results = run_users(users, balancer, 5).await;
    for (user, answers) in results {
        for answer in &answers {
            if let Err(err) = answer {
                panic!(
                    "user {} got an error after both nodes of a pair died: {err}",
                    user.id
                );
            }
        }
        let last = answers.last().unwrap().as_ref().unwrap();
        assert!(
            last.node != victim && last.node != victim_partner,
            "user {} on a dead node",
            user.id
        );
    }
}

/// A balancer restarted with kill -9 under sticky users signs and reads cookies with the
/// same secret (derived from the cluster key): nobody moves and no counter resets. One
/// without a cluster key or cookie secret file refuses to start, and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_balancer_moves_nobody_and_one_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DemoCluster::start(dir.path(), 4).await;
    let users: Vec<User> = (0..USERS).map(User::new).collect();
    let mut homes = BTreeMap::new();
    let mut clicked = Vec::new();
    for (user, answers) in run_users(users, cluster.listen, 5).await {
        let answers: Vec<Counter> = answers.into_iter().collect::<Result<_, _>>().unwrap();
        homes.insert(user.id, answers[0].node.clone());
        clicked.push(user);
    }
    cluster.balancer.kill();
    cluster.balancer.restart();
    wait_protected_routes(cluster.balancer.admin, &cluster.balancer.name, 4).await;
    for (user, answers) in run_users(clicked, cluster.listen, 5).await {
        let answers: Vec<Counter> = answers.into_iter().collect::<Result<_, _>>().unwrap();
        let counts: Vec<i64> = answers.iter().map(|a| a.count).collect();
        assert_eq!(counts, (6..=10).collect::<Vec<_>>(), "user {}", user.id);
        assert!(
            answers.iter().all(|a| a.node == homes[&user.id]),
            "user {} moved after the restart: {answers:?}",
            user.id
        );
    }

    let seed = cluster.agents.values().next().unwrap().node.gossip;
    let (mut keyless, _) = start_balancer_with(
        dir.path(),
        "keyless-balancer",
        seed,
        &[support::NO_GOSSIP_KEY],
    );
    let status = keyless.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "a balancer without a secret started");
    let log = keyless.log_text();
    assert!(
        log.lines().any(|line| line.contains("--gossip-key-file")
            && line.contains("--cookie-secret-file")),
        "{log}"
    );
}

/// A slowloris on one address (127.0.0.5) opens more connections than the per-client cap
/// and never finishes a request head: past the cap it is answered 429, and the header
/// timeout closes the rest, while users on 127.0.0.1 click on with every request answered.
/// At the total cap, a new connection is answered 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_cannot_lock_everyone_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cluster = DemoCluster::start(dir.path(), 2).await;
    let seed = cluster.agents["agent-1"].node.gossip;
    let (balancer, listen) = start_balancer_with(
        dir.path(),
        "balancer-guarded",
        seed,
        &[
            "--max-connections",
            "60",
            "--max-connections-per-client",
            "20",
            "--header-timeout",
            "4s",
        ],
    );
    wait_for_port(listen).await;
    wait_protected_routes(balancer.admin, &balancer.name, 2).await;
    let connect_from = |source: &str| {
        let source: std::net::IpAddr = source.parse().unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            socket.connect(listen).await.unwrap()
        }
    };
    let mut slow = Vec::new();
    for _ in 0..30 {
        let mut stream = connect_from("127.0.0.5").await;
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Never: ")
            .await;
        slow.push(stream);
    }
    // Users on another address are served meanwhile.
    let users: Vec<User> = (0..10).map(User::new).collect();
    for (user, answers) in run_users(users, listen, 5).await {
        for answer in answers {
            answer.unwrap_or_else(|err| panic!("user {}: {err}", user.id));
        }
    }
    // Past the cap the slowloris was answered 429; the header timeout closed the others.
    let started = std::time::Instant::now();
    let (mut refused, mut closed) = (0, 0);
    for stream in &mut slow {
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut reply)).await;
        if reply.starts_with(b"HTTP/1.1 429") {
            assert!(String::from_utf8_lossy(&reply).contains("Retry-After: 2"));
            refused += 1;
        } else {
            closed += 1;
        }
    }
    assert_eq!(
        (refused, closed),
        (10, 20),
        "429s past the cap, the rest timed out"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed by the header timeout"
    );

    // The total cap: 100 connections from as many addresses, opened at once; past the
    // 60 the cap allows, each is answered 503 with `Retry-After` (the others are closed by
    // the header timeout: nothing else may come back).
    let mut opened = Vec::new();
    for i in 0..100 {
        opened.push(connect_from(&format!("127.0.1.{}", i + 1)).await);
    }
    let mut reading = tokio::task::JoinSet::new();
    for mut stream in opened {
        reading.spawn(async move {
            let mut reply = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut reply)).await;
            String::from_utf8_lossy(&reply).into_owned()
        });
    }
    let replies = reading.join_all().await;
    let unavailable = replies
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 503") && r.contains("Retry-After: 2"))
        .count();
    assert!(
        replies
            .iter()
            .all(|r| r.is_empty() || r.starts_with("HTTP/1.1 503")),
        "{replies:?}"
    );
    assert!(unavailable >= 40, "{unavailable} answered 503");
    for (reason, at_least) in [
        ("max_connections", 1.0),
        ("max_connections_per_client", 10.0),
    ] {
        let series = format!("tandem_proxy_connections_refused_total{{reason=\"{reason}\"}}");
        let counted = support::counter(balancer.admin, &series).await;
        assert!(counted >= at_least, "{series}: {counted}");
    }
}

/// Sends `request` on a new connection to `listen` and reads the answer until the
/// balancer closes the connection (or `wait` passes).
async fn exchange(listen: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or_default()
}

/// Slow or malformed input from a user gets the status HTTP gives it, never a 5xx: a
/// malformed request line 400, headers too large 431, a body arriving slower than
/// --min-body-rate 408 (whether kept for a retry or streamed), and a request head not
/// finished within --header-timeout is closed. The balancer serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_or_malformed_input_gets_the_status_http_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    // An app that reads each body whole before answering.
    let app = format!("http://{}", echo_upgrade_app().await);
    let agent = Agent::start(dir.path(), "strict-agent", &["--app-url", &app]);
    let (balancer, listen) = start_balancer_with(
        dir.path(),
        "balancer-strict",
        agent.node.gossip,
        &["--header-timeout", "2s", "--min-body-rate", "1000"],
    );
    wait_for_port(listen).await;
    let wait = Duration::from_secs(10);
    wait_for("the balancer to route to the agent", FORM, || async {
        exchange(
            listen,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            wait,
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;

    let reply = exchange(listen, b"GARBAGE\r\n\r\n", wait).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{}", status_line(&reply));
    for size in [100 << 10, 300 << 10] {
        let head = format!(
            "GET /api/counter HTTP/1.1\r\nHost: t\r\nX-Huge: {}\r\n\r\n",
            "h".repeat(size)
        );
        let reply = exchange(listen, head.as_bytes(), wait).await;
        assert!(
            reply.starts_with("HTTP/1.1 431"),
            "{size}: {}",
            status_line(&reply)
        );
    }

    // A head never finished: closed at the header timeout, nothing answered.
    let started = std::time::Instant::now();
    let reply = exchange(listen, b"GET /api/counter HTTP/1.1\r\nHost: t\r\n", wait).await;
    assert!(reply.is_empty(), "{reply}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "closed after {waited:?}");

    // Bodies that stop after their first bytes: 408 once 2 s + 100 bytes' worth passed.
    for declared in [5_000, 500_000] {
        let started = std::time::Instant::now();
        let mut request =
            format!("POST /api/counter HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n")
                .into_bytes();
        request.extend([b'x'; 100]);
        let reply = exchange(listen, &request, wait).await;
        assert!(
            reply.starts_with("HTTP/1.1 408"),
            "{declared}: {}",
            status_line(&reply)
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "408 after {waited:?}");
    }
    let reply = exchange(
        listen,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        wait,
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{}", status_line(&reply));
    let fours = support::counter(
        balancer.admin,
        r#"tandem_proxy_requests_total{node="none",class="4xx"}"#,
    )
    .await;
    assert!(
        fours >= 2.0,
        "the slow bodies counted as the users' errors: {fours}"
    );
}

/// Behind an L4 load balancer (--proxy-protocol), the client a PROXY header names (v1 or
/// v2) is the one the per-client cap counts: a slowloris behind the load balancer is held
/// to its cap while the other clients, on the very same peer address, are served. A
/// connection without a valid header is closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_an_l4_balancer_the_proxy_header_names_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cluster = DemoCluster::start(dir.path(), 2).await;
    let seed = cluster.agents["agent-1"].node.gossip;
    let (balancer, listen) = start_balancer_with(
        dir.path(),
        "balancer-behind-nlb",
        seed,
        &[
            "--proxy-protocol",
            "--max-connections-per-client",
            "5",
            "--header-timeout",
            "3s",
        ],
    );
    wait_for_port(listen).await;
    wait_protected_routes(balancer.admin, &balancer.name, 2).await;
    let v1 = |client: &str, port: u16| format!("PROXY TCP4 {client} 10.0.0.1 {port} 8080\r\n");
    let v2 = |client: [u8; 4], port: u16| {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c".to_vec();
        header.extend(client);
        header.extend([10, 0, 0, 1]);
        header.extend(port.to_be_bytes());
        header.extend(8080u16.to_be_bytes());
        header
    };
    let get = b"GET /api/counter HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    let mut slow = Vec::new();
    for port in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut request = v1("203.0.113.9", 40000 + port).into_bytes();
        request.extend(b"GET / HTTP/1.1\r\nX-Never: ");
        stream.write_all(&request).await.unwrap();
        slow.push(stream);
    }
    // Other clients, through the same peer address, by either version of the header.
    for i in 1..=10u8 {
        let mut request = if i % 2 == 0 {
            v1(&format!("198.51.100.{i}"), 50000).into_bytes()
        } else {
            v2([198, 51, 100, i], 50000)
        };
        request.extend(get);
        let reply = exchange(listen, &request, Duration::from_secs(10)).await;
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "client {i}: {}",
            status_line(&reply)
        );
    }
    let (mut refused, mut closed) = (0, 0);
    for stream in &mut slow {
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
        if reply.starts_with(b"HTTP/1.1 429") {
            refused += 1;
        } else {
            assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
            closed += 1;
        }
    }
    assert_eq!(
        (refused, closed),
        (3, 5),
        "429s past the cap, the rest timed out"
    );

    // No header, a garbage one, or one never finished: closed without an answer.
    let series = r#"tandem_proxy_connections_refused_total{reason="proxy_protocol"}"#;
    let before = support::counter(balancer.admin, series).await;
    for request in [
        &get[..],
        b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.1",
    ] {
        let reply = exchange(listen, request, Duration::from_secs(10)).await;
        assert!(reply.is_empty(), "{request:?}: {reply}");
    }
    let counted = support::counter(balancer.admin, series).await;
    assert_eq!(counted - before, 3.0, "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_balancers_route_alike_and_hostile_input_is_answered_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DemoCluster::start(dir.path(), 4).await;
    let seed = cluster.agents["agent-1"].node.gossip;
    let (second, second_listen) = start_balancer(dir.path(), "balancer-2", seed);
    wait_for_port(second_listen).await;
    wait_protected_routes(second.admin, &second.name, 4).await;

    // Users placed by balancer-1 are routed identically by balancer-2.
    for id in 0..20 {
        let mut user = User::new(id);
        let first = user.click(cluster.listen).await.unwrap();
        let second_answer = user.click(second_listen).await.unwrap();
        assert_eq!(second_answer.node, first.node, "user {id}");
        assert_eq!(
            second_answer.count, 2,
            "user {id} kept the session across balancers"
        );
    }

    // Requests are counted by node and status class.
    let metrics = support::get(cluster.balancer.admin, "/metrics")
        .await
        .unwrap()
        .1;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tandem_proxy_requests_total{") && l.contains(r#"class="2xx""#))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        counted >= 20.0,
        "2xx requests counted: {counted}\n{metrics}"
    );

    // The status page is served on the admin port and reads the two JSON endpoints.
    let (status, page) = support::get(second.admin, "/status").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("Tandem topology")
            && page.contains("v1/routes")
            && page.contains("v1/members")
    );

    let client = reqwest::Client::new();
    let url = format!("http://{}/api/counter", cluster.listen);
    // A forged cookie is treated as absent: the request is placed, and a valid cookie set.
    for forged in [
        "v1.YWdlbnQtMQ.YWdlbnQtMg.1.AAAA",
        "garbage",
        "v1....",
        &"x".repeat(4000),
    ] {
        let response = client
            .get(&url)
            .header("cookie", format!("TANDEM_ROUTE={forged}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{forged}");
        let fresh = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("TANDEM_ROUTE=v1."));
        assert!(fresh, "a fresh route cookie for {forged}");
    }
    // Oversized headers get a 4xx, and the balancer keeps serving.
    let huge = "h".repeat(100 * 1024);
    let response = client.get(&url).header("x-huge", huge).send().await;
    if let Ok(response) = response {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    // Raw garbage on the port.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(cluster.listen)
        .await
        .unwrap();
    raw.write_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut reply)).await;
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // A declared body over the limit: 413.
    let response = client
        .post(&url)
        .header("content-length", "999999999999")
        .body("")
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    // A fresh connection: the one above was left expecting a body that never came.
    let after = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(after.status(), 200, "still serving");

    // A malformed chunked body is the user's fault (400), not the app's (502); one that
    // grows past --max-body-bytes without declaring its length gets 413.
    let (limited, limited_listen) = start_balancer_with(
        dir.path(),
        "balancer-limited",
        seed,
        &["--max-body-bytes", "100000"],
    );
    wait_for_port(limited_listen).await;
    wait_protected_routes(limited.admin, &limited.name, 4).await;
    let post = |body: Vec<u8>| async move {
        let mut raw = tokio::net::TcpStream::connect(limited_listen)
            .await
            .unwrap();
        let mut request = b"POST /api/counter HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        request.extend(body);
        let _ = raw.write_all(&request).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply).into_owned()
    };
    let mut large = Vec::new();
    for _ in 0..20 {
        large.extend(format!("{:x}\r\n", 10_000).bytes());
        large.extend(std::iter::repeat_n(b'x', 10_000));
        large.extend(b"\r\n");
    }
    large.extend(b"0\r\n\r\n");
    for (what, body, status) in [
        (
            "a bad chunk size",
            b"zz\r\nhello\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a chunk longer than declared",
            b"2\r\nhello\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        ("200,000 bytes in chunks", large, "413"),
    ] {
        let reply = post(body).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {}",
            reply.lines().next().unwrap_or_default()
        );
    }
    let after = reqwest::Client::new()
        .get(format!("http://{limited_listen}/api/counter"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "still serving");
    drop(Arc::new(second));
}

/// A request waiting on an app whose node dies without a word (the app keeps its
/// connection open and silent) is given up as soon as gossip declares the node dead, not
/// after the whole --request-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_leaves_a_node_as_soon_as_gossip_declares_it_dead() {
    let dir = tempfile::tempdir().unwrap();
    // An app that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut agent = Agent::start(dir.path(), "silent-agent", &["--app-url", &app]);
    let (balancer, listen) = start_balancer_with(
        dir.path(),
        "balancer-waiting",
        agent.node.gossip,
        &["--request-timeout", "120s"],
    );
    wait_for_port(listen).await;
    wait_for("the balancer to route to the agent", FORM, || async {
        support::get(balancer.admin, "/v1/routes")
            .await
            .is_some_and(|(_, routes)| routes.contains(r#""usable":true"#))
    })
    .await;
    let request = tokio::spawn(exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(120),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    if request.is_finished() {
        panic!("answered at once: {}", request.await.unwrap());
    }
    let killed = std::time::Instant::now();
    agent.node.kill();
    let reply = request.await.unwrap();
    let waited = killed.elapsed();
    assert!(reply.starts_with("HTTP/1.1 502"), "{}", status_line(&reply));
    assert!(reply.contains("died while answering"), "{reply}");
    assert!(
        waited < Duration::from_secs(30),
        "answered {waited:?} after the death"
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_app_server_means_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (balancer, listen) = start_balancer(dir.path(), "lonely", free_udp_addr());
    wait_for_port(listen).await;
    let response = reqwest::get(format!("http://{listen}/")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "2");
    assert!(response.text().await.unwrap().contains("no app server"));
    // Counted where the 5xx alert looks.
    let (_, metrics) = support::get(balancer.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("tandem_proxy_requests_total{node=\"none\",class=\"5xx\"} 1"),
        "{metrics}"
    );
    drop(balancer);
}

/// An app that accepts any upgrade and then echoes bytes, as a WebSocket server would
/// after its handshake.
async fn echo_upgrade_app() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                if !head.contains("upgrade: echo") {
                    // The body is read whole before the answer, as most apps do.
                    let declared = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length: "))
                        .and_then(|value| value.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    let mut body = (&mut stream).take(declared);
                    if tokio::io::copy(&mut body, &mut tokio::io::sink())
                        .await
                        .ok()
                        != Some(declared)
                    {
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n")
                    .await;
                let mut buffer = [0u8; 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_pass_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let app = echo_upgrade_app().await;
    let app_url = format!("http://{app}");
    let agent = Agent::start(dir.path(), "ws-agent", &["--app-url", &app_url]);
    let (balancer, listen) = start_balancer(dir.path(), "ws-balancer", agent.node.gossip);
    wait_for_port(listen).await;
    wait_for("the balancer to route to the agent", FORM, || async {
        reqwest::get(format!("http://{listen}/"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nhost: example\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "the balancer closed the connection"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in ["hello", "through the balancer", "and back"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    // HTTP/2 without TLS (h2c, prior knowledge) reaches the same HTTP/1.1 app.
    if support::capability("curl", support::has_program("curl")) {
        let output = tokio::process::Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "-w", "\n%{http_version}"])
            .arg(format!("http://{listen}/plain"))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n2");
    }
    drop((balancer, agent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_can_connect_over_tls_with_http2() {
    if !support::capability("curl", support::has_program("curl")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let demo = free_tcp_addr().to_string();
    let agent = Agent::start(dir.path(), "tls-agent", &["--demo-app", &demo]);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "the route cookie secret of this test").unwrap();
    let listen = free_tcp_addr();
    let extra: Vec<String> = [
        "--listen",
        &listen.to_string(),
        "--cookie-secret-file",
        &secret.display().to_string(),
        "--tls-cert",
        &cert_path.display().to_string(),
        "--tls-key",
        &key_path.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let balancer = Node::start_with(
        dir.path(),
        "balancer",
        "tls-balancer",
        &[agent.node.gossip],
        free_udp_addr(),
        extra,
    );
    let _ = &balancer;
    wait_for_port(listen).await;

    let curl = |args: Vec<String>| async move {
        let output = tokio::process::Command::new("curl")
            .args(args)
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let url = format!("https://127.0.0.1:{}/api/counter", listen.port());
    let jar = dir.path().join("jar").display().to_string();
    wait_for("the balancer to serve over TLS", FORM, || {
        let (url, jar) = (url.clone(), jar.clone());
        async move {
            let out = curl(vec![
                "-sk".into(),
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}".into(),
                "-c".into(),
                jar,
                url,
            ])
            .await;
            out == "200"
        }
    })
    .await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let out = curl(vec![
            "-sk".into(),
            "--http2".into(),
            "-X".into(),
            "POST".into(),
            "-b".into(),
            jar.clone(),
            "-c".into(),
            jar.clone(),
            "-w".into(),
            "\n%{http_version}".into(),
            url.clone(),
        ])
        .await;
        let (body, version) = out.rsplit_once('\n').unwrap();
        assert_eq!(version, "2", "HTTP/2 negotiated by ALPN");
        let counter: serde_json::Value = serde_json::from_str(body).unwrap();
        counts.push(counter["count"].as_i64().unwrap());
    }
    assert_eq!(counts, [1, 2, 3], "the session sticks over TLS too");
    let headers = curl(vec![
        "-sk".into(),
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        url.clone(),
    ])
    .await;
    let route_cookie = headers
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie: tandem_route="))
        .unwrap_or_else(|| panic!("no route cookie:\n{headers}"));
    assert!(
        route_cookie.contains("Secure") && route_cookie.contains("HttpOnly"),
        "{route_cookie}"
    );
}
