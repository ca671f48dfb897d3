//! Frameworks' own session stores and caches, through their own client libraries and
//! unchanged, against a paired agent: each client script runs against `redis-server` and
//! against the agent, checks what it gets, and prints a transcript; the two transcripts
//! must be equal. Then the agent that served them is killed, and its partner must hold
//! exactly what it held.
//!
//! The clients are Debian's (`php-redis`, `ruby-redis-rack`, `ruby-activesupport`,
//! `node-redis`) and PyPI's (`Django`, `django-redis`, `redis`), installed by `.ci/run`.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::{
    Agent, RedisServer, capability, differences, dump, has_program, has_python_modules, member,
    wait_for, wait_for_port,
};

/// One client: what it needs, and how to run it against a server.
struct Client {
    name: &'static str,
    available: fn() -> bool,
    command: fn(SocketAddr) -> Command,
}

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn clients() -> Vec<Client> {
    vec![
        Client {
            name: "Django 5 with django-redis and its own RedisCache",
            available: || has_python_modules(&["django", "django_redis"]),
            command: |addr| {
                let mut command = Command::new("python3");
                command
                    .arg(script("django_cache.py"))
                    .args(host_port(addr))
                    .arg("1");
                command
            },
        },
        Client {
            name: "redis-py with a database number",
            available: || has_python_modules(&["redis"]),
            command: |addr| {
                let mut command = Command::new("python3");
                command.arg(script("redis_py_db.py")).args(host_port(addr));
                command
            },
        },
        Client {
            name: "php with phpredis' session handler (php-redis)",
            available: || {
                Command::new("php")
                    .args(["-r", "exit(extension_loaded('redis') ? 0 : 1);"])
                    .status()
                    .is_ok_and(|s| s.success())
            },
            command: |addr| {
                let mut command = Command::new("php");
                command
                    .arg(script("phpredis_session.php"))
                    .args(host_port(addr));
                command
            },
        },
        Client {
            name: "ruby with Rack::Session::Redis and ActiveSupport's RedisCacheStore",
            available: || {
                Command::new("ruby")
                    .args([
                        "-e",
                        "require 'rack/session/redis'; require 'active_support'",
                    ])
                    .status()
                    .is_ok_and(|s| s.success())
            },
            command: |addr| {
                let mut command = Command::new("ruby");
                command
                    .arg(script("rack_and_rails.rb"))
                    .args(host_port(addr));
                command
            },
        },
        Client {
            name: "node-redis 4 (node-redis)",
            available: || {
                has_program("node")
                    && node()
                        .args(["-e", "require('redis')"])
                        .status()
                        .is_ok_and(|s| s.success())
            },
            command: |addr| {
                let mut command = node();
                command.arg(script("node_redis.js")).args(host_port(addr));
                command
            },
        },
    ]
}

/// Node with Debian's module directory on its path.
fn node() -> Command {
    let mut command = Command::new("node");
    command.env("NODE_PATH", "/usr/share/nodejs");
    command
}

fn host_port(addr: SocketAddr) -> [String; 2] {
    [addr.ip().to_string(), addr.port().to_string()]
}

/// Runs a client; its transcript, or a failure with what it printed.
fn transcript(client: &Client, addr: SocketAddr, server: &str) -> String {
    let output = (client.command)(addr).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} against {server} failed:\n{stdout}\n{}",
        client.name,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_session_stores_run_unchanged_on_a_paired_agent() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), "agent-a", &[]);
    let join = ["--join".to_string(), a.node.gossip.to_string()];
    let b_args: Vec<&str> = join.iter().map(String::as_str).collect();
    let b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(a.resp).await;
    wait_for_port(b.resp).await;
    wait_for(
        "agent-a and agent-b to pair",
        Duration::from_secs(30),
        || async {
            member(b.node.admin, "agent-b").await.is_some_and(|m| {
                m.partner.is_some_and(|p| p.node_id == "agent-a") && !m.unprotected
            })
        },
    )
    .await;
    let mut ran = 0;
    for client in clients() {
        if !capability(client.name, (client.available)()) {
            continue;
        }
        let expected = transcript(&client, redis.addr, "redis-server");
        let got = transcript(&client, a.resp, "the agent");
        assert_eq!(
            got, expected,
            "{}: the agent's transcript differs",
            client.name
        );
        println!("{}: same transcript as redis-server", client.name);
        ran += 1;
    }
    // What the clients left behind (sessions, cache entries) is on the partner exactly.
    let held = dump(a.resp).await;
    a.node.kill();
    let on_b = dump(b.resp).await;
    assert!(
        on_b == held,
        "agent-b differs from agent-a:\n{}",
        differences(&held, &on_b)
    );
    if ran > 0 {
        assert!(!held.is_empty(), "the clients left keys to compare");
    }
}
