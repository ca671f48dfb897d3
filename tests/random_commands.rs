//! A property of the whole data model: any sequence of commands, over every type and
//! several databases, inside and outside transactions, gets from the agent exactly the
//! replies `redis-server` gives, byte for byte, and leaves both with the same keyspace;
//! the agent's partner, in sync mode, then holds that keyspace too.
//!
//! The commands are drawn from small pools of keys, fields and values, so that keys
//! collide across types (`WRONGTYPE`), counters overflow, ranges run off the ends and
//! transactions nest, abort and are discarded. Left out are the replies Redis leaves to
//! chance or to the clock: random picks smaller than a set, a hash table's order (sets
//! hold only integers, as an intset does; hashes stay small), `TTL` of a relative expiry,
//! and `OBJECT ENCODING`, which for a string tells how Redis came to hold it (docs/sessions.md).
//!
//! A run prints its seed; `TANDEM_PROPERTY_SEED=<seed>` replays it, `PROPTEST_CASES` sets
//! how many sequences it tries. A failure is shrunk to the shortest sequence that still
//! fails, printed with the replies that differ.

mod support;

use std::net::SocketAddr;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use support::{RedisServer, Resp, capability, differences, dump, has_program, start_pair};

/// Some words of a command.
type Part = BoxedStrategy<Vec<String>>;

fn one_of(words: &[&'static str]) -> Part {
    select(words.to_vec())
        .prop_map(|w| vec![w.to_string()])
        .boxed()
}

fn word(word: &'static str) -> Part {
    Just(vec![word.to_string()]).boxed()
}

/// `part`, or nothing.
fn maybe(part: Part) -> Part {
    prop_oneof![Just(Vec::new()), part].boxed()
}

/// `part` one to `max` times.
fn some(part: Part, max: usize) -> Part {
    proptest::collection::vec(part, 1..=max)
        .prop_map(|parts| parts.concat())
        .boxed()
}

/// Words in sequence.
fn all(parts: Vec<Part>) -> Part {
    parts.prop_map(|parts| parts.concat()).boxed()
}

macro_rules! command {
    ($name:literal $(, $part:expr)* $(,)?) => {
        all(vec![word($name) $(, $part)*])
    };
}

fn key() -> Part {
    one_of(&["a", "b", "c", "d", "e"])
}

fn value() -> Part {
    one_of(&[
        "",
        "x",
        "hello",
        "0",
        "1",
        "-1",
        "10",
        "42",
        "3.5",
        "1e2",
        " 1",
        "9223372036854775807",
        "-9223372036854775808",
    ])
}

fn field() -> Part {
    one_of(&["f", "g", "h", "1"])
}

/// An integer argument: ranges, counts, offsets, and a few that are not integers.
fn int() -> Part {
    one_of(&["0", "1", "2", "3", "5", "-1", "-2", "-5", "100", "x", "1.5"])
}

fn offset() -> Part {
    one_of(&["0", "1", "3", "7", "8", "17", "-1"])
}

/// Set members are integers, so that a set's order is its intset's.
fn member() -> Part {
    one_of(&["0", "1", "2", "3", "5", "8", "-1", "100"])
}

fn zmember() -> Part {
    one_of(&["a", "b", "c", "d", "e", "1"])
}

fn score() -> Part {
    one_of(&[
        "0", "1", "2", "-1", "1.5", "1e2", "-0", "+inf", "-inf", "0.1", "x", "nan",
    ])
}

fn bound() -> Part {
    one_of(&[
        "0", "1", "2", "(1", "(2", "-inf", "+inf", "(-inf", "1.5", "x",
    ])
}

fn lex() -> Part {
    one_of(&["-", "+", "[a", "(b", "[c", "(e", "a", "[1"])
}

fn db() -> Part {
    one_of(&["0", "1", "2", "3", "16", "-1"])
}

fn deadline() -> Part {
    one_of(&["4102444800", "4102444900", "1", "x"])
}

fn expire_condition() -> Part {
    maybe(one_of(&["NX", "XX", "GT", "LT"]))
}

/// `HSCAN`, `SSCAN` or `ZSCAN` of a whole (small) collection, with or without a pattern.
fn scan(name: &'static str, patterns: &[&'static str]) -> Part {
    all(vec![
        word(name),
        key(),
        word("0"),
        maybe(all(vec![word("MATCH"), one_of(patterns)])),
    ])
}

