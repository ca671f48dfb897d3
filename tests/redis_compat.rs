//! The agent answers like Redis: the same command script against `redis-server` and an
//! agent must produce byte-identical replies. Real clients (`redis-cli`, redis-py) work
//! unchanged.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::{
    Agent, RedisServer, Resp, capability, has_program, has_python_modules, wait_for_port,
};

/// Commands whose replies must match Redis byte for byte. Keys are chosen so that no reply
/// depends on hash-table order or on the millisecond a command ran.
const SCRIPT: &[&[&str]] = &[
    &["PING"],
    &["PING", "hello"],
    &["ECHO", "x y"],
    &["SET", "k", "v"],
    &["GET", "k"],
    &["SET", "k", "v2", "NX"],
    &["SET", "k", "v3", "XX", "GET"],
    &["GET", "k"],
    &["SET", "k", "v", "EX", "0"],
    &["SET", "k", "v", "EX", "-5"],
    &["SET", "k", "v", "EX", "abc"],
    &["SET", "k", "v", "PX", "100", "EX", "100"],
    &["SET", "k", "v", "KEEPTTL", "EX", "10"],
    &["SET", "k", "v", "NX", "XX"],
    &["SET", "k", "v", "BOGUS"],
    &["SET", "k"],
    &["SET", "ttl", "v", "EX", "100"],
    &["TTL", "ttl"],
    &["SET", "ttl", "v2", "KEEPTTL"],
    &["TTL", "ttl"],
    &["SET", "ttl", "v3"],
    &["TTL", "ttl"],
    &["SETEX", "k2", "100", "v"],
    &["SETEX", "k2", "0", "v"],
    &["SETEX", "k2", "x", "v"],
    &["TTL", "k2"],
    &["PSETEX", "k3", "100000", "v"],
    &["TTL", "k3"],
    &["SETNX", "k", "v"],
    &["SETNX", "k4", "v"],
    &["GETDEL", "k4"],
    &["GETDEL", "k4"],
    &["GETEX", "k2", "PERSIST"],
    &["TTL", "k2"],
    &["GETEX", "k2", "EX", "50"],
    &["TTL", "k2"],
    &["GETEX", "k2", "EX", "50", "PERSIST"],
    &["GETEX", "k2", "EX", "0"],
    &["GETEX", "nokey"],
    &["MSET", "a", "1", "b", "2"],
    &["MSET", "a"],
    &["MSET", "a", "1", "b"],
    &["MGET", "a", "b", "nokey"],
    &["INCR", "a"],
    &["INCRBY", "a", "10"],
    &["DECR", "a"],
    &["DECRBY", "a", "3"],
    &["INCR", "k"],
    &["INCRBY", "a", "x"],
    &["SET", "big", "9223372036854775807"],
    &["INCR", "big"],
    &["DECRBY", "a", "-9223372036854775808"],
    &["SET", "spaced", " 1"],
    &["INCR", "spaced"],
    &["INCR", "fresh"],
    &["DEL", "a", "b", "nokey"],
    &["UNLINK", "k"],
    &["EXISTS", "k2", "k2", "nokey"],
    &["TYPE", "k2"],
    &["TYPE", "nokey"],
    &["EXPIRE", "k2", "100"],
    &["TTL", "k2"],
    &["EXPIRE", "k2", "50", "GT"],
    &["EXPIRE", "k2", "500", "GT"],
    &["TTL", "k2"],
    &["EXPIRE", "k2", "100", "LT"],
    &["EXPIRE", "k2", "100", "NX"],
    &["EXPIRE", "k2", "100", "XX"],
    &["EXPIRE", "k2", "100", "NX", "XX"],
    &["EXPIRE", "k2", "100", "GT", "LT"],
    &["EXPIRE", "k2", "100", "FOO"],
    &["EXPIRE", "k2", "x"],
    &["EXPIRE", "nokey", "100"],
    &["PEXPIRE", "k2", "200000"],
    &["TTL", "k2"],
    &["EXPIREAT", "k2", "4102444800"],
    &["EXISTS", "k2"],
    &["PEXPIREAT", "k2", "4102444800000"],
    &["PERSIST", "k2"],
    &["PERSIST", "k2"],
    &["TTL", "k2"],
    &["PTTL", "k2"],
    &["PTTL", "nokey"],
    &["TTL", "nokey"],
    &["EXPIRE", "k2", "-1"],
    &["EXISTS", "k2"],
    &["EXPIREAT", "k3", "1"],
    &["EXISTS", "k3"],
    &["HSET", "h", "f1", "v1", "f2", "v2"],
    &["HSET", "h", "f1", "x"],
    &["HSET", "h", "z", "1", "a", "2", "z", "3"],
    &["HSET", "h"],
    &["HSET", "h", "f"],
    &["HSET", "h", "f", "v", "g"],
    &["HMSET", "h", "f3", "v3"],
    &["HGET", "h", "f1"],
    &["HGET", "h", "nof"],
    &["HGET", "nokey", "f"],
    &["HMGET", "h", "f1", "nof", "f2"],
    &["HMGET", "nokey", "a"],
    &["HGETALL", "h"],
    &["HKEYS", "h"],
    &["HVALS", "h"],
    &["HLEN", "h"],
    &["HLEN", "nokey"],
    &["HEXISTS", "h", "f1"],
    &["HEXISTS", "h", "no"],
    &["HDEL", "h", "f1", "f1", "nof"],
    &["HGETALL", "h"],
    &["HINCRBY", "h", "n", "5"],
    &["HINCRBY", "h", "n", "-7"],
    &["HINCRBY", "h", "f2", "1"],
    &["HINCRBY", "h", "n", "x"],
    &["HSETNX", "h", "f2", "x"],
    &["HSETNX", "h", "f9", "x"],
    &["HGETALL", "h"],
    &["GET", "h"],
    &["SET", "s", "v"],
    &["HGET", "s", "f"],
    &["HSET", "s", "f", "v"],
    &["HGETALL", "s"],
    &["HGETALL", "nokey"],
    &["HDEL", "nokey", "f"],
    &["HSET", "gone", "f", "v"],
    &["HDEL", "gone", "f"],
    &["EXISTS", "gone"],
    &["SET", "h", "overwrites a hash"],
    &["GET", "h"],
    &["GETEX", "h", "PX", "100000"],
    &["DBSIZE"],
    &["KEYS", "ttl"],
    &["KEYS", "nomatch*"],
    &["SCAN", "0", "MATCH", "ttl"],
    &["SCAN", "0", "MATCH", "ttl", "TYPE", "string"],
    &["SCAN", "0", "MATCH", "ttl", "TYPE", "hash"],
    &["SCAN", "x"],
    &["SCAN", "0", "COUNT", "0"],
    &["SCAN", "0", "COUNT", "x"],
    &["SCAN", "0", "BOGUS"],
    &["SELECT", "0"],
    &["SELECT", "x"],
    &["FOO"],
    &["foo", "a", "b"],
    &["GET"],
    &["GET", "a", "b"],
    &["CLIENT", "SETNAME", "myname"],
    &["CLIENT", "GETNAME"],
    &["CLIENT", "SETNAME", "a b"],
    &["CLIENT", "SETNAME"],
    &["CLIENT", "SETNAME", ""],
    &["CLIENT", "GETNAME"],
    &["CLIENT", "FOO"],
    &["AUTH", "x"],
    &["AUTH", "a", "b"],
    &["AUTH", "default", "anything"],
    &["HELLO", "4"],
    &["HELLO", "x"],
    &["QUIT"],
];

