//! Pairing and replication with real processes: no acknowledged write is lost when a host
//! dies, and redundancy comes back by pairing again.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{
    Agent, Reply, Resp, cmd, differences, dump, join_args, member, wait_for, wait_for_port,
    wait_paired,
};

const PAIR: Duration = Duration::from_secs(30);
const TTL_SECS: u64 = 600;

/// What was written for one key, and acknowledged.
#[derive(Debug, Clone, PartialEq)]
enum Written {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

struct Expected {
    keys: BTreeMap<String, (Written, bool)>,
    written_at: Instant,
}

fn value_for(i: usize) -> Vec<u8> {
    let mut value = format!("value-{i}-").into_bytes();
    value.resize(1024, b'a' + (i % 26) as u8);
    value
}

/// Writes `count` keys through `resp` in pipelined batches: mostly 1 KiB strings, every
/// fifth a hash, every third with a TTL. Only acknowledged writes are expected later.
async fn write_keys(resp: &mut Resp, prefix: &str, count: usize, expected: &mut Expected) {
    for batch in (0..count).collect::<Vec<_>>().chunks(200) {
        let mut commands = Vec::new();
        let mut plan = Vec::new();
        for &i in batch {
            let key = format!("{prefix}:{i}");
            let ttl = i % 3 == 0;
            if i % 5 == 0 {
                let fields: BTreeMap<Vec<u8>, Vec<u8>> = (0..3)
                    .map(|f| (format!("field{f}").into_bytes(), value_for(i + f)))
                    .collect();
                let mut args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), key.clone().into_bytes()];
                for (f, v) in &fields {
                    args.push(f.clone());
                    args.push(v.clone());
                }
                commands.push(args);
                if ttl {
                    commands.push(cmd(&[&"EXPIRE", &key, &TTL_SECS.to_string()]));
                }
                plan.push((key, Written::Hash(fields), ttl));
            } else {
                let value = value_for(i);
                if ttl {
                    commands.push(cmd(&[&"SET", &key, &value, &"EX", &TTL_SECS.to_string()]));
                } else {
                    commands.push(cmd(&[&"SET", &key, &value]));
                }
                plan.push((key, Written::Str(value), ttl));
            }
        }
        let replies = resp.pipeline(&commands).await;
        assert!(
            replies.iter().all(|r| !matches!(r, Reply::Error(_))),
            "a write failed: {replies:?}"
        );
        for (key, written, ttl) in plan {
            expected.keys.insert(key, (written, ttl));
        }
    }
}