fn keys_and_strings() -> Vec<Part> {
    vec![
        command!(
            "SET",
            key(),
            value(),
            maybe(one_of(&["NX", "XX", "GET", "KEEPTTL"]))
        ),
        command!(
            "SET",
            key(),
            value(),
            word("PXAT"),
            one_of(&["4102444800000", "0"])
        ),
        command!("GET", key()),
        command!("SETNX", key(), value()),
        command!("GETSET", key(), value()),
        command!("GETDEL", key()),
        command!("GETEX", key(), maybe(one_of(&["PERSIST"]))),
        command!("MGET", some(key(), 3)),
        command!("MSET", some(all(vec![key(), value()]), 2)),
        command!("MSETNX", some(all(vec![key(), value()]), 2)),
        command!("APPEND", key(), value()),
        command!("STRLEN", key()),
        command!("GETRANGE", key(), int(), int()),
        command!("SETRANGE", key(), offset(), value()),
        command!("INCR", key()),
        command!("DECR", key()),
        command!("INCRBY", key(), int()),
        command!("DECRBY", key(), int()),
        command!(
            "INCRBYFLOAT",
            key(),
            one_of(&["1.5", "-0.25", "3", "1e3", "x", "0.1"])
        ),
        command!("SETBIT", key(), offset(), one_of(&["0", "1", "2"])),
        command!("GETBIT", key(), offset()),
        command!("BITCOUNT", key(), maybe(all(vec![int(), int()]))),
        command!("DEL", some(key(), 2)),
        command!("UNLINK", key()),
        command!("EXISTS", some(key(), 3)),
        command!("TYPE", key()),
        command!("TOUCH", some(key(), 2)),
        command!("RENAME", key(), key()),
        command!("RENAMENX", key(), key()),
        command!(
            "COPY",
            key(),
            key(),
            maybe(all(vec![word("DB"), db()])),
            maybe(word("REPLACE"))
        ),
        command!("EXPIREAT", key(), deadline(), expire_condition()),
        command!(
            "PEXPIREAT",
            key(),
            one_of(&["4102444800000", "4102444800500"]),
            expire_condition()
        ),
        command!(
            "EXPIRE",
            key(),
            one_of(&["0", "-1", "x"]),
            expire_condition()
        ),
        command!("EXPIRETIME", key()),
        command!("PEXPIRETIME", key()),
        command!("PERSIST", key()),
        command!("KEYS", key()),
        command!(
            "SCAN",
            word("0"),
            word("MATCH"),
            key(),
            maybe(all(vec![
                word("TYPE"),
                one_of(&["string", "hash", "set", "zset", "list"])
            ]))
        ),
        command!("DBSIZE"),
        command!("SELECT", db()),
    ]
}

fn hashes() -> Vec<Part> {
    vec![
        command!("HSET", key(), some(all(vec![field(), value()]), 3)),
        command!("HSETNX", key(), field(), value()),
        command!("HGET", key(), field()),
        command!("HMGET", key(), some(field(), 3)),
        command!("HDEL", key(), some(field(), 2)),
        command!("HLEN", key()),
        command!("HEXISTS", key(), field()),
        command!("HSTRLEN", key(), field()),
        command!("HINCRBY", key(), field(), int()),
        command!(
            "HINCRBYFLOAT",
            key(),
            field(),
            one_of(&["1.5", "-2", "x", "1e30"])
        ),
        command!("HGETALL", key()),
        command!("HKEYS", key()),
        command!("HVALS", key()),
        command!(
            "HRANDFIELD",
            key(),
            one_of(&["100", "0"]),
            maybe(word("WITHVALUES"))
        ),
        scan("HSCAN", &["*", "f", "[fg]"]),
    ]
}

fn sets() -> Vec<Part> {
    vec![
        command!("SADD", key(), some(member(), 4)),
        command!("SREM", key(), some(member(), 3)),
        command!("SMEMBERS", key()),
        command!("SISMEMBER", key(), member()),
        command!("SMISMEMBER", key(), some(member(), 3)),
        command!("SCARD", key()),
        scan("SSCAN", &["*", "1*", "?"]),
        command!("SMOVE", key(), key(), member()),
        command!("SPOP", key(), one_of(&["100", "0", "-1"])),
        command!("SRANDMEMBER", key(), one_of(&["100", "0"])),
        command!("SINTER", some(key(), 3)),
        command!("SUNION", some(key(), 3)),
        command!("SDIFF", some(key(), 3)),
        command!("SINTERSTORE", key(), some(key(), 2)),
        command!("SUNIONSTORE", key(), some(key(), 2)),
        command!("SDIFFSTORE", key(), some(key(), 2)),
        command!("SINTERCARD", one_of(&["1", "2", "0"]), some(key(), 2)),
    ]
}