async fn replies(addr: SocketAddr, script: &[&[&str]]) -> Vec<Vec<u8>> {
    let mut client = Resp::connect(addr).await;
    let mut replies = Vec::new();
    for args in script {
        replies.push(client.call_raw(args).await);
    }
    replies
}

/// Runs `script` on a fresh connection to each server and fails on any reply that differs.
async fn assert_same_replies(redis: SocketAddr, agent: SocketAddr, script: &[&[&str]]) {
    let expected = replies(redis, script).await;
    let actual = replies(agent, script).await;
    let mut differences = Vec::new();
    for ((args, want), got) in script.iter().zip(&expected).zip(&actual) {
        if want != got {
            differences.push(format!(
                "{args:?}\n   redis:  {:?}\n   tandem: {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(got)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_match_redis_server_byte_for_byte() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "compat", &[]);
    wait_for_port(agent.resp).await;
    assert_same_replies(redis.addr, agent.resp, SCRIPT).await;
}

/// A script that loops past the busy threshold: other clients wait until the threshold,
/// then get `BUSY` (all but `SCRIPT KILL` and what Redis lets through); `SCRIPT KILL`
/// stops it and its caller gets the kill error; a script that wrote cannot be killed.
/// Every reply byte-equal with redis-server's under the same threshold (1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_script_replies_as_redis_server_and_script_kill_stops_it() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start_with(&["--busy-reply-threshold", "1000"]).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "busy", &["--script-time-limit", "1s"]);
    wait_for_port(agent.resp).await;
    let mut transcripts = Vec::new();
    for addr in [redis.addr, agent.resp] {
        let mut transcript = Vec::new();
        let mut looping = Resp::connect(addr).await;
        let mut other = Resp::connect(addr).await;
        transcript.push(other.call_raw(&["SCRIPT", "KILL"]).await);
        let eval = |body: &str| {
            format!(
                "*3\r\n$4\r\nEVAL\r\n${}\r\n{body}\r\n$1\r\n0\r\n",
                body.len()
            )
        };
        looping.send_raw(eval("while true do end").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Before the threshold a command waits; past it, it is refused.
        let started = std::time::Instant::now();
        transcript.push(other.call_raw(&["GET", "k"]).await);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(600),
            "{addr}: did not wait ({waited:?}, redis-server at {})",
            redis.addr
        );
        transcript.push(other.call_raw(&["SET", "k", "v"]).await);
        transcript.push(other.call_raw(&["MULTI"]).await);
        transcript.push(other.call_raw(&["PING"]).await);
        transcript.push(other.call_raw(&["DISCARD"]).await);
        transcript.push(other.call_raw(&["SCRIPT", "KILL"]).await);
        transcript.push(looping.reply_bytes().await);
        transcript.push(other.call_raw(&["SCRIPT", "KILL"]).await);
        transcript.push(other.call_raw(&["GET", "k"]).await);
        // A script that wrote runs to its end.
        looping
            .send_raw(eval("redis.call('set', 'k', 'w') while true do end").as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        transcript.push(other.call_raw(&["PING"]).await);
        transcript.push(other.call_raw(&["SCRIPT", "KILL"]).await);
        transcripts.push(transcript);
    }
    let show = |t: &[Vec<u8>]| {
        t.iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(show(&transcripts[1]), show(&transcripts[0]));
    assert!(
        show(&transcripts[1])[7].starts_with("-ERR Script killed by user with SCRIPT KILL"),
        "{:?}",
        show(&transcripts[1])
    );
}

/// Scripts pipelined with other commands in one write (a client's consecutive scripts run
/// in one hand-over to the scripts' thread): every reply, in order, byte-equal with
/// redis-server's, in RESP2 and RESP3, including more scripts in a row than one hand-over
/// takes, scripts queued in a transaction, failing scripts, and `SELECT` inside a script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_scripts_reply_as_redis_server() {
    use tokio::io::AsyncWriteExt;
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "pipelined-scripts", &[]);
    wait_for_port(agent.resp).await;
    let eval = |body: &str, rest: &[&str]| {
        let mut args: Vec<Vec<u8>> = vec![b"EVAL".to_vec(), body.as_bytes().to_vec()];
        args.extend(rest.iter().map(|a| a.as_bytes().to_vec()));
        support::encode_command(&args)
    };
    let plain = |args: &[&str]| {
        support::encode_command(
            &args
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    };
    let incr = "return redis.call('incr', KEYS[1])";
    let mut pipeline = Vec::new();
    pipeline.extend(plain(&["FLUSHALL"]));
    pipeline.extend(eval(
        "return redis.call('set', KEYS[1], ARGV[1])",
        &["1", "k", "v"],
    ));
    pipeline.extend(eval("return redis.call('get', KEYS[1])", &["1", "k"]));
    pipeline.extend(plain(&["APPEND", "k", "w"]));
    pipeline.extend(eval("return redis.call('get', KEYS[1])", &["1", "k"]));
    for _ in 0..150 {
        pipeline.extend(eval(incr, &["1", "n"]));
    }
    pipeline.extend(plain(&["GET", "n"]));
    pipeline.extend(plain(&[
        "EVALSHA",
        "ffffffffffffffffffffffffffffffffffffffff",
        "0",
    ]));
    pipeline.extend(eval("return redis.call('nosuchcommand')", &["0"]));
    pipeline.extend(eval("return redis.pcall('incr', KEYS[1])", &["1", "k"]));
    pipeline.extend(eval(
        "return {1, 'two', {3, false}, redis.status_reply('ok')}",
        &["0"],
    ));
    pipeline.extend(eval("return redis.call('hgetall', KEYS[1])", &["1", "h"]));
    pipeline.extend(eval(
        "redis.call('hset', KEYS[1], 'a', '1', 'b', '2') redis.setresp(3) return redis.call('hgetall', KEYS[1])",
        &["1", "h"],
    ));
    pipeline.extend(eval(
        "redis.call('select', 1) return redis.call('set', 'x', 'in-db-1')",
        &["0"],
    ));
    pipeline.extend(plain(&["GET", "x"]));
    pipeline.extend(plain(&["MULTI"]));
    pipeline.extend(eval(incr, &["1", "n"]));
    pipeline.extend(plain(&["INCR", "n"]));
    pipeline.extend(plain(&["EXEC"]));
    pipeline.extend(eval("return 3.99", &["0"]));
    pipeline.extend(eval("syntax error here", &["0"]));
    pipeline.extend(plain(&["GET", "n"]));
    let mut transcripts = Vec::new();
    for protocol in ["2", "3"] {
        let mut received = Vec::new();
        for addr in [redis.addr, agent.resp] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut all = plain(&["HELLO", protocol]);
            all.extend(&pipeline);
            stream.write_all(&all).await.unwrap();
            let replies =
                support::received_until_quiet(&mut stream, Duration::from_millis(300)).await;
            received.push(String::from_utf8_lossy(&replies).into_owned());
        }
        // HELLO's own reply names the server and its version: compared from the first
        // reply after it.
        let after_hello =
            |text: &str| text[text.find("+OK\r\n").expect("FLUSHALL's reply")..].to_string();
        let (theirs, ours) = (after_hello(&received[0]), after_hello(&received[1]));
        assert!(theirs.contains(":152\r\n"), "redis-server: {theirs}");
        assert_eq!(ours, theirs, "RESP{protocol}");
        transcripts.push(ours);
    }
    assert_ne!(
        transcripts[0], transcripts[1],
        "RESP3 differs from RESP2 (the map)"
    );
}

/// Pub/sub between two clients (`tests/compat/pubsub.txt`: each line names the client that
/// sends it): after each command, every frame either client received within a moment is
/// compared with redis-server's, in RESP2 (subscribed-mode rules) and RESP3 (pushes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_replies_as_redis_server() {
    two_client_script("pubsub").await;
}

/// Keyspace notifications (`tests/compat/keyspace_events.txt`): one client listens to
/// every keyspace and keyevent channel while the other writes with every command family,
/// in a script and a transaction too; each event compared with redis-server's, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_are_redis_servers() {
    two_client_script("keyspace_events").await;
}

/// Runs a two-client script of `tests/compat/` on redis-server and on an agent, in RESP2
/// and RESP3, and compares everything each client received after each line.
async fn two_client_script(name: &str) {
    use tokio::io::AsyncWriteExt;
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), name, &[]);
    wait_for_port(agent.resp).await;
    let script = compat_script(name);
    // Whatever arrives until the connection has been quiet for a moment.
    let quiet = Duration::from_millis(60);
    for protocol in ["2", "3"] {
        let mut transcripts = Vec::new();
        for addr in [redis.addr, agent.resp] {
            let mut setup = Resp::connect(addr).await;
            setup.call_raw(&["FLUSHALL"]).await;
            setup
                .call_raw(&["CONFIG", "SET", "notify-keyspace-events", ""])
                .await;
            let mut clients = Vec::new();
            for _ in 0..2 {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream
                    .write_all(&support::encode_command(&support::cmd(&[
                        &"HELLO", &protocol,
                    ])))
                    .await
                    .unwrap();
                support::received_until_quiet(&mut stream, quiet).await;
                clients.push(stream);
            }
            let mut transcript = Vec::new();
            for words in &script {
                let who: usize = words[0].parse::<usize>().expect("a client number") - 1;
                let args: Vec<Vec<u8>> = words[1..].iter().map(|w| w.as_bytes().to_vec()).collect();
                clients[who]
                    .write_all(&support::encode_command(&args))
                    .await
                    .unwrap();
                let first = support::received_until_quiet(&mut clients[0], quiet).await;
                let second = support::received_until_quiet(&mut clients[1], quiet).await;
                transcript.push((words.join(" "), first, second));
            }
            transcripts.push(transcript);
        }
        for (want, got) in transcripts[0].iter().zip(&transcripts[1]) {
            assert_eq!(
                (
                    String::from_utf8_lossy(&got.1),
                    String::from_utf8_lossy(&got.2)
                ),
                (
                    String::from_utf8_lossy(&want.1),
                    String::from_utf8_lossy(&want.2)
                ),
                "RESP{protocol} {}",
                want.0
            );
        }
    }
}