/// Checks every expected key on `resp`: same value, and a TTL that is the one written
/// minus the time since (± a second).
async fn check_keys(resp: &mut Resp, expected: &Expected, on: &str) {
    let elapsed = expected.written_at.elapsed().as_secs();
    let keys: Vec<(&String, &(Written, bool))> = expected.keys.iter().collect();
    let mut missing = Vec::new();
    for chunk in keys.chunks(500) {
        let mut commands = Vec::new();
        for (key, (written, _)) in chunk {
            match written {
                Written::Str(_) => commands.push(cmd(&[&"GET", key])),
                Written::Hash(_) => commands.push(cmd(&[&"HGETALL", key])),
            }
            commands.push(cmd(&[&"TTL", key]));
        }
        let replies = resp.pipeline(&commands).await;
        for ((key, (written, ttl)), pair) in chunk.iter().zip(replies.chunks(2)) {
            let got = match (&pair[0], written) {
                (Reply::BulkString(value), Written::Str(_)) => Some(Written::Str(value.clone())),
                (Reply::Array(items), Written::Hash(_)) if !items.is_empty() => {
                    let fields = items
                        .chunks(2)
                        .map(|kv| match kv {
                            [Reply::BulkString(f), Reply::BulkString(v)] => (f.clone(), v.clone()),
                            other => panic!("odd HGETALL reply {other:?}"),
                        })
                        .collect();
                    Some(Written::Hash(fields))
                }
                _ => None,
            };
            if got.as_ref() != Some(written) {
                missing.push(key.to_string());
                continue;
            }
            let Reply::Integer(remaining) = pair[1] else {
                panic!("TTL reply {:?}", pair[1])
            };
            if *ttl {
                let low = TTL_SECS as i64 - elapsed as i64 - 2;
                assert!(
                    (low..=TTL_SECS as i64).contains(&remaining),
                    "{key} TTL {remaining} on {on}"
                );
            } else {
                assert_eq!(remaining, -1, "{key} has no TTL on {on}");
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys missing or different on {on}, e.g. {:?}",
        missing.len(),
        expected.keys.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_a_host_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), "agent-a", &[]);
    let a_join = join_args(&a);
    let b_args: Vec<&str> = a_join.iter().map(String::as_str).collect();
    let mut b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(a.resp).await;
    wait_for_port(b.resp).await;
    let took = wait_paired(&a, &b, "agent-a", "agent-b").await;
    println!("agent-a and agent-b paired after {took:?}");

    // 10,000 keys through A, in sync mode: each acknowledged write is on B too.
    let mut expected = Expected {
        keys: BTreeMap::new(),
        written_at: Instant::now(),
    };
    let mut resp_a = Resp::connect(a.resp).await;
    let started = Instant::now();
    write_keys(&mut resp_a, "session", 10_000, &mut expected).await;
    println!(
        "10,000 sync writes through agent-a took {:?}",
        started.elapsed()
    );
    a.node.kill();

    let mut resp_b = Resp::connect(b.resp).await;
    check_keys(&mut resp_b, &expected, "agent-b after agent-a was killed").await;
    wait_for(
        "agent-b to report agent-a dead and itself unprotected",
        PAIR,
        || async {
            let me = member(b.node.admin, "agent-b").await;
            me.is_some_and(|m| m.partner.is_none() && m.unprotected)
        },
    )
    .await;

    // C joins: it pairs with the survivor and receives everything, including writes made
    // to B while the snapshot is under way.
    let b_join = join_args(&b);
    let c_args: Vec<&str> = b_join.iter().map(String::as_str).collect();
    let c = Agent::start(dir.path(), "agent-c", &c_args);
    wait_for_port(c.resp).await;
    let during_sync = async {
        let mut writer = Resp::connect(b.resp).await;
        let mut extra = Expected {
            keys: BTreeMap::new(),
            written_at: Instant::now(),
        };
        write_keys(&mut writer, "during-sync", 1_000, &mut extra).await;
        extra
    };
    let (extra, took) = tokio::join!(during_sync, wait_paired(&b, &c, "agent-b", "agent-c"));
    println!("agent-c paired with agent-b after {took:?}");
    expected.keys.extend(extra.keys);
    let mut resp_c = Resp::connect(c.resp).await;
    wait_for("agent-c to hold every key", PAIR, || async {
        matches!(Resp::connect(c.resp).await.call(&["DBSIZE"]).await, Reply::Integer(n) if n as usize >= expected.keys.len())
    })
    .await;
    b.node.kill();
    check_keys(&mut resp_c, &expected, "agent-c after agent-b was killed").await;
    let _ = resp_c.call(&["PING"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partner_does_not_block_writes_and_redundancy_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), "agent-a", &["--sync-timeout", "300ms"]);
    let a_join = join_args(&a);
    let b_args: Vec<&str> = a_join.iter().map(String::as_str).collect();
    let b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(a.resp).await;
    wait_paired(&a, &b, "agent-a", "agent-b").await;

    // The partner stops answering (paused, as a hung host would be).
    support::signal(b.node.pid(), "STOP");
    let mut resp_a = Resp::connect(a.resp).await;
    for i in 0..20 {
        let reply = resp_a
            .call(&["SET", &format!("while-paused:{i}"), "v"])
            .await;
        assert_eq!(
            reply,
            Reply::SimpleString(b"OK".to_vec()),
            "writes keep being answered"
        );
    }
    wait_for("agent-a to advertise itself unprotected", PAIR, || async {
        member(a.node.admin, "agent-a")
            .await
            .is_some_and(|m| m.unprotected)
    })
    .await;
    let metrics = support::get(a.node.admin, "/metrics").await.unwrap().1;
    let timeouts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tandem_repl_sync_timeouts_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(timeouts >= 1.0, "sync timeouts are counted\n{metrics}");

    // It comes back: the pair forms again and the partner gets what it missed.
    support::signal(b.node.pid(), "CONT");
    wait_paired(&a, &b, "agent-a", "agent-b").await;
    wait_for(
        "agent-b to hold the writes made while it was paused",
        PAIR,
        || async {
            let mut resp_b = Resp::connect(b.resp).await;
            let commands: Vec<Vec<Vec<u8>>> = (0..20)
                .map(|i| cmd(&[&"EXISTS", &format!("while-paused:{i}")]))
                .collect();
            resp_b
                .pipeline(&commands)
                .await
                .iter()
                .all(|r| *r == Reply::Integer(1))
        },
    )
    .await;
    wait_for("agent-a to be protected again", PAIR, || async {
        member(a.node.admin, "agent-a")
            .await
            .is_some_and(|m| !m.unprotected)
    })
    .await;
}

/// A new partner receives a store of large values: 80 values of 1,000,000 bytes, more than
/// one replication frame may carry (64 MiB), read in one snapshot chunk. Each arrives
/// whole, and the pair forms once (the link never fails on a frame past the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_large_values_arrives_whole() {
    const KEYS: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), "agent-a", &[]);
    wait_for_port(a.resp).await;
    let value = |i: usize| {
        let mut value = format!("{i}:").into_bytes();
        value.resize(1_000_000, b'a' + (i % 26) as u8);
        value
    };
    let mut resp_a = Resp::connect(a.resp).await;
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(10) {
        let commands: Vec<Vec<Vec<u8>>> = batch
            .iter()
            .map(|&i| cmd(&[&"SET", &format!("big:{i}"), &value(i)]))
            .collect();
        let replies = resp_a.pipeline(&commands).await;
        assert!(
            replies.iter().all(|r| !matches!(r, Reply::Error(_))),
            "{replies:?}"
        );
    }
    let a_join = join_args(&a);
    let b_args: Vec<&str> = a_join.iter().map(String::as_str).collect();
    let b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(b.resp).await;
    wait_paired(&a, &b, "agent-a", "agent-b").await;
    let mut resp_b = Resp::connect(b.resp).await;
    wait_for("agent-b to hold every key", PAIR, || async {
        matches!(Resp::connect(b.resp).await.call(&["DBSIZE"]).await, Reply::Integer(n) if n as usize == KEYS)
    })
    .await;
    for i in [0, KEYS / 2, KEYS - 1] {
        let got = resp_b.call_raw(&["GET", &format!("big:{i}")]).await;
        let mut wanted = b"$1000000\r\n".to_vec();
        wanted.extend_from_slice(&value(i));
        wanted.extend_from_slice(b"\r\n");
        assert!(
            got == wanted,
            "big:{i} arrived changed ({} bytes)",
            got.len()
        );
    }
    let pairs = member(a.node.admin, "agent-a").await.map(|m| m.partner);
    assert!(pairs.is_some_and(|p| p.is_some()), "still paired");
    let logs = a.node.log_text();
    assert!(
        !logs.contains("exceeds the limit"),
        "a frame past the limit:\n{logs}"
    );
}

