//! Keyspace notifications: `notify-keyspace-events`' classes as Redis reads and writes
//! them, and the events each command's writes announce, with Redis' names, on
//! `__keyspace@<db>__:<key>` and `__keyevent@<db>__:<event>`.
//!
//! Only the agent's own clients' writes are announced (a partner's are announced by the
//! partner, to its clients); `expired` by the node that wrote the key last, or by a node
//! without a partner, so that after a failover the survivor announces the sessions it took
//! over. Nothing is ever evicted.

use bytes::Bytes;

use crate::resp::parse::is;
use crate::resp::pubsub::PubSub;
use crate::store::Touched;

pub const KEYSPACE: u32 = 1 << 0; // K
pub const KEYEVENT: u32 = 1 << 1; // E
pub const GENERIC: u32 = 1 << 2; // g
pub const STRING: u32 = 1 << 3; // $
pub const LIST: u32 = 1 << 4; // l
pub const SET: u32 = 1 << 5; // s
pub const HASH: u32 = 1 << 6; // h
pub const ZSET: u32 = 1 << 7; // z
pub const EXPIRED: u32 = 1 << 8; // x
pub const EVICTED: u32 = 1 << 9; // e
pub const STREAM: u32 = 1 << 10; // t
pub const KEY_MISS: u32 = 1 << 11; // m
pub const MODULE: u32 = 1 << 13; // d
pub const NEW: u32 = 1 << 14; // n
/// `A`: every class but `m` and `n`.
pub const ALL: u32 =
    GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// The flags of a class string; `None` for a character that names no class.
pub fn flags_from_string(classes: &str) -> Option<u32> {
    classes.chars().try_fold(0, |flags, c| {
        Some(
            flags
                | match c {
                    'A' => ALL,
                    'g' => GENERIC,
                    '$' => STRING,
                    'l' => LIST,
                    's' => SET,
                    'h' => HASH,
                    'z' => ZSET,
                    'x' => EXPIRED,
                    'e' => EVICTED,
                    'K' => KEYSPACE,
                    'E' => KEYEVENT,
                    't' => STREAM,
                    'm' => KEY_MISS,
                    'd' => MODULE,
                    'n' => NEW,
                    _ => return None,
                },
        )
    })
}

/// The class string Redis shows for `flags`.
pub fn flags_to_string(flags: u32) -> String {
    let mut text = String::new();
    if flags & ALL == ALL {
        text.push('A');
    } else {
        for (flag, c) in [
            (GENERIC, 'g'),
            (STRING, '$'),
            (LIST, 'l'),
            (SET, 's'),
            (HASH, 'h'),
            (ZSET, 'z'),
            (EXPIRED, 'x'),
            (EVICTED, 'e'),
            (STREAM, 't'),
            (MODULE, 'd'),
            (NEW, 'n'),
        ] {
            if flags & flag != 0 {
                text.push(c);
            }
        }
    }
    for (flag, c) in [(KEYSPACE, 'K'), (KEYEVENT, 'E'), (KEY_MISS, 'm')] {
        if flags & flag != 0 {
            text.push(c);
        }
    }
    text
}

/// Whether `flags` announce anything (a channel kind and a class).
pub fn active(flags: u32) -> bool {
    flags & (KEYSPACE | KEYEVENT) != 0 && flags & !(KEYSPACE | KEYEVENT) != 0
}

/// Publishes one event, on the channels `flags` ask for.
pub fn publish(pubsub: &PubSub, flags: u32, class: u32, event: &str, db: usize, key: &Bytes) {
    if flags & class == 0 {
        return;
    }
    if flags & KEYSPACE != 0 {
        let mut channel = format!("__keyspace@{db}__:").into_bytes();
        channel.extend_from_slice(key);
        pubsub.publish(
            &Bytes::from(channel),
            &Bytes::copy_from_slice(event.as_bytes()),
        );
    }
    if flags & KEYEVENT != 0 {
        let channel = Bytes::from(format!("__keyevent@{db}__:{event}"));
        pubsub.publish(&channel, key);
    }
}

/// The class of an event name.
fn class(event: &str) -> u32 {
    match event {
        "del" | "expire" | "persist" | "rename_from" | "rename_to" | "copy_to" => GENERIC,
        "set" | "incrby" | "incrbyfloat" | "append" | "setrange" | "setbit" => STRING,
        "lpush" | "rpush" | "lpop" | "rpop" | "linsert" | "lset" | "lrem" | "ltrim" => LIST,
        "sadd" | "srem" | "spop" | "sinterstore" | "sunionstore" | "sdiffstore" => SET,
        "hset" | "hincrby" | "hincrbyfloat" | "hdel" => HASH,
        _ => ZSET,
    }
}