/// A script that allocates past `--script-memory-bytes` fails with an error; the agent,
/// its other clients and later scripts go on, and the sandbox holds (no global it made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_past_the_memory_limit_fails_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        dir.path(),
        "lua-memory",
        &["--script-memory-bytes", "16000000"],
    );
    wait_for_port(agent.resp).await;
    let mut client = Resp::connect(agent.resp).await;
    let hungry =
        "local t = {} for i = 1, 100000000 do t[i] = string.rep('x', 64) .. i end return #t";
    let reply = client.call_raw(&["EVAL", hungry, "0"]).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR ") && text.contains("memory"),
        "{text:?}"
    );
    let mut other = Resp::connect(agent.resp).await;
    assert_eq!(other.call_raw(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(
        client
            .call_raw(&["EVAL", "return #ARGV", "0", "a", "b"])
            .await,
        b":2\r\n"
    );
    // Repeatedly: the memory is given back each time.
    for _ in 0..3 {
        let again = client.call_raw(&["EVAL", hungry, "0"]).await;
        assert!(
            again.starts_with(b"-ERR "),
            "{:?}",
            String::from_utf8_lossy(&again)
        );
        assert_eq!(client.call_raw(&["EVAL", "return 7", "0"]).await, b":7\r\n");
    }
}

/// A script of `tests/compat/`: one command a line, words split at spaces, a word in
/// double quotes kept whole (`""` is an empty argument); `#` starts a comment line.
fn compat_script(name: &str) -> Vec<Vec<String>> {
    let path = format!("{}/tests/compat/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = Vec::new();
            let mut rest = line.trim();
            while !rest.is_empty() {
                if let Some(quoted) = rest.strip_prefix('"') {
                    let end = quoted.find('"').expect("a closing quote");
                    words.push(quoted[..end].to_string());
                    rest = quoted[end + 1..].trim_start();
                } else {
                    let end = rest.find(' ').unwrap_or(rest.len());
                    words.push(rest[..end].to_string());
                    rest = rest[end..].trim_start();
                }
            }
            words
        })
        .collect()
}