/// A seeded mix of writes of every type in three databases, some inside `MULTI`/`EXEC`:
/// pipelines of commands as `Vec`s of arguments.
fn mixed_writes(seed: u64, rounds: usize) -> Vec<Vec<Vec<Vec<u8>>>> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let ttl = TTL_SECS.to_string();
    let mut pipelines = Vec::new();
    for round in 0..rounds {
        let mut commands: Vec<Vec<Vec<u8>>> = vec![cmd(&[&"SELECT", &(round % 3).to_string()])];
        let transaction = round % 4 == 0;
        if transaction {
            commands.push(cmd(&[&"MULTI"]));
        }
        for _ in 0..20 {
            let op = next(25);
            // Each type keeps keys of its own, so that few writes meet the wrong type;
            // the key commands work across them.
            let family = match op {
                0..=3 => "s",
                4..=6 => "h",
                7..=10 => "t",
                11..=14 => "z",
                15..=19 => "l",
                _ => ["s", "h", "t", "z", "l"][next(5) as usize],
            };
            let key = format!("{family}{}", next(6));
            let other = format!("{family}{}", next(6));
            let member = format!("m{}", next(30));
            let n = next(1000).to_string();
            let command = match op {
                0 => cmd(&[&"SET", &key, &n]),
                1 => cmd(&[&"APPEND", &key, &member]),
                2 => cmd(&[&"INCRBYFLOAT", &key, &"1.5"]),
                3 => cmd(&[&"SETRANGE", &key, &"2", &member]),
                4 => cmd(&[&"HSET", &key, &member, &n]),
                5 => cmd(&[&"HDEL", &key, &member]),
                6 => cmd(&[&"HINCRBYFLOAT", &key, &member, &"0.25"]),
                7 => cmd(&[&"SADD", &key, &member, &n]),
                8 => cmd(&[&"SREM", &key, &member]),
                9 => cmd(&[&"SPOP", &key]),
                10 => cmd(&[&"SMOVE", &key, &other, &member]),
                11 => cmd(&[&"ZADD", &key, &n, &member]),
                12 => cmd(&[&"ZINCRBY", &key, &"2", &member]),
                13 => cmd(&[&"ZREM", &key, &member]),
                14 => cmd(&[&"ZPOPMIN", &key]),
                15 => cmd(&[&"LPUSH", &key, &member, &n]),
                16 => cmd(&[&"RPUSH", &key, &member]),
                17 => cmd(&[&"LPOP", &key]),
                18 => cmd(&[&"LMOVE", &key, &other, &"LEFT", &"RIGHT"]),
                19 => cmd(&[&"LREM", &key, &"0", &member]),
                20 => cmd(&[&"EXPIRE", &key, &ttl]),
                21 => cmd(&[&"RENAME", &key, &other]),
                23 => cmd(&[
                    &"EVAL",
                    &"redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) \
                      redis.call('sadd', KEYS[2], ARGV[1]) \
                      return redis.call('incrbyfloat', KEYS[3], '0.5')",
                    &"3",
                    &format!("h{}", next(6)),
                    &format!("t{}", next(6)),
                    &format!("s{}", next(6)),
                    &member,
                    &n,
                ]),
                22 => cmd(&[
                    &"COPY",
                    &key,
                    &other,
                    &"DB",
                    &next(3).to_string(),
                    &"REPLACE",
                ]),
                _ => cmd(&[&"DEL", &key]),
            };
            commands.push(command);
        }
        if transaction {
            commands.push(cmd(&[&"EXEC"]));
        }
        pipelines.push(commands);
    }
    pipelines
}

