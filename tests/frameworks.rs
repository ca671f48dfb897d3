//! Frameworks' own session stores and caches, through their own client libraries and
//! unchanged, against a paired agent: each client script runs against `redis-server` and
//! against the agent, checks what it gets, and prints a transcript; the two transcripts
//! must be equal. Then the agent that served them is killed, and its partner must hold
//! exactly what it held.
//!
//! The clients are Debian's (`php-redis`, `php-illuminate-cache` and `-redis`,
//! `ruby-redis-rack`, `ruby-activesupport`, `node-redis`) and PyPI's (`Django`,
//! `django-redis`, `redis`), installed by `.ci/run`.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio::io::AsyncWriteExt;

use support::{
    Agent, RedisServer, capability, differences, dump, has_program, start_pair, wait_for_port,
};

/// One client: the program that runs its script, the arguments with which that program
/// succeeds only where the client library is installed, and the script with its
/// arguments after the server's host and port.
struct Client {
    name: &'static str,
    program: &'static str,
    probe: &'static [&'static str],
    script: &'static str,
    args: &'static [&'static str],
}

const CLIENTS: &[Client] = &[
    Client {
        name: "Django 5 with django-redis and its own RedisCache",
        program: "python3",
        probe: &["-c", "import django, django_redis"],
        script: "django_cache.py",
        args: &["1"],
    },
    Client {
        name: "redis-py with a database number",
        program: "python3",
        probe: &["-c", "import redis"],
        script: "redis_py_db.py",
        args: &[],
    },
    Client {
        name: "php with phpredis' session handler (php-redis)",
        program: "php",
        probe: &["-r", "exit(extension_loaded('redis') ? 0 : 1);"],
        script: "phpredis_session.php",
        args: &[],
    },
    Client {
        name: "php with phpredis' session handler and its locking (php-redis)",
        program: "php",
        probe: &["-r", "exit(extension_loaded('redis') ? 0 : 1);"],
        script: "phpredis_locking.php",
        args: &[],
    },
    Client {
        name: "Laravel's Redis cache store and locks (php-illuminate-cache, php-illuminate-redis)",
        program: "php",
        probe: &[
            "-r",
            "exit(extension_loaded('redis') && is_file('/usr/share/php/Illuminate/Cache/RedisLock.php') && is_file('/usr/share/php/Illuminate/Redis/autoload.php') ? 0 : 1);",
        ],
        script: "laravel_cache.php",
        args: &[],
    },
    Client {
        name: "redis-py's register_script and pubsub() with keyspace events",
        program: "python3",
        probe: &["-c", "import redis"],
        script: "redis_py_scripts.py",
        args: &[],
    },
    Client {
        name: "ruby with Rack::Session::Redis and ActiveSupport's RedisCacheStore",
        program: "ruby",
        probe: &[
            "-e",
            "require 'rack/session/redis'; require 'active_support'",
        ],
        script: "rack_and_rails.rb",
        args: &[],
    },
    Client {
        name: "node-redis 4 (node-redis)",
        program: "node",
        probe: &["-e", "require('redis')"],
        script: "node_redis.js",
        args: &[],
    },
];

impl Client {
    /// The client's program; node with Debian's module directory on its path.
    fn program(&self) -> Command {
        let mut command = Command::new(self.program);
        if self.program == "node" {
            command.env("NODE_PATH", "/usr/share/nodejs");
        }
        command
    }