/// The event a command announces for a key it wrote, by Redis' names.
fn event_of(command: &str, args: &[Bytes]) -> Option<&'static str> {
    let has = |word: &str| args.iter().skip(2).any(|a| is(a, word));
    Some(match command {
        "set" | "setnx" | "setex" | "psetex" | "getset" | "mset" | "msetnx" => "set",
        "incr" | "decr" | "incrby" | "decrby" => "incrby",
        "incrbyfloat" => "incrbyfloat",
        "append" => "append",
        "setrange" => "setrange",
        "setbit" => "setbit",
        "del" | "unlink" | "getdel" => "del",
        "expire" | "pexpire" | "expireat" | "pexpireat" => "expire",
        "persist" => "persist",
        "getex" if has("PERSIST") => "persist",
        "getex" => "expire",
        "hset" | "hmset" | "hsetnx" => "hset",
        "hincrby" => "hincrby",
        "hincrbyfloat" => "hincrbyfloat",
        "hdel" => "hdel",
        "sadd" => "sadd",
        "srem" => "srem",
        "spop" => "spop",
        "sinterstore" => "sinterstore",
        "sunionstore" => "sunionstore",
        "sdiffstore" => "sdiffstore",
        "zadd" if has("INCR") => "zincr",
        "zadd" => "zadd",
        "zincrby" => "zincr",
        "zrem" => "zrem",
        "zremrangebyscore" => "zremrangebyscore",
        "zremrangebyrank" => "zremrangebyrank",
        "zremrangebylex" => "zremrangebylex",
        "zpopmin" => "zpopmin",
        "zpopmax" => "zpopmax",
        "lpush" | "lpushx" => "lpush",
        "rpush" | "rpushx" => "rpush",
        "lpop" => "lpop",
        "rpop" => "rpop",
        "linsert" => "linsert",
        "lset" => "lset",
        "lrem" => "lrem",
        "ltrim" => "ltrim",
        _ => return None,
    })
}

/// Announces what `command` (with its `args`, name first) did to the keys it `touched`:
/// per key its event, `new` first for a key it created, `del` after for one it emptied
/// away (or, for a deleting command, `del` alone).
pub fn announce(pubsub: &PubSub, flags: u32, command: &str, args: &[Bytes], touched: Vec<Touched>) {
    // One entry per key, in the order first touched: created if a write created it,
    // removed if the last write removed it.
    let mut keys: Vec<Touched> = Vec::new();
    for touch in touched {
        match keys
            .iter_mut()
            .find(|k| k.db == touch.db && k.key == touch.key)
        {
            Some(known) => {
                known.created |= touch.created;
                known.removed = touch.removed;
            }
            None => keys.push(touch),
        }
    }
    let source = args.get(1);
    // Redis announces a list move's push before its pop, a set move's removal first.
    let source_last = matches!(command, "lmove" | "rpoplpush");
    keys.sort_by_key(|touch| {
        let is_source = source.is_some_and(|s| *s == touch.key);
        match command {
            "lmove" | "rpoplpush" | "smove" => is_source == source_last,
            _ => false,
        }
    });
    for touch in &keys {
        let is_source = source.is_some_and(|s| *s == touch.key);
        let event = match command {
            "rename" | "renamenx" => Some(if is_source {
                "rename_from"
            } else {
                "rename_to"
            }),
            "copy" if !is_source => Some("copy_to"),
            "smove" => Some(if is_source { "srem" } else { "sadd" }),
            "rpoplpush" => Some(if is_source { "rpop" } else { "lpush" }),
            "lmove" => {
                let side = |at: usize| args.get(at).is_some_and(|a| is(a, "LEFT"));
                Some(match (is_source, side(3), side(4)) {
                    (true, true, _) => "lpop",
                    (true, false, _) => "rpop",
                    (false, _, true) => "lpush",
                    (false, _, false) => "rpush",
                })
            }
            _ => event_of(command, args),
        };
        let Some(event) = event else { continue };
        let deleting = matches!(
            event,
            "del" | "expire" | "sinterstore" | "sunionstore" | "sdiffstore"
        ) || (event == "rename_from");
        if touch.created {
            publish(pubsub, flags, NEW, "new", touch.db, &touch.key);
        }
        if touch.removed && deleting && event != "rename_from" {
            publish(pubsub, flags, GENERIC, "del", touch.db, &touch.key);
            continue;
        }
        publish(pubsub, flags, class(event), event, touch.db, &touch.key);
        // A value set with a deadline announces the deadline too.
        let with_expiry = matches!(command, "setex" | "psetex")
            || (command == "set"
                && args
                    .iter()
                    .skip(3)
                    .any(|a| is(a, "EX") || is(a, "PX") || is(a, "EXAT") || is(a, "PXAT")));
        if with_expiry {
            publish(pubsub, flags, GENERIC, "expire", touch.db, &touch.key);
        }
        if touch.removed && !deleting {
            publish(pubsub, flags, GENERIC, "del", touch.db, &touch.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_read_and_write_as_redis_does() {
        // CONFIG SET then CONFIG GET on redis-server 7.0.
        for (set, get) in [
            ("KEA", "AKE"),
            ("Egx", "gxE"),
            ("", ""),
            ("KEA$", "AKE"),
            ("nm", "nm"),
        ] {
            assert_eq!(
                flags_from_string(set).map(flags_to_string).as_deref(),
                Some(get)
            );
        }
        assert_eq!(flags_from_string("bogus"), None);
    }
}