/// Writes of every type, inside and outside transactions and scripts and in several
/// databases, are on the partner exactly as acknowledged when the writer is killed; a new partner gets
/// them all by snapshot, and has them when the survivor is killed in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_transaction_is_on_the_partner_when_the_writer_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), "agent-a", &[]);
    let a_join = join_args(&a);
    let b_args: Vec<&str> = a_join.iter().map(String::as_str).collect();
    let mut b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(a.resp).await;
    wait_for_port(b.resp).await;
    wait_paired(&a, &b, "agent-a", "agent-b").await;

    let mut resp_a = Resp::connect(a.resp).await;
    let mut replies = 0;
    for pipeline in mixed_writes(7, 300) {
        let answered = resp_a.pipeline(&pipeline).await;
        replies += answered.len();
        assert!(
            !answered
                .iter()
                .any(|r| matches!(r, Reply::Error(e) if e.starts_with("EXECABORT"))),
            "{answered:?}"
        );
    }
    assert_eq!(replies, 300 * 21 + 75 * 2);
    let acknowledged = dump(a.resp).await;
    let types: std::collections::BTreeSet<&str> = acknowledged
        .values()
        .map(|v| v.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(types.len(), 5, "every type written: {types:?}");
    assert!(acknowledged.keys().any(|(db, _)| *db == 2));
    a.node.kill();
    let on_b = dump(b.resp).await;
    assert!(
        on_b == acknowledged,
        "agent-b differs from what agent-a acknowledged:\n{}",
        differences(&acknowledged, &on_b)
    );

    let b_join = join_args(&b);
    let c_args: Vec<&str> = b_join.iter().map(String::as_str).collect();
    let c = Agent::start(dir.path(), "agent-c", &c_args);
    wait_for_port(c.resp).await;
    wait_paired(&b, &c, "agent-b", "agent-c").await;
    wait_for("agent-c to hold the snapshot", PAIR, || async {
        dump(c.resp).await == on_b
    })
    .await;
    b.node.kill();
    assert!(dump(c.resp).await == on_b, "agent-c lost what agent-b held");
}

/// What arrives on a connection within `wait`.
async fn received_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection subscribed to the `expired` events of database 0, on an agent that has
/// them switched on.
async fn expired_listener(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut config = Resp::connect(addr).await;
    config
        .call(&["CONFIG", "SET", "notify-keyspace-events", "Ex"])
        .await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&support::encode_command(&cmd(&[
            &"SUBSCRIBE",
            &"__keyevent@0__:expired",
        ])))
        .await
        .unwrap();
    let subscribed = received_within(&mut stream, Duration::from_millis(500)).await;
    assert!(subscribed.contains("subscribe"), "{subscribed:?}");
    stream
}