    fn available(&self) -> bool {
        has_program(self.program)
            && self
                .program()
                .args(self.probe)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    fn command(&self, addr: SocketAddr) -> Command {
        let mut command = self.program();
        command
            .arg(format!(
                "{}/tests/clients/{}",
                env!("CARGO_MANIFEST_DIR"),
                self.script
            ))
            .args(host_port(addr))
            .args(self.args);
        command
    }
}

fn host_port(addr: SocketAddr) -> [String; 2] {
    [addr.ip().to_string(), addr.port().to_string()]
}

/// Runs a client; its transcript, or a failure with what it printed.
fn transcript(client: &Client, addr: SocketAddr, server: &str) -> String {
    let output = client.command(addr).output().unwrap();
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
    let (mut a, b) = start_pair(dir.path(), "agent-a", "agent-b").await;
    let mut ran = 0;
    for client in CLIENTS {
        if !capability(client.name, client.available()) {
            continue;
        }
        let expected = transcript(client, redis.addr, "redis-server");
        let got = transcript(client, a.resp, "the agent");
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

/// Java's serialization of a `java.lang.Long`, as Spring Session's default
/// `JdkSerializationRedisSerializer` writes `creationTime` and `lastAccessedTime`.
fn java_long(value: i64) -> Vec<u8> {
    java_number(
        "java.lang.Long",
        0x3B8B_E490_CC8F_23DF,
        b'J',
        &value.to_be_bytes(),
    )
}

/// A `java.lang.Integer` (`maxInactiveInterval`, in seconds).
fn java_integer(value: i32) -> Vec<u8> {
    java_number(
        "java.lang.Integer",
        0x12E2_A0A4_F781_8738,
        b'I',
        &value.to_be_bytes(),
    )
}

/// An object stream holding one boxed number: its class (name, serial version, one field
/// `value` of type `kind`), its superclass `java.lang.Number`, then the value.
fn java_number(class: &str, serial: u64, kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0xAC, 0xED, 0x00, 0x05, 0x73, 0x72];
    out.extend((class.len() as u16).to_be_bytes());
    out.extend(class.as_bytes());
    out.extend(serial.to_be_bytes());
    out.extend([0x02, 0x00, 0x01, kind, 0x00, 0x05]);
    out.extend(b"value");
    out.extend([0x78, 0x72, 0x00, 0x10]);
    out.extend(b"java.lang.Number");
    out.extend(0x86AC_951D_0B94_E08Bu64.to_be_bytes());
    out.extend([0x02, 0x00, 0x00, 0x78, 0x70]);
    out.extend(value);
    out
}

/// A `java.lang.String` attribute value.
fn java_string(value: &str) -> Vec<u8> {
    let mut out = vec![0xAC, 0xED, 0x00, 0x05, 0x74];
    out.extend((value.len() as u16).to_be_bytes());
    out.extend(value.as_bytes());
    out
}

/// What Spring Session's `RedisSessionRepository` (spring-session-data-redis 3.x, the
/// default repository, through Spring Data Redis and Lettuce 6) sends for a session's life:
/// Lettuce's handshake, create and save, find, save an attribute, change the session id
/// (Spring Security does at every login), change the timeout, remove an attribute, delete,
/// and a session whose timeout already passed. `db` is Spring Boot's
/// `spring.data.redis.database`.
fn spring_session_commands(db: u32, now_ms: i64) -> Vec<Vec<Vec<u8>>> {
    let key = |id: &str| format!("spring:session:sessions:{id}").into_bytes();
    let (first, second) = (
        "5b0a3c1e-8d4f-4a7b-9c2e-1f6d8e0a4b3c",
        "e2c4a6b8-0d1f-4e3a-8b5c-7d9e1f3a5b7c",
    );
    let c = |words: Vec<Vec<u8>>| words;
    let w = |text: &str| text.as_bytes().to_vec();
    let deadline = |last: i64, seconds: i64| w(&(last + seconds * 1_000).to_string());
    let mut commands = vec![c(vec![w("HELLO"), w("3")])];
    if db > 0 {
        commands.push(c(vec![w("SELECT"), w(&db.to_string())]));
    }
    commands.extend([
        c(vec![w("CLIENT"), w("SETINFO"), w("lib-name"), w("Lettuce")]),
        c(vec![
            w("CLIENT"),
            w("SETINFO"),
            w("lib-ver"),
            w("6.6.0.RELEASE"),
        ]),
        // createSession(), setAttribute("user", "alice"), save(): a new session.
        c(vec![
            w("HMSET"),
            key(first),
            w("creationTime"),
            java_long(now_ms),
            w("maxInactiveInterval"),
            java_integer(1800),
            w("lastAccessedTime"),
            java_long(now_ms),
            w("sessionAttr:user"),
            java_string("alice"),
        ]),
        c(vec![w("PEXPIREAT"), key(first), deadline(now_ms, 1800)]),
        // findById()
        c(vec![w("HGETALL"), key(first)]),
        // The next request: lastAccessedTime and a new attribute, then save().
        c(vec![w("EXISTS"), key(first)]),
        c(vec![
            w("HMSET"),
            key(first),
            w("lastAccessedTime"),
            java_long(now_ms + 5_000),
            w("sessionAttr:cart"),
            java_string("3 items"),
        ]),
        c(vec![
            w("PEXPIREAT"),
            key(first),
            deadline(now_ms + 5_000, 1800),
        ]),
        // Login: changeSessionId(), then save() renames the key.
        c(vec![w("EXISTS"), key(first)]),
        c(vec![w("RENAME"), key(first), key(second)]),
        c(vec![
            w("HMSET"),
            key(second),
            w("lastAccessedTime"),
            java_long(now_ms + 9_000),
        ]),
        c(vec![
            w("PEXPIREAT"),
            key(second),
            deadline(now_ms + 9_000, 1800),
        ]),
        c(vec![w("HGETALL"), key(first)]),
        c(vec![w("HGETALL"), key(second)]),
        // A second save of the old id (a concurrent request): the key is gone.
        c(vec![w("EXISTS"), key(first)]),
        c(vec![w("RENAME"), key(first), key(second)]),
        // setMaxInactiveInterval(1 hour), removeAttribute("cart") (an empty value).
        c(vec![w("EXISTS"), key(second)]),
        c(vec![
            w("HMSET"),
            key(second),
            w("maxInactiveInterval"),
            java_integer(3600),
            w("sessionAttr:cart"),
            Vec::new(),
        ]),
        c(vec![
            w("PEXPIREAT"),
            key(second),
            deadline(now_ms + 9_000, 3600),
        ]),
        c(vec![w("HGETALL"), key(second)]),
        // logout: deleteById(), then a findById() of the deleted session.
        c(vec![w("DEL"), key(second)]),
        c(vec![w("HGETALL"), key(second)]),
        // A session saved with a timeout already passed (a negative interval) is gone.
        c(vec![
            w("HMSET"),
            key(first),
            w("creationTime"),
            java_long(now_ms),
            w("maxInactiveInterval"),
            java_integer(-1),
            w("lastAccessedTime"),
            java_long(now_ms),
        ]),
        c(vec![w("PEXPIREAT"), key(first), deadline(now_ms, -1)]),
        c(vec![w("HGETALL"), key(first)]),
        c(vec![w("EXISTS"), key(first)]),
    ]);
    commands
}

/// Spring Session cannot be installed here (no Maven): its command sequence, read in its
/// source, is replayed against both servers; every reply must be equal. `HELLO`'s reply is
/// compared by kind (it carries each server's name, version and client id), `CLIENT
/// SETINFO`'s not at all (below), and a hash's
/// map by its entries: Redis keeps a hash with values over 64 bytes (a serialized Long is
/// 82) in a table whose order is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_session_repository_commands_reply_as_on_redis_server() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "spring", &[]);
    wait_for_port(agent.resp).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for db in [0, 1] {
        let commands = spring_session_commands(db, now_ms);
        let want = replay(redis.addr, &commands).await;
        let got = replay(agent.resp, &commands).await;
        for ((command, want), got) in commands.iter().zip(&want).zip(&got) {
            let name = String::from_utf8_lossy(&command[0]).into_owned();
            let same = match name.as_str() {
                "HELLO" => want.first() == Some(&b'%') && got.first() == Some(&b'%'),
                // Redis 7.2's CLIENT SETINFO, which the agent answers as 7.2 does; Lettuce
                // ignores its reply (redis-server 7.0 here does not know it).
                "CLIENT" => got == b"+OK\r\n",
                "HGETALL" => resp3_frame(want) == resp3_frame(got),
                _ => want == got,
            };
            assert!(
                same,
                "database {db}: {} {:?}:\nredis-server: {:?}\nagent:        {:?}",
                name,
                command[1..]
                    .iter()
                    .map(|a| String::from_utf8_lossy(a))
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(got)
            );
        }
        println!("database {db}: {} replies equal", commands.len());
    }
}

async fn replay(addr: SocketAddr, commands: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut client = support::Resp::connect(addr).await;
    let mut replies = Vec::new();
    for command in commands {
        replies.push(client.call_raw(command).await);
    }
    replies
}

/// A RESP3 reply decoded; maps compare by their entries.
fn resp3_frame(bytes: &[u8]) -> redis_protocol::resp3::types::OwnedFrame {
    redis_protocol::resp3::decode::complete::decode(bytes)
        .unwrap()
        .expect("a whole reply")
        .0
}

/// The session stores whose clients cannot be installed here, replayed from their sources
/// (`tests/replays/<name>.jsonl`, each line's comment says where it was read): Redisson's
/// Tomcat manager (EVALSHA, then SCRIPT LOAD on NOSCRIPT), ASP.NET Core's RedisCache (its
/// Lua scripts and StackExchange.Redis' handshake), phpredis' session locking (the
/// release EVAL), Laravel's cache and `lock()->block()`, and Spring Session's indexed
/// repository, whose listener connection (`<name>_subscriber.jsonl`) subscribes to
/// keyspace events and session-created messages while the commands run.
const REPLAYS: &[(&str, Option<&str>)] = &[
    ("redisson_tomcat", None),
    ("aspnetcore_rediscache", None),
    ("phpredis_locking", None),
    ("laravel_cache_lock", None),
    ("spring_indexed", Some("spring_indexed_subscriber")),
];

/// One command of a replay, and how its reply is compared.
struct Replayed {
    args: Vec<Vec<u8>>,
    compare: String,
}

/// The commands of `tests/replays/<name>.jsonl` with the times filled in: `${NOW_MS}`,
/// `${NOW_S}` and `${NOW_TICKS}` (.NET's 100 ns ticks since year 1), each optionally
/// `+n` or `-n`. An argument of characters up to U+00FF is sent as those bytes (the files
/// write binary values so), any other as UTF-8.
fn replay_file(name: &str, now_ms: i64) -> Vec<Replayed> {
    let path = format!("{}/tests/replays/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let fill = |arg: &str| -> String {
        let mut out = String::new();
        let mut rest = arg;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("a closing brace") + start;
            let placeholder = &rest[start + 2..end];
            let (name, offset) = match placeholder.find(['+', '-']) {
                Some(at) => (
                    &placeholder[..at],
                    placeholder[at..]
                        .trim_start_matches('+')
                        .parse::<i64>()
                        .unwrap(),
                ),
                None => (placeholder, 0),
            };
            let base = match name {
                "NOW_MS" => now_ms,
                "NOW_S" => now_ms / 1000,
                "NOW_TICKS" => now_ms * 10_000 + 621_355_968_000_000_000,
                other => panic!("{path}: unknown placeholder {other}"),
            };
            out.push_str(&(base + offset).to_string());
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    };
    let bytes = |arg: String| -> Vec<u8> {
        if arg.chars().all(|c| (c as u32) < 256) {
            arg.chars().map(|c| c as u8).collect()
        } else {
            arg.into_bytes()
        }
    };
    text.lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| {
            let item: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{path}: {err}: {line}"));
            let args = item["cmd"]
                .as_array()
                .expect("a cmd array")
                .iter()
                .map(|arg| bytes(fill(arg.as_str().expect("string arguments"))))
                .collect();
            let compare = item["compare"].as_str().unwrap_or("exact").to_string();
            Replayed { args, compare }
        })
        .collect()
}