fn zsets() -> Vec<Part> {
    let withscores = || maybe(word("WITHSCORES"));
    let limit = || maybe(all(vec![word("LIMIT"), int(), int()]));
    vec![
        command!(
            "ZADD",
            key(),
            maybe(one_of(&["NX", "XX"])),
            maybe(one_of(&["GT", "LT"])),
            maybe(word("CH")),
            some(all(vec![score(), zmember()]), 3)
        ),
        command!(
            "ZADD",
            key(),
            maybe(one_of(&["NX", "XX", "GT"])),
            word("INCR"),
            score(),
            zmember()
        ),
        command!("ZINCRBY", key(), score(), zmember()),
        command!("ZREM", key(), some(zmember(), 2)),
        command!("ZSCORE", key(), zmember()),
        command!("ZMSCORE", key(), some(zmember(), 3)),
        command!("ZCARD", key()),
        scan("ZSCAN", &["*", "[ab]"]),
        command!("ZCOUNT", key(), bound(), bound()),
        command!("ZLEXCOUNT", key(), lex(), lex()),
        command!("ZRANK", key(), zmember()),
        command!("ZREVRANK", key(), zmember()),
        command!(
            "ZRANGE",
            key(),
            int(),
            int(),
            maybe(word("REV")),
            withscores()
        ),
        command!(
            "ZRANGE",
            key(),
            bound(),
            bound(),
            word("BYSCORE"),
            maybe(word("REV")),
            limit(),
            withscores()
        ),
        command!(
            "ZRANGE",
            key(),
            lex(),
            lex(),
            word("BYLEX"),
            maybe(word("REV")),
            limit()
        ),
        command!(
            "ZRANGEBYSCORE",
            key(),
            bound(),
            bound(),
            withscores(),
            limit()
        ),
        command!(
            "ZREVRANGEBYSCORE",
            key(),
            bound(),
            bound(),
            withscores(),
            limit()
        ),
        command!("ZREVRANGE", key(), int(), int(), withscores()),
        command!("ZRANGEBYLEX", key(), lex(), lex(), limit()),
        command!("ZREVRANGEBYLEX", key(), lex(), lex(), limit()),
        command!("ZREMRANGEBYSCORE", key(), bound(), bound()),
        command!("ZREMRANGEBYRANK", key(), int(), int()),
        command!("ZREMRANGEBYLEX", key(), lex(), lex()),
        command!("ZPOPMIN", key(), maybe(int())),
        command!("ZPOPMAX", key(), maybe(int())),
    ]
}

fn lists() -> Vec<Part> {
    let side = || one_of(&["LEFT", "RIGHT"]);
    vec![
        command!("LPUSH", key(), some(value(), 3)),
        command!("RPUSH", key(), some(value(), 3)),
        command!("LPUSHX", key(), some(value(), 2)),
        command!("RPUSHX", key(), some(value(), 2)),
        command!("LPOP", key(), maybe(int())),
        command!("RPOP", key(), maybe(int())),
        command!("LRANGE", key(), int(), int()),
        command!("LLEN", key()),
        command!("LINDEX", key(), int()),
        command!("LSET", key(), int(), value()),
        command!("LREM", key(), int(), value()),
        command!("LTRIM", key(), int(), int()),
        command!(
            "LINSERT",
            key(),
            one_of(&["BEFORE", "AFTER", "UP"]),
            value(),
            value()
        ),
        command!(
            "LPOS",
            key(),
            value(),
            maybe(all(vec![word("RANK"), int()])),
            maybe(all(vec![word("COUNT"), int()])),
            maybe(all(vec![word("MAXLEN"), int()]))
        ),
        command!("LMOVE", key(), key(), side(), side()),
        command!("RPOPLPUSH", key(), key()),
    ]
}