/// The command families of the data model, each a script in `tests/compat/`: every
/// command with its error cases, run on a fresh database of each server in RESP2 and in
/// RESP3; every reply must be byte-equal. (Replies whose order Redis leaves to its hash
/// tables, such as a large set's members, are compared by membership in the scripts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_replies_as_redis_server_in_resp2_and_resp3() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "families", &[]);
    wait_for_port(agent.resp).await;
    let families = [
        "keys",
        "strings",
        "sets",
        "zsets",
        "lists",
        "counts",
        "transactions",
        "scripting",
        "config",
    ];
    let mut differences = Vec::new();
    let mut compared = 0;
    for family in families {
        let script = compat_script(family);
        for protocol in ["2", "3"] {
            let mut outputs = Vec::new();
            for addr in [redis.addr, agent.resp] {
                let mut client = Resp::connect(addr).await;
                client.call_raw(&["FLUSHALL"]).await;
                client
                    .call_raw(&["CONFIG", "SET", "notify-keyspace-events", ""])
                    .await;
                client.call_raw(&["HELLO", protocol]).await;
                let mut replies = Vec::new();
                for args in &script {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    replies.push(client.call_raw(&args).await);
                }
                outputs.push(replies);
            }
            for ((args, want), got) in script.iter().zip(&outputs[0]).zip(&outputs[1]) {
                compared += 1;
                if want != got {
                    differences.push(format!(
                        "{family} RESP{protocol} {args:?}\n   redis:  {:?}\n   tandem: {:?}",
                        String::from_utf8_lossy(want),
                        String::from_utf8_lossy(got)
                    ));
                }
            }
        }
    }
    assert!(compared > 1_000, "{compared} replies compared");
    assert!(
        differences.is_empty(),
        "{} of {compared} replies differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // Blocking list commands are not offered: Redis' unknown-command error, never a hang.
    let mut client = Resp::connect(agent.resp).await;
    let reply = client.call_raw(&["BLPOP", "list", "0"]).await;
    assert!(
        reply.starts_with(b"-ERR unknown command 'BLPOP'"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

const PASSWORD: &str = "a-resp-password-for-tests";

/// With a password: nothing but authentication before it, Redis' errors for wrong ones.
const AUTH_SCRIPT: &[&[&str]] = &[
    &["BOGUS"],
    &["GET"],
    &["PING"],
    &["GET", "k"],
    &["SET", "k", "v"],
    &["HELLO", "3"],
    &["AUTH", "wrong-password"],
    &["AUTH", "someone", PASSWORD],
    &["AUTH", "default", "wrong-password"],
    &["HELLO", "2", "AUTH", "default", "wrong-password"],
    &["AUTH", "a", "b", "c"],
    &["GET", "k"],
    &["AUTH", PASSWORD],
    &["SET", "k", "v"],
    &["GET", "k"],
    &["AUTH", "wrong-again"],
    &["GET", "k"],
    &["AUTH", "default", PASSWORD],
    &["QUIT"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_password_replies_match_redis_server() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("resp.password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let agent = Agent::start(
        dir.path(),
        "compat",
        &["--requirepass-file", password_file.to_str().unwrap()],
    );
    wait_for_port(agent.resp).await;
    assert_same_replies(redis.addr, agent.resp, AUTH_SCRIPT).await;
    // Authentication in one go, as clients that speak RESP3 do it (the reply, server facts,
    // differs from Redis' in its version and id).
    for server in [redis.addr, agent.resp] {
        let mut client = Resp::connect(server).await;
        let hello = ["HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "app"];
        assert!(
            client.call_raw(&hello).await.starts_with(b"%7\r\n"),
            "{server}"
        );
        assert_eq!(
            client.call_raw(&["CLIENT", "GETNAME"]).await,
            b"$3\r\napp\r\n"
        );
    }
    // Before authenticating, a client may send no more than AUTH needs: Redis' limits and
    // words, each ending the connection.
    let long_password = "p".repeat(17_000);
    let too_long: &[&[&str]] = &[&["AUTH", &long_password]];
    let too_many: &[&[&str]] = &[&["AUTH", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]];
    for script in [too_long, too_many] {
        assert_same_replies(redis.addr, agent.resp, script).await;
    }
    let (_, metrics) = support::get(agent.node.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("tandem_resp_auth_failures_total 5\n"),
        "five wrong passwords or users counted (AUTH a b c is a syntax error)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_replies_match_redis_server() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "compat3", &[]);
    wait_for_port(agent.resp).await;
    let script: &[&[&str]] = &[
        &["HSET", "h", "a", "1", "b", "2"],
        &["HGETALL", "h"],
        &["GET", "nokey"],
        &["HGET", "h", "nof"],
        &["HMGET", "h", "a", "nof"],
        &["HGETALL", "nokey"],
        &["MGET", "h", "nokey"],
        &["SCAN", "0", "MATCH", "h"],
    ];
    for addr in [redis.addr, agent.resp] {
        let mut client = Resp::connect(addr).await;
        let hello = client.call_raw(&["HELLO", "3"]).await;
        assert!(
            hello.starts_with(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
            "{hello:?}"
        );
    }
    let mut expected = Vec::new();
    let mut actual = Vec::new();
    for (addr, out) in [(redis.addr, &mut expected), (agent.resp, &mut actual)] {
        let mut client = Resp::connect(addr).await;
        client.call_raw(&["HELLO", "3"]).await;
        for args in script {
            out.push(client.call_raw(args).await);
        }
    }
    for ((args, want), got) in script.iter().zip(&expected).zip(&actual) {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "{args:?}"
        );
    }
    // Text replies whose content is each server's own are verbatim strings in RESP3, as
    // Redis sends them (`=<len>\r\ntxt:...`); compared by their first bytes.
    for args in [
        &["INFO", "keyspace"][..],
        &["CLIENT", "LIST"],
        &["CLIENT", "INFO"],
    ] {
        let mut heads = Vec::new();
        for addr in [redis.addr, agent.resp] {
            let mut client = Resp::connect(addr).await;
            client.call_raw(&["HELLO", "3"]).await;
            let reply = client.call_raw(args).await;
            let head_end = reply.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
            heads.push((
                reply[0],
                reply[head_end..]
                    .iter()
                    .take(4)
                    .copied()
                    .collect::<Vec<u8>>(),
            ));
        }
        assert_eq!(heads[1], heads[0], "{args:?}");
        assert_eq!(heads[0], (b'=', b"txt:".to_vec()), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_split_frames_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "pipeline", &["--max-value-bytes", "1024"]);
    wait_for_port(agent.resp).await;

    // 1,000 pipelined commands in one write, replies in order.
    let mut client = Resp::connect(agent.resp).await;
    let mut batch = Vec::new();
    for i in 0..1_000 {
        let value = format!("value-{i}");
        batch.extend(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\nkey-{i}\r\n${}\r\n{value}\r\n",
                format!("key-{i}").len(),
                value.len()
            )
            .bytes(),
        );
        batch.extend(
            format!(
                "*2\r\n$3\r\nGET\r\n${}\r\nkey-{i}\r\n",
                format!("key-{i}").len()
            )
            .bytes(),
        );
    }
    client.send_raw(&batch).await;
    for i in 0..1_000 {
        assert_eq!(client.reply_bytes().await, b"+OK\r\n");
        let value = format!("value-{i}");
        assert_eq!(
            client.reply_bytes().await,
            format!("${}\r\n{value}\r\n", value.len()).into_bytes()
        );
    }

    // Every command is counted.
    let metrics = support::get(agent.node.admin, "/metrics").await.unwrap().1;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tandem_resp_commands_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(
        counted.is_some_and(|n| n >= 2_000.0),
        "{counted:?}\n{metrics}"
    );

    // One command dribbled in byte by byte.
    let request = b"*3\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n";
    let mut slow = Resp::connect(agent.resp).await;
    for byte in request.iter() {
        slow.send_raw(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        slow.reply_bytes().await,
        b"-ERR wrong number of arguments for 'hset' command\r\n"
    );

    // A value over the limit gets the store's clear error; the connection stays usable.
    let big = "x".repeat(2_000);
    let reply = client.call_raw(&["SET", "big", &big]).await;
    assert_eq!(
        reply,
        b"-ERR value of 2000 bytes exceeds the limit of 1024 bytes\r\n"
    );
    assert_eq!(client.call_raw(&["PING"]).await, b"+PONG\r\n");

    // Malformed input: an error reply, then the connection is closed.
    for garbage in [
        &b"*1\r\n$99999999999\r\n"[..],
        b"*99999999999\r\n",
        b"*2\r\n$3\r\nGET\r\n:1\r\n",
        b"*x\r\n",
    ] {
        let mut bad = Resp::connect(agent.resp).await;
        bad.send_raw(garbage).await;
        let reply = bad.reply_bytes().await;
        assert!(
            reply.starts_with(b"-ERR Protocol error: "),
            "{garbage:?} -> {reply:?}"
        );
        assert!(
            bad.reply_bytes().await.is_empty(),
            "connection closed after {garbage:?}"
        );
    }
    // Random bytes on the port never take the agent down.
    let mut seed = 0x9e37_79b9u32;
    for _ in 0..50 {
        let mut noise = Vec::new();
        for _ in 0..200 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            noise.push(seed as u8);
        }
        let mut bad = Resp::connect(agent.resp).await;
        bad.send_raw(&noise).await;
        drop(bad);
    }
    let mut after = Resp::connect(agent.resp).await;
    assert_eq!(
        after.call_raw(&["GET", "key-999"]).await,
        b"$9\r\nvalue-999\r\n"
    );
    // CLIENT SETINFO (Redis 7.2; clients send it on connect) is accepted and shown.
    assert_eq!(
        after
            .call_raw(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        after
            .call_raw(&["CLIENT", "SETINFO", "LIB-VER", "5.0"])
            .await,
        b"+OK\r\n"
    );
    let info = after.call_raw(&["CLIENT", "INFO"]).await;
    let info = String::from_utf8_lossy(&info);
    assert!(info.contains("lib-name=redis-py lib-ver=5.0"), "{info}");
    let err = after
        .call_raw(&["CLIENT", "SETINFO", "LIB-VER", "a b"])
        .await;
    assert!(
        err.starts_with(b"-ERR lib-ver cannot contain spaces"),
        "{err:?}"
    );
    // An inline command, as typed into telnet.
    after.send_raw(b"EXISTS key-1 key-2\r\n").await;
    assert_eq!(after.reply_bytes().await, b":2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works_unchanged() {
    if !capability("redis-cli", has_program("redis-cli")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "cli", &[]);
    wait_for_port(agent.resp).await;
    let port = agent.resp.port().to_string();
    let cli = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(cli(&["SET", "session:1", "hello", "EX", "60"]), "OK\n");
    assert_eq!(cli(&["GET", "session:1"]), "hello\n");
    assert_eq!(
        cli(&["HSET", "session:2", "user", "ada", "cart", "3"]),
        "2\n"
    );
    assert_eq!(cli(&["HGETALL", "session:2"]), "user\nada\ncart\n3\n");
    assert_eq!(cli(&["--scan", "--pattern", "session:2"]), "session:2\n");
    assert_eq!(cli(&["-3", "HGET", "session:2", "user"]), "ada\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_works_unchanged() {
    if !capability(
        "python3 with the redis module",
        has_python_modules(&["redis"]),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "py", &[]);
    wait_for_port(agent.resp).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/redis_py_client.py"
    );
    let output = Command::new("python3")
        .args([script, "127.0.0.1", &agent.resp.port().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "redis-py checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("redis-py: all checks passed"), "{stdout}");
}