/// A reply as its type byte and, for aggregates, its items in order, sorted for "map"
/// comparisons (pairs of a map or a flat field/value array, members of a set).
fn unordered(bytes: &[u8]) -> Vec<Vec<u8>> {
    use redis_protocol::resp3::types::OwnedFrame;
    let frame = resp3_frame_or_resp2(bytes);
    let encode = |frame: &OwnedFrame| format!("{frame:?}").into_bytes();
    let mut items: Vec<Vec<u8>> = match &frame {
        OwnedFrame::Map { data, .. } => data
            .iter()
            .map(|(k, v)| [encode(k), encode(v)].concat())
            .collect(),
        OwnedFrame::Set { data, .. } => data.iter().map(encode).collect(),
        OwnedFrame::Array { data, .. } if data.len() % 2 == 0 => data
            .chunks(2)
            .map(|pair| [encode(&pair[0]), encode(&pair[1])].concat())
            .collect(),
        OwnedFrame::Array { data, .. } => data.iter().map(encode).collect(),
        other => vec![encode(other)],
    };
    items.sort();
    items.insert(0, bytes[..1].to_vec());
    items
}

/// A reply decoded as RESP3 (which reads RESP2's frames too, but `$-1` and `*-1`).
fn resp3_frame_or_resp2(bytes: &[u8]) -> redis_protocol::resp3::types::OwnedFrame {
    match redis_protocol::resp3::decode::complete::decode(bytes) {
        Ok(Some((frame, _))) => frame,
        _ => redis_protocol::resp3::types::OwnedFrame::SimpleString {
            data: bytes.to_vec(),
            attributes: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_session_stores_reply_as_on_redis_server() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "replays", &[]);
    wait_for_port(agent.resp).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (name, subscriber) in REPLAYS {
        let replay = replay_file(name, now_ms);
        let listener = subscriber.map(|file| replay_file(file, now_ms));
        let commands: Vec<Vec<Vec<u8>>> = replay.iter().map(|r| r.args.clone()).collect();
        let mut replies = Vec::new();
        let mut heard = Vec::new();
        for addr in [redis.addr, agent.resp] {
            let mut client = support::Resp::connect(addr).await;
            // Each replay starts from an empty server, as its comments assume.
            client.call_raw(&["FLUSHALL"]).await;
            client.call_raw(&["SCRIPT", "FLUSH"]).await;
            client
                .call_raw(&["CONFIG", "SET", "notify-keyspace-events", ""])
                .await;
            let mut listening = None;
            if let Some(listener) = &listener {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut got = Vec::new();
                for item in listener {
                    stream
                        .write_all(&support::encode_command(&item.args))
                        .await
                        .unwrap();
                    got.push((
                        item,
                        support::received_until_quiet(
                            &mut stream,
                            std::time::Duration::from_millis(200),
                        )
                        .await,
                    ));
                }
                heard.push(got);
                listening = Some(stream);
            }
            let mut got = Vec::new();
            for command in &commands {
                got.push(client.call_raw(command).await);
            }
            replies.push(got);
            if let Some(mut stream) = listening {
                // What the listener heard while the commands ran.
                let pushes = support::received_until_quiet(
                    &mut stream,
                    std::time::Duration::from_millis(500),
                )
                .await;
                heard.last_mut().unwrap().push((&replay[0], pushes));
            }
        }
        if let [want, got] = &heard[..] {
            let pushes = &want.last().expect("the listener's pushes").1;
            assert!(
                pushes.starts_with(b">"),
                "{name}'s listener heard no push on redis-server: {:?}",
                String::from_utf8_lossy(pushes)
            );
            println!("{name}'s listener: {} bytes of pushes equal", pushes.len());
            for ((item, want), (_, got)) in want.iter().zip(got) {
                let same = match item.compare.as_str() {
                    "none" => true,
                    "kind" => want.first() == got.first(),
                    _ => want == got,
                };
                assert!(
                    same,
                    "{name}'s listener after {:?}:\nredis-server: {:?}\nagent:        {:?}",
                    String::from_utf8_lossy(&item.args[0]),
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(got)
                );
            }
        }
        let mut scripts = 0;
        for ((item, want), got) in replay.iter().zip(&replies[0]).zip(&replies[1]) {
            let same = match item.compare.as_str() {
                "none" => true,
                "kind" => want.first() == got.first(),
                "map" => unordered(want) == unordered(got),
                _ => want == got,
            };
            let words: Vec<String> = item
                .args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if words[0].to_ascii_uppercase().starts_with("EVAL") {
                scripts += 1;
            }
            assert!(
                same,
                "{name}: {words:?}\nredis-server: {:?}\nagent:        {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(got)
            );
        }
        assert!(scripts > 0 || subscriber.is_some(), "{name} runs no script");
        println!("{name}: {} replies equal ({scripts} scripts)", replay.len());
    }
}