fn transactions() -> Vec<Part> {
    vec![
        command!("MULTI"),
        command!("MULTI"),
        command!("EXEC"),
        command!("EXEC"),
        command!("DISCARD"),
        command!("WATCH", some(key(), 2)),
        command!("UNWATCH"),
    ]
}

/// One command of any family; `FLUSHDB` and `FLUSHALL` rarely, or nothing would build up.
fn any_command() -> BoxedStrategy<Vec<String>> {
    let commands: Vec<Part> = [
        keys_and_strings(),
        hashes(),
        sets(),
        zsets(),
        lists(),
        transactions(),
    ]
    .into_iter()
    .flatten()
    .collect();
    prop_oneof![
        60 => select(commands).prop_flat_map(|command| command),
        1 => one_of(&["FLUSHDB", "FLUSHALL"]),
    ]
    .boxed()
}

/// A sequence, spoken in RESP2 or RESP3.
fn sequence() -> impl Strategy<Value = (bool, Vec<Vec<String>>)> {
    (
        any::<bool>(),
        proptest::collection::vec(any_command(), 1..150),
    )
}

/// The raw replies to `commands` on a fresh connection to an emptied server.
async fn replies(addr: SocketAddr, resp3: bool, commands: &[Vec<String>]) -> Vec<Vec<u8>> {
    let mut setup = Resp::connect(addr).await;
    setup.call_raw(&["FLUSHALL", "SYNC"]).await;
    let mut client = Resp::connect(addr).await;
    if resp3 {
        client.call_raw(&["HELLO", "3"]).await;
    }
    let mut replies = Vec::with_capacity(commands.len());
    for command in commands {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        replies.push(client.call_raw(&args).await);
    }
    replies
}

/// Compares one sequence's replies and the keyspaces it leaves.
async fn compare(
    redis: SocketAddr,
    agent: SocketAddr,
    partner: SocketAddr,
    resp3: bool,
    commands: &[Vec<String>],
) -> Result<(), String> {
    let want = replies(redis, resp3, commands).await;
    let got = replies(agent, resp3, commands).await;
    for (i, (want, got)) in want.iter().zip(&got).enumerate() {
        if want != got {
            let shown: Vec<String> = commands[..=i].iter().map(|c| c.join(" ")).collect();
            return Err(format!(
                "in RESP{}, reply {} differs after:\n  {}\nredis-server: {:?}\nagent:        {:?}",
                if resp3 { 3 } else { 2 },
                i + 1,
                shown.join("\n  "),
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(got),
            ));
        }
    }
    let (want, got) = (dump(redis).await, dump(agent).await);
    if want != got {
        let shown: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        return Err(format!(
            "the keyspaces differ after:\n  {}\n{}",
            shown.join("\n  "),
            differences(&want, &got)
                .replace("acknowledged", "redis-server")
                .replace("partner:     ", "agent:       ")
        ));
    }
    // In sync mode every write the agent answered is on its partner already.
    let on_partner = dump(partner).await;
    if on_partner != got {
        let shown: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        return Err(format!(
            "the partner differs from the agent after:\n  {}\n{}",
            shown.join("\n  "),
            differences(&got, &on_partner).replace("acknowledged", "agent       ")
        ));
    }
    Ok(())
}

#[test]
fn random_command_sequences_reply_and_end_as_on_redis_server() {
    if !capability("redis-server", has_program("redis-server")) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The agent is paired (sync mode, the default), so that every write path of every
    // type is also checked on the partner.
    let (redis, agent, partner) = runtime.block_on(async {
        let redis = RedisServer::start().await;
        let (agent, partner) = start_pair(dir.path(), "random-a", "random-b").await;
        (redis, agent, partner)
    });
    let seed: u64 = std::env::var("TANDEM_PROPERTY_SEED")
        .ok()
        .map(|s| s.parse().expect("TANDEM_PROPERTY_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    println!("seed {seed}, {cases} sequences (TANDEM_PROPERTY_SEED={seed} replays them)");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let (redis_addr, agent_addr, partner_addr) = (redis.addr, agent.resp, partner.resp);
    let result = runner.run(&sequence(), |(resp3, commands)| {
        runtime
            .block_on(compare(
                redis_addr,
                agent_addr,
                partner_addr,
                resp3,
                &commands,
            ))
            .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => {
            panic!("seed {seed}: the shortest failing sequence found:\n{reason}")
        }
        Err(err) => panic!("seed {seed}: {err}"),
    }
}
