//! The command line's promises: one clear line and a non-zero exit for every mistake, and
//! `tandem members` showing a live cluster.

mod support;

use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use support::{Agent, Node, member, tandem, wait_for};
use tandem_common::member::{Member, MembersResponse};
use tandem_common::schema::NodeState;

fn run(args: &[&str]) -> Output {
    tandem().args(args).output().unwrap()
}

/// The error output, which must be exactly one line starting with `error:`.
fn one_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let output = run(&["agent", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(one_error_line(&output).contains("--no-such-flag"));

    let output = run(&["agent", "--gossip-addr", "nowhere"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(one_error_line(&output).contains("--gossip-addr"));

    let output = run(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    one_error_line(&output);
}

#[test]
fn configuration_errors_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let admin = support::free_tcp_addr().to_string();
    let gossip = support::free_udp_addr().to_string();
    let endpoints = support::agent_endpoint_args(dir.path());
    let mut base = vec!["agent", "--admin-addr", &admin, "--gossip-addr", &gossip];
    base.extend(endpoints.iter().map(String::as_str));

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--join", "no-such-host.invalid:7946"],
            "no-such-host.invalid",
        ),
        (vec!["--join", "127.0.0.1"], "expected HOST:PORT"),
        (vec!["--app-url", "localhost:8000"], "app URL"),
        (vec!["--node-id", " "], "node id"),
        (
            vec!["--config", "/nonexistent/tandem.toml"],
            "/nonexistent/tandem.toml",
        ),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let output = run(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let line = one_error_line(&output);
        assert!(line.contains(expected), "{args:?}: {line}");
    }

    let file = dir.path().join("tandem.toml");
    std::fs::write(&file, "gossip_adr = \"0.0.0.0:1\"\n").unwrap();
    let output = run(&["balancer", "--config", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(one_error_line(&output).contains("unknown option `gossip_adr`"));
}

#[test]
fn ports_in_use_exit_1_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind(support::free_tcp_addr()).unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let taken_udp = std::net::UdpSocket::bind(support::free_udp_addr()).unwrap();
    let taken_udp_addr = taken_udp.local_addr().unwrap().to_string();
    let gossip = support::free_udp_addr().to_string();
    let admin = support::free_tcp_addr().to_string();
    let endpoints = support::agent_endpoint_args(dir.path());
    let agent = |extra: &[&str]| {
        let mut args = vec!["agent", "--gossip-addr", &gossip];
        // The default endpoints, except the ones this case sets itself.
        for pair in endpoints.chunks(2) {
            if !extra.contains(&pair[0].as_str()) {
                args.extend(pair.iter().map(String::as_str));
            }
        }
        args.extend(extra);
        run(&args)
    };
    // Admin, RESP, HTTP API and replication addresses, each taken in turn.
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--admin-addr", &taken_addr], &taken_addr, "admin"),
        (
            &["--admin-addr", &admin, "--resp-addr", &taken_addr],
            &taken_addr,
            "RESP",
        ),
        (
            &["--admin-addr", &admin, "--api-addr", &taken_addr],
            &taken_addr,
            "HTTP",
        ),
        (
            &["--admin-addr", &admin, "--repl-addr", &taken_udp_addr],
            &taken_udp_addr,
            "replication",
        ),
    ];
    for (extra, addr, what) in cases {
        let output = agent(extra);
        assert_eq!(output.status.code(), Some(1), "{what}");
        let line = one_error_line(&output);
        assert!(
            line.contains(addr) && line.contains(what) && line.contains("in use"),
            "{line}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cookie-secret");
    std::fs::write(&secret, "the route cookie secret of this test").unwrap();
    let output = run(&[
        "balancer",
        "--admin-addr",
        &admin,
        "--gossip-addr",
        &taken_udp_addr,
        "--cookie-secret-file",
        &secret.display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let line = one_error_line(&output);
    assert!(
        line.contains(&taken_udp_addr) && line.contains("in use"),
        "{line}"
    );
}

#[test]
fn members_of_an_unreachable_endpoint_is_one_error_line() {
    let nobody = support::free_tcp_addr().to_string();
    let output = run(&["members", "--admin", &nobody]);
    assert_eq!(output.status.code(), Some(1));
    assert!(one_error_line(&output).contains(&nobody));
}

#[test]
fn version_prints_the_package_version() {
    let output = run(&["version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("tandem {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_prints_a_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = Agent::start(dir.path(), "node-one", &[]).node;
    let b1 = Node::start(dir.path(), "balancer", "node-two", &[a1.gossip]);
    let ready = |m: Option<Member>| m.is_some_and(|m| m.live && m.state == Some(NodeState::Ready));
    wait_for(
        "the two nodes to see each other ready",
        Duration::from_secs(20),
        || async {
            ready(member(a1.admin, "node-two").await) && ready(member(b1.admin, "node-one").await)
        },
    )
    .await;

    let admin = format!("http://{}", a1.admin);
    let output = run(&["members", "--admin", &admin]);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PARTNER"),
        "{table}"
    );
    let row = |id: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(id))
            .copied()
            .unwrap_or_default()
    };
    let one: Vec<&str> = row("node-one").split_whitespace().collect();
    assert_eq!(
        one,
        [
            "node-one",
            "agent",
            "ready",
            &a1.gossip.to_string(),
            "live",
            "-",
            "(unprotected)",
            "-",
            "0",
            "0",
            "-"
        ]
    );
    let two: Vec<&str> = row("node-two").split_whitespace().collect();
    assert_eq!(
        two,
        [
            "node-two",
            "balancer",
            "ready",
            &b1.gossip.to_string(),
            "live",
            "-",
            "-",
            "-",
            "-",
            "-"
        ]
    );
    assert!(table.contains("2 live, 0 dead"), "{table}");

    let output = run(&["members", "--admin", &b1.admin.to_string(), "--json"]);
    assert!(output.status.success());
    let view: MembersResponse = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(view.self_id, "node-two");
    assert_eq!(view.members.len(), 2);
}

#[test]
fn keygen_prints_a_fresh_key_and_certs_makes_a_ca_and_node_certificates() {
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let output = run(&["keygen"]);
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap()
        })
        .collect();
    for key in &keys {
        tandem_cluster::keyring::ClusterKey::parse(key).expect("keygen prints a cluster key");
    }
    assert_ne!(keys[0], keys[1]);

    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let issue = |node: &str| run(&["certs", "issue", node, "--dir", certs_arg]);
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let early = issue("node-1");
    assert!(!early.status.success());
    assert!(
        stderr(&early).contains("tandem certs init"),
        "{}",
        stderr(&early)
    );
    assert!(run(&["certs", "init", "--dir", certs_arg]).status.success());
    assert!(issue("node-1").status.success());
    for file in ["ca.pem", "ca.key", "node-1.pem", "node-1.key"] {
        assert!(certs.join(file).exists(), "{file}");
    }
    use std::os::unix::fs::PermissionsExt;
    for secret in ["ca.key", "node-1.key"] {
        let mode = std::fs::metadata(certs.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is readable by others");
    }
    let again = issue("node-1");
    assert!(!again.status.success() && stderr(&again).contains("exists"));
    let bad = issue("not a name!");
    assert!(!bad.status.success() && stderr(&bad).contains("certificate name"));
    // Running init again keeps the CA (and so every certificate issued from it).
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    assert!(run(&["certs", "init", "--dir", certs_arg]).status.success());
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca);
}