/// A key's `expired` event comes from the agent that wrote it, not from its partner's
/// copy; once the writer is dead, the survivor announces the keys it took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_writer_announces_expired_keys_until_its_partner_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), "agent-a", &[]);
    let a_join = join_args(&a);
    let b_args: Vec<&str> = a_join.iter().map(String::as_str).collect();
    let b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(a.resp).await;
    wait_for_port(b.resp).await;
    wait_paired(&a, &b, "agent-a", "agent-b").await;
    let mut on_a = expired_listener(a.resp).await;
    let mut on_b = expired_listener(b.resp).await;
    let mut writer = Resp::connect(a.resp).await;
    writer.call(&["SET", "soon", "v", "PX", "200"]).await;
    writer.call(&["SET", "later", "v", "PX", "8000"]).await;
    let heard_a = received_within(&mut on_a, Duration::from_secs(2)).await;
    let heard_b = received_within(&mut on_b, Duration::from_millis(10)).await;
    assert!(
        heard_a.contains("$4\r\nsoon\r\n"),
        "agent-a announced {heard_a:?}"
    );
    assert!(heard_b.is_empty(), "agent-b announced a copy: {heard_b:?}");
    a.node.kill();
    let heard_b = received_within(&mut on_b, Duration::from_secs(12)).await;
    assert!(
        heard_b.contains("$5\r\nlater\r\n") && !heard_b.contains("soon"),
        "agent-b announced {heard_b:?}"
    );
}

/// The script cache is kept on the partner: scripts loaded before the pair formed and
/// after it, by `SCRIPT LOAD` and by `EVAL`, answer `EVALSHA` on the survivor once the
/// agent that loaded them is dead, without a `NOSCRIPT` round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evalsha_of_a_script_loaded_before_the_failover_works_on_the_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), "agent-a", &[]);
    wait_for_port(a.resp).await;
    let mut on_a = Resp::connect(a.resp).await;
    let before = "return 'loaded before the pair formed'";
    let Reply::BulkString(sha_before) = on_a.call(&["SCRIPT", "LOAD", before]).await else {
        panic!("no SHA1");
    };
    let a_join = join_args(&a);
    let b_args: Vec<&str> = a_join.iter().map(String::as_str).collect();
    let b = Agent::start(dir.path(), "agent-b", &b_args);
    wait_for_port(b.resp).await;
    wait_paired(&a, &b, "agent-a", "agent-b").await;
    let Reply::BulkString(sha_loaded) = on_a
        .call(&["SCRIPT", "LOAD", "return redis.call('get', KEYS[1])"])
        .await
    else {
        panic!("no SHA1");
    };
    let counter = "return redis.call('incr', KEYS[1])";
    assert_eq!(
        on_a.call(&["EVAL", counter, "1", "hits"]).await,
        Reply::Integer(1)
    );
    let sha_counter = tandem_agent::scripting::sha1_hex(counter.as_bytes());
    let shas: Vec<String> = [&sha_before, &sha_loaded]
        .iter()
        .map(|sha| String::from_utf8(sha.to_vec()).unwrap())
        .chain([sha_counter.clone()])
        .collect();
    let mut on_b = Resp::connect(b.resp).await;
    let mut exists = vec!["SCRIPT", "EXISTS"];
    exists.extend(shas.iter().map(String::as_str));
    let all_there = Reply::Array(vec![Reply::Integer(1); 3]);
    let deadline = Instant::now() + PAIR;
    while on_b.call(&exists).await != all_there {
        assert!(
            Instant::now() < deadline,
            "agent-b never held agent-a's scripts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.node.kill();
    assert_eq!(
        on_b.call(&["EVALSHA", &shas[0], "0"]).await,
        Reply::BulkString(b"loaded before the pair formed".to_vec())
    );
    assert_eq!(
        on_b.call(&["EVALSHA", &sha_counter, "1", "hits"]).await,
        Reply::Integer(2),
        "the survivor runs the script on what the writer acknowledged"
    );
    assert_eq!(
        on_b.call(&["EVALSHA", &shas[1], "1", "hits"]).await,
        Reply::BulkString(b"2".to_vec())
    );
}
