//! Store unit tests: command semantics, versions, limits, expiry on paused time.

use std::time::Duration;

use bytes::Bytes;
use tandem_common::ops::{Mutation, Op};
use tandem_common::version::Version;

use super::*;

const T0: u64 = 1_700_000_000_000;

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn store() -> (SessionStore, ManualClock) {
    let clock = ManualClock::at(T0);
    (
        SessionStore::new("node-a", Limits::default(), clock.clone()),
        clock,
    )
}

fn set(store: &SessionStore, key: &str, value: &str, expiry: SetExpiry) -> Vec<Mutation> {
    store
        .run(|ks, now| {
            ks.set(b(key), b(value), expiry, SetCondition::Always, false, now)
                .unwrap()
        })
        .mutations
        .to_mutations()
        .unwrap()
}

fn get(store: &SessionStore, key: &str) -> Option<Bytes> {
    store
        .run(|ks, now| ks.get(key.as_bytes(), now).unwrap())
        .value
}

#[test]
fn a_store_nobody_replicates_records_no_mutations_and_loses_no_write() {
    let (store, _) = store();
    store.set_recording(false);
    assert!(set(&store, "k", "v1", SetExpiry::None).is_empty());
    let hash = store.run(|ks, now| ks.hset(b("h"), vec![(b("f"), b("1"))], now).unwrap());
    assert!(hash.mutations.is_empty());
    assert_eq!(get(&store, "k"), Some(b("v1")));
    assert_eq!(store.stats().0, 2);
    let unrecorded = store.run(|ks, _| ks.writes()).value;
    assert_eq!(unrecorded, 2);
    // Recording again (a partner arrived): the next writes are mutations, with versions
    // newer than those the unrecorded writes stored (the snapshot carries those).
    store.set_recording(true);
    let snapshot = store.run(|ks, now| ks.snapshot_chunk(0, 100, now)).value.1;
    let written = set(&store, "k", "v2", SetExpiry::None);
    assert_eq!(written.len(), 1);
    assert!(snapshot.iter().all(|m| m.version < written[0].version));
    let replica = SessionStore::new("node-b", Limits::default(), ManualClock::at(T0));
    replica.apply(snapshot);
    replica.apply(written);
    assert_eq!(get(&replica, "k"), Some(b("v2")));
    assert_eq!(replica.stats().0, 2, "the hash came with the snapshot");
    assert_eq!(store.run(|ks, _| ks.writes()).value, 3);
}

#[test]
fn every_write_is_one_versioned_mutation() {
    let (store, _) = store();
    let first = set(&store, "k", "v1", SetExpiry::None);
    let second = set(&store, "k", "v2", SetExpiry::At(T0 + 5_000));
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    assert!(second[0].version > first[0].version);
    assert_eq!(
        second[0].op,
        Op::Set {
            value: b("v2"),
            expires_at_ms: Some(T0 + 5_000)
        }
    );
    // Reads make no mutations.
    assert!(store.run(|ks, now| ks.get(b"k", now)).mutations.is_empty());
    // A write that changes nothing makes none either.
    assert!(
        store
            .run(|ks, now| ks.delete(&[b("absent")], now))
            .mutations
            .to_mutations()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn mutations_replay_to_the_same_state_and_stale_ones_are_ignored() {
    let (primary, _) = store();
    let replica = SessionStore::new("node-b", Limits::default(), ManualClock::at(T0));
    let mut log = Vec::new();
    log.extend(set(&primary, "s", "1", SetExpiry::At(T0 + 60_000)));
    log.extend(
        primary
            .run(|ks, now| {
                ks.hset(b("h"), vec![(b("a"), b("1")), (b("b"), b("2"))], now)
                    .unwrap()
            })
            .mutations
            .to_mutations()
            .unwrap(),
    );
    log.extend(
        primary
            .run(|ks, now| ks.hdel(b("h"), vec![b("a")], now).unwrap())
            .mutations
            .to_mutations()
            .unwrap(),
    );
    log.extend(
        primary
            .run(|ks, now| ks.incr_by(b("n"), 5, now).unwrap())
            .mutations
            .to_mutations()
            .unwrap(),
    );
    log.extend(
        primary
            .run(|ks, now| ks.delete(&[b("n")], now))
            .mutations
            .to_mutations()
            .unwrap(),
    );
    assert_eq!(replica.apply(log.clone()).newer, log.len());
    // Applying everything again, or in reverse, changes nothing.
    assert_eq!(replica.apply(log.clone()).newer, 0);
    let reversed: Vec<Mutation> = log.iter().rev().cloned().collect();
    assert_eq!(replica.apply(reversed.clone()).newer, 0);
    for key in ["s", "h", "n"] {
        let a = primary
            .run(|ks, now| ks.entry(key.as_bytes(), now).cloned())
            .value;
        let b = replica
            .run(|ks, now| ks.entry(key.as_bytes(), now).cloned())
            .value;
        assert_eq!(a, b, "{key}");
    }
    assert_eq!(
        get(&replica, "n"),
        None,
        "a deleted key is not revived by its older set"
    );
}

#[test]
fn newest_version_wins_whichever_order_it_arrives_in() {
    let old = Mutation {
        key: b("k"),
        version: Version {
            millis: T0,
            counter: 0,
            node: 1,
        },
        op: Op::Set {
            value: b("old"),
            expires_at_ms: None,
        },
        db: 0,
        base: None,
    };
    let new = Mutation {
        key: b("k"),
        version: Version {
            millis: T0,
            counter: 0,
            node: 2,
        },
        op: Op::Set {
            value: b("new"),
            expires_at_ms: None,
        },
        db: 0,
        base: None,
    };
    for order in [[&old, &new], [&new, &old]] {
        let (store, _) = store();
        for m in order {
            store.apply(vec![m.clone()]);
        }
        assert_eq!(get(&store, "k"), Some(b("new")));
    }
}

#[test]
fn local_writes_after_a_newer_remote_one_order_after_it() {
    let (store, _) = store();
    let future = Version {
        millis: T0 + 60_000,
        counter: 9,
        node: 99,
    };
    store.apply(vec![Mutation {
        key: b("k"),
        version: future,
        op: Op::Delete,
        db: 0,
        base: None,
    }]);
    let written = set(&store, "k", "mine", SetExpiry::None);
    assert!(written[0].version > future);
    assert_eq!(get(&store, "k"), Some(b("mine")));
}

#[test]
fn set_options() {
    let (store, _) = store();
    let run = |key: &str, value: &str, expiry, condition, get| {
        store
            .run(|ks, now| ks.set(b(key), b(value), expiry, condition, get, now))
            .value
    };
    assert_eq!(
        run("k", "1", SetExpiry::None, SetCondition::IfPresent, false),
        Ok((false, None))
    );
    assert_eq!(
        run(
            "k",
            "1",
            SetExpiry::At(T0 + 1_000),
            SetCondition::IfAbsent,
            false
        ),
        Ok((true, None))
    );
    assert_eq!(
        run("k", "2", SetExpiry::None, SetCondition::IfAbsent, true),
        Ok((false, Some(b("1"))))
    );
    assert_eq!(
        run("k", "3", SetExpiry::Keep, SetCondition::IfPresent, true),
        Ok((true, Some(b("1"))))
    );
    assert_eq!(store.run(|ks, now| ks.pttl(b"k", now)).value, 1_000);
    assert_eq!(
        run("k", "4", SetExpiry::None, SetCondition::Always, false),
        Ok((true, None))
    );
    assert_eq!(store.run(|ks, now| ks.pttl(b"k", now)).value, -1);
    store.run(|ks, now| ks.hset(b("h"), vec![(b("f"), b("v"))], now).unwrap());
    assert_eq!(
        run("h", "x", SetExpiry::None, SetCondition::Always, true),
        Err(StoreError::WrongType)
    );
    assert_eq!(
        run("h", "x", SetExpiry::None, SetCondition::Always, false),
        Ok((true, None))
    );
    assert_eq!(get(&store, "h"), Some(b("x")), "SET replaces a hash");
    // A deadline in the past deletes.
    assert_eq!(
        run("h", "y", SetExpiry::At(T0 - 1), SetCondition::Always, false),
        Ok((true, None))
    );
    assert_eq!(get(&store, "h"), None);
}

#[test]
fn counters() {
    let (store, _) = store();
    let incr = |key: &str, by| store.run(|ks, now| ks.incr_by(b(key), by, now)).value;
    assert_eq!(incr("n", 1), Ok(1));
    assert_eq!(incr("n", -11), Ok(-10));
    set(
        &store,
        "big",
        &i64::MAX.to_string(),
        SetExpiry::At(T0 + 10_000),
    );
    assert_eq!(incr("big", 1), Err(StoreError::Overflow));
    assert_eq!(incr("big", -1), Ok(i64::MAX - 1));
    assert_eq!(
        store.run(|ks, now| ks.pttl(b"big", now)).value,
        10_000,
        "INCR keeps the TTL"
    );
    for bad in [
        "x",
        " 1",
        "1 ",
        "+1",
        "01",
        "-0",
        "",
        "99999999999999999999",
    ] {
        set(&store, "bad", bad, SetExpiry::None);
        assert_eq!(incr("bad", 1), Err(StoreError::NotInteger), "{bad:?}");
    }
    let hincr = |by| {
        store
            .run(|ks, now| ks.hincr_by(b("h"), b("f"), by, now))
            .value
    };
    assert_eq!(hincr(2), Ok(2));
    assert_eq!(hincr(3), Ok(5));
    store.run(|ks, now| ks.hset(b("h"), vec![(b("f"), b("x"))], now).unwrap());
    assert_eq!(hincr(1), Err(StoreError::HashNotInteger));
}

#[test]
fn hashes_keep_insertion_order_and_delete_empty_hashes() {
    let (store, _) = store();
    let added = store
        .run(|ks, now| {
            ks.hset(
                b("h"),
                vec![(b("z"), b("1")), (b("a"), b("2")), (b("z"), b("3"))],
                now,
            )
        })
        .value;
    assert_eq!(added, Ok(2));
    let all = store.run(|ks, now| ks.hgetall(b"h", now)).value.unwrap();
    assert_eq!(all, vec![(b("z"), b("3")), (b("a"), b("2"))]);
    assert_eq!(
        store
            .run(|ks, now| ks.hsetnx(b("h"), b("a"), b("9"), now))
            .value,
        Ok(false)
    );
    assert_eq!(
        store
            .run(|ks, now| ks.hdel(b("h"), vec![b("a"), b("a"), b("q")], now))
            .value,
        Ok(1)
    );
    assert_eq!(
        store
            .run(|ks, now| ks.hdel(b("h"), vec![b("z")], now))
            .value,
        Ok(1)
    );
    assert_eq!(store.run(|ks, now| ks.kind(b"h", now)).value, None);
    // A field named twice, shrinking, that the hash holds: the last value is what counts.
    let long = b("a value longer than both that follow");
    drop(store.run(|ks, now| ks.hset(b("h"), vec![(b("g"), long)], now)));
    let named_twice = vec![(b("g"), b("xy")), (b("n"), b("1")), (b("g"), b("x"))];
    assert_eq!(
        store.run(|ks, now| ks.hset(b("h"), named_twice, now)).value,
        Ok(1)
    );
    assert_eq!(
        store.run(|ks, now| ks.hget(b"h", b"g", now)).value,
        Ok(Some(b("x")))
    );
    let (used, recount) = store.run(|ks, _| (ks.used_bytes(), ks.recount().1)).value;
    assert_eq!(used, recount);
    assert_eq!(store.run(|ks, now| ks.delete(&[b("h")], now)).value, 1);
    set(&store, "s", "v", SetExpiry::None);
    assert_eq!(
        store.run(|ks, now| ks.hget(b"s", b"f", now)).value,
        Err(StoreError::WrongType)
    );
    assert_eq!(
        store
            .run(|ks, now| ks.hset(b("s"), vec![(b("f"), b("v"))], now))
            .value,
        Err(StoreError::WrongType)
    );
}

#[test]
fn expire_conditions() {
    let (store, _) = store();
    set(&store, "k", "v", SetExpiry::None);
    let expire = |at, cond| store.run(|ks, now| ks.expire(b("k"), at, cond, now)).value;
    assert!(!expire(
        T0 + 5_000,
        ExpireCondition {
            if_some: true,
            ..ExpireCondition::ALWAYS
        }
    ));
    assert!(
        !expire(
            T0 + 5_000,
            ExpireCondition {
                if_later: true,
                ..ExpireCondition::ALWAYS
            }
        ),
        "no expiry counts as infinite"
    );
    assert!(expire(
        T0 + 5_000,
        ExpireCondition {
            if_none: true,
            ..ExpireCondition::ALWAYS
        }
    ));
    assert!(!expire(
        T0 + 9_000,
        ExpireCondition {
            if_none: true,
            ..ExpireCondition::ALWAYS
        }
    ));
    assert!(!expire(
        T0 + 4_000,
        ExpireCondition {
            if_later: true,
            ..ExpireCondition::ALWAYS
        }
    ));
    assert!(expire(
        T0 + 9_000,
        ExpireCondition {
            if_later: true,
            ..ExpireCondition::ALWAYS
        }
    ));
    assert!(expire(
        T0 + 2_000,
        ExpireCondition {
            if_earlier: true,
            ..ExpireCondition::ALWAYS
        }
    ));
    assert_eq!(store.run(|ks, now| ks.pttl(b"k", now)).value, 2_000);
    assert!(store.run(|ks, now| ks.persist(b("k"), now)).value);
    assert!(!store.run(|ks, now| ks.persist(b("k"), now)).value);
    assert!(
        expire(T0 - 1, ExpireCondition::ALWAYS),
        "a past deadline deletes"
    );
    assert_eq!(store.run(|ks, now| ks.pttl(b"k", now)).value, -2);
    assert!(
        !expire(T0 + 1, ExpireCondition::ALWAYS),
        "no key, nothing to expire"
    );
}

#[test]
fn expired_keys_are_never_returned() {
    let (store, clock) = store();
    set(&store, "k", "v", SetExpiry::At(T0 + 1_000));
    store.run(|ks, now| ks.hset(b("h"), vec![(b("f"), b("v"))], now).unwrap());
    store.run(|ks, now| ks.expire(b("h"), T0 + 1_000, ExpireCondition::ALWAYS, now));
    clock.advance(999);
    assert_eq!(get(&store, "k"), Some(b("v")));
    clock.advance(1);
    assert_eq!(get(&store, "k"), None);
    assert_eq!(store.run(|ks, now| ks.hgetall(b"h", now)).value, Ok(vec![]));
    assert_eq!(
        store.run(|ks, now| ks.exists(&[b("k"), b("h")], now)).value,
        0
    );
    assert!(store.run(|ks, now| ks.keys(b"*", now)).value.is_empty());
    assert_eq!(
        store.run(|ks, now| ks.scan(0, None, 10, None, now)).value,
        (0, vec![])
    );
    // Expiry by time is not a write: nothing to replicate.
    assert!(store.run(|ks, now| ks.get(b"k", now)).mutations.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_removes_expired_keys_without_access() {
    let store = SessionStore::new("node-a", Limits::default(), TokioClock::starting_at(T0));
    for i in 0..5_000 {
        let key = format!("k{i}");
        store.run(|ks, now| {
            let ttl = if i % 2 == 0 { 1_000 } else { 60_000 };
            ks.set(
                b(&key),
                b("v"),
                SetExpiry::At(now + ttl),
                SetCondition::Always,
                false,
                now,
            )
            .unwrap()
        });
    }
    let sweeper = store.spawn_sweeper();
    assert_eq!(store.stats().0, 5_000);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        store.stats().0,
        5_000,
        "expired keys are kept for the grace period"
    );
    tokio::time::sleep(Duration::from_millis(keyspace::EXPIRED_GRACE_MS)).await;
    assert_eq!(
        store.stats().0,
        2_500,
        "half expired, then removed in the background"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        store.stats(),
        (0, 0),
        "all gone, memory accounted back to zero"
    );
    sweeper.abort();
}

#[test]
fn limits_refuse_writes_and_evict_nothing() {
    let set_size = |store: &SessionStore, key: &str, size: usize| {
        store
            .run(|ks, now| {
                let value = Bytes::from(vec![b'x'; size]);
                ks.set(
                    b(key),
                    value,
                    SetExpiry::None,
                    SetCondition::Always,
                    false,
                    now,
                )
            })
            .value
            .map(|_| ())
    };

    let limits = Limits {
        max_value_bytes: 100,
        max_memory_bytes: usize::MAX,
        max_keys: 5,
        ..Limits::default()
    };
    let store = SessionStore::new("node-a", limits, ManualClock::at(T0));
    let too_large = set_size(&store, "big", 101);
    assert_eq!(
        too_large,
        Err(StoreError::TooLarge {
            what: "value",
            size: 101,
            max: 100
        })
    );
    for i in 0..5 {
        set_size(&store, &format!("k{i}"), 10).unwrap();
    }
    assert_eq!(
        set_size(&store, "k5", 10),
        Err(StoreError::TooManyKeys { max: 5 })
    );
    set_size(&store, "k0", 20).unwrap(); // overwriting is not a new key
    let field = store
        .run(|ks, now| ks.hset(b("h"), vec![(Bytes::from(vec![b'f'; 101]), b("v"))], now))
        .value;
    assert!(
        matches!(field, Err(StoreError::TooLarge { what: "field", .. })),
        "{field:?}"
    );

    let limits = Limits {
        max_value_bytes: 100,
        max_memory_bytes: 1_000,
        max_keys: usize::MAX,
        ..Limits::default()
    };
    let store = SessionStore::new("node-a", limits, ManualClock::at(T0));
    set_size(&store, "first", 20).unwrap();
    let mut written = 0;
    let refused = loop {
        match set_size(&store, &format!("m{written}"), 100) {
            Ok(()) => written += 1,
            Err(err) => break err,
        }
        assert!(written < 100, "the memory limit never applied");
    };
    assert_eq!(refused, StoreError::OutOfMemory { max: 1_000 });
    let (keys, used) = store.stats();
    assert!(used <= 1_000, "{used}");
    assert_eq!(keys, written + 1, "nothing was evicted");
    assert_eq!(get(&store, "first").map(|v| v.len()), Some(20));
    // Deleting frees room again.
    store.run(|ks, now| ks.delete(&[b("m0")], now));
    set_size(&store, "again", 100).unwrap();
}

#[test]
fn scan_visits_every_key_once_across_calls() {
    let (store, _) = store();
    for i in 0..3_000 {
        set(&store, &format!("session:{i}"), "v", SetExpiry::None);
    }
    store.run(|ks, now| ks.hset(b("hash:1"), vec![(b("f"), b("v"))], now).unwrap());
    let mut seen = std::collections::HashSet::new();
    let mut cursor = 0;
    let mut calls = 0;
    loop {
        let (next, keys) = store
            .run(|ks, now| ks.scan(cursor, Some(b"session:*"), 100, None, now))
            .value;
        for key in keys {
            assert!(seen.insert(key), "a key returned twice");
        }
        calls += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(seen.len(), 3_000);
    assert!(calls > 10, "COUNT bounds the work per call ({calls} calls)");
    let (_, hashes) = store
        .run(|ks, now| ks.scan(0, None, 100_000, Some(b"hash"), now))
        .value;
    assert_eq!(hashes, vec![b("hash:1")]);
    assert_eq!(
        store.run(|ks, now| ks.keys(b"hash:*", now)).value,
        vec![b("hash:1")]
    );
}

/// Whatever sequence of writes, the incremental accounting equals a full recount.
#[test]
fn accounting_matches_a_recount_after_random_writes() {
    let (store, clock) = store();
    let mut seed = 42u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20_000 {
        let key = b(&format!("k{}", next(50)));
        let field = b(&format!("f{}", next(20)));
        let value = Bytes::from(vec![b'v'; next(100) as usize]);
        let member = b(&format!("m{}", next(30)));
        store.run(|ks, now| match next(17) {
            0 => drop(ks.set(
                key,
                value,
                SetExpiry::None,
                SetCondition::Always,
                false,
                now,
            )),
            1 => drop(ks.set(
                key,
                value,
                SetExpiry::At(now + 50),
                SetCondition::Always,
                false,
                now,
            )),
            2 => drop(ks.hset(key, vec![(field, value)], now)),
            3 => drop(ks.hdel(key, vec![field], now)),
            4 => drop(ks.delete(&[key], now)),
            5 => drop(ks.expire(key, now + 30, ExpireCondition::ALWAYS, now)),
            6 => drop(ks.persist(key, now)),
            7 => drop(ks.hincr_by(key, field, 1, now)),
            8 => drop(ks.incr_by(key, 1, now)),
            9 => drop(ks.sadd(key, vec![member, value], now)),
            10 => drop(ks.srem(key, vec![member], now)),
            11 => drop(ks.zadd(
                key,
                ZaddOptions::default(),
                vec![(1.5, member), (2.0, value)],
                now,
            )),
            12 => drop(ks.zrem(key, vec![member], now)),
            13 => drop(ks.push(key, next(2) == 0, vec![member, value], false, now)),
            14 => drop(ks.pop(key, next(2) == 0, 1, now)),
            15 => drop(ks.ltrim(key, 0, 3, now)),
            _ => drop(ks.zpop(key, 1, next(2) == 0, now)),
        });
        if next(10) == 0 {
            clock.advance(10);
            store.sweep_once();
        }
        if i % 500 == 0 {
            let (counted, kinds) = store
                .run(|ks, now| {
                    let counted = (ks.len(), ks.used_bytes(), ks.expiring_total());
                    let kinds: Vec<_> = (0..50)
                        .filter_map(|k| ks.kind(format!("k{k}").as_bytes(), now).map(Kind::name))
                        .collect();
                    ((counted, ks.recount()), kinds)
                })
                .value;
            assert_eq!(counted.0, counted.1, "after {i} writes");
            seen.extend(kinds);
        }
    }
    let (len, used, expiring, recount) = store
        .run(|ks, _| (ks.len(), ks.used_bytes(), ks.expiring_total(), ks.recount()))
        .value;
    assert_eq!((len, used, expiring), recount);
    assert!(len > 0);
    // Every type was held along the way, so every type's accounting was checked.
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[test]
fn a_snapshot_recreates_the_store_with_its_versions() {
    let (primary, clock) = store();
    for i in 0..2_500 {
        set(&primary, &format!("s{i}"), "v", SetExpiry::At(T0 + 60_000));
    }
    primary.run(|ks, now| {
        ks.hset(b("h"), vec![(b("a"), b("1")), (b("b"), b("2"))], now)
            .unwrap()
    });
    primary.run(|ks, now| ks.expire(b("h"), T0 + 5_000, ExpireCondition::ALWAYS, now));
    set(&primary, "gone", "v", SetExpiry::At(T0 + 10));
    clock.advance(20);
    let replica = SessionStore::new("node-b", Limits::default(), ManualClock::at(T0 + 20));
    let mut cursor = Some(0);
    let mut chunks = 0;
    while let Some(at) = cursor {
        let (next, mutations) = primary
            .run(|ks, now| ks.snapshot_chunk(at, 1_000, now))
            .value;
        replica.apply(mutations.clone());
        cursor = next;
        chunks += 1;
    }
    assert!(chunks >= 3, "{chunks} chunks");
    assert_eq!(
        replica.stats().0,
        2_501,
        "every live key, not the expired one"
    );
    for key in ["s0", "s2499", "h"] {
        let a = primary
            .run(|ks, now| ks.entry(key.as_bytes(), now).cloned())
            .value;
        let b = replica
            .run(|ks, now| ks.entry(key.as_bytes(), now).cloned())
            .value;
        assert_eq!(a, b, "{key}");
    }
}

#[test]
fn an_expired_copy_is_revived_by_a_late_touch_but_never_read() {
    let (primary, clock) = store();
    let replica = SessionStore::new("node-b", Limits::default(), clock.clone());
    let written = primary
        .run(|ks, now| ks.hset(b("s"), vec![(b("user"), b("ada"))], now).unwrap())
        .mutations
        .to_mutations()
        .unwrap();
    replica.apply(written.clone());
    let touch_at = T0 + 1_000;
    let expire = primary
        .run(|ks, now| ks.expire(b("s"), touch_at, ExpireCondition::ALWAYS, now))
        .mutations
        .to_mutations()
        .unwrap();
    replica.apply(expire.clone());
    // The primary extends the session just before the deadline; the copy gets the touch
    // just after it.
    clock.advance(999);
    let touch = primary
        .run(|ks, now| ks.expire(b("s"), now + 60_000, ExpireCondition::ALWAYS, now))
        .mutations
        .to_mutations()
        .unwrap();
    clock.advance(2);
    assert_eq!(
        replica.run(|ks, now| ks.hget(b"s", b"user", now)).value,
        Ok(None),
        "never read after its deadline"
    );
    replica.sweep_once();
    replica.apply(touch.clone());
    assert_eq!(
        replica.run(|ks, now| ks.hget(b"s", b"user", now)).value,
        Ok(Some(b("ada")))
    );

    // A local write on an expired copy starts afresh, and tells the partner to.
    let other = primary
        .run(|ks, now| ks.hset(b("x"), vec![(b("old"), b("1"))], now).unwrap())
        .mutations
        .to_mutations()
        .unwrap();
    replica.apply(other.clone());
    primary.run(|ks, now| ks.expire(b("x"), now + 10, ExpireCondition::ALWAYS, now));
    replica.apply(
        primary
            .run(|ks, now| ks.expire(b("x"), now + 10, ExpireCondition::ALWAYS, now))
            .mutations
            .to_mutations()
            .unwrap(),
    );
    clock.advance(20);
    let fresh = replica
        .run(|ks, now| ks.hset(b("x"), vec![(b("new"), b("2"))], now).unwrap())
        .mutations
        .to_mutations()
        .unwrap();
    assert!(matches!(fresh[0].op, Op::Delete), "{fresh:?}");
    primary.apply(fresh.clone());
    for side in [&primary, &replica] {
        let fields = side.run(|ks, now| ks.hgetall(b"x", now)).value.unwrap();
        assert_eq!(fields, vec![(b("new"), b("2"))]);
    }
    // Past the grace period the copy is gone for good.
    clock.advance(keyspace::EXPIRED_GRACE_MS + 61_000);
    replica.sweep_once();
    assert_eq!(replica.run(|ks, now| ks.kind(b"s", now)).value, None);
}

/// Local writes arrive as slices of a connection's read buffer. The store keeps copies of
/// whatever it holds on to (keys, field names, values, the keys of tombstones), new or
/// overwritten, so that no session keeps a whole buffer alive.
#[test]
fn writes_keep_nothing_of_the_request_buffer() {
    for recording in [false, true] {
        let (store, _) = store();
        store.set_recording(recording);
        let buffer = Bytes::from(b"keyotherhashfieldfield2value".repeat(64));
        let arg = |at: usize, len: usize| buffer.slice(at..at + len);
        let (key, other, hash, field, field2, value) = (
            arg(0, 3),
            arg(3, 5),
            arg(8, 4),
            arg(12, 5),
            arg(17, 6),
            arg(23, 5),
        );
        for _ in 0..2 {
            // The first round makes each key and field, the second overwrites them.
            store.run(|ks, now| {
                for key in [&key, &other] {
                    let (expiry, condition) = (SetExpiry::None, SetCondition::Always);
                    ks.set(key.clone(), value.clone(), expiry, condition, false, now)
                        .unwrap();
                }
                for field in [&field, &field2] {
                    ks.hset(hash.clone(), vec![(field.clone(), value.clone())], now)
                        .unwrap();
                }
            });
        }
        // Deletes leave tombstones under the key.
        store.run(|ks, now| {
            ks.delete(std::slice::from_ref(&other), now);
            ks.hdel(hash.clone(), vec![field.clone(), field2.clone()], now)
                .unwrap();
        });
        drop((key, other, hash, field, field2, value));
        assert!(
            buffer.is_unique(),
            "recording {recording}: the store holds a slice"
        );
        assert_eq!(
            store.run(|ks, now| ks.get(b"key", now)).value.unwrap(),
            Some(b("value"))
        );
    }
}

/// A hash travels whole in a snapshot or repair, so it may not outgrow a frame: the write
/// that would is refused with the limit named, and the hash stays as it was.
#[test]
fn a_hash_past_its_limit_is_refused_and_kept_as_it_was() {
    let limits = Limits {
        max_value_bytes: 1 << 20,
        ..Limits::default()
    };
    let store = SessionStore::new("node-a", limits, ManualClock::at(T0));
    let value = Bytes::from(vec![b'v'; 1 << 20]);
    let fields = (keyspace::MAX_COLLECTION_BYTES >> 20) - 1;
    for i in 0..fields {
        store
            .run(|ks, now| ks.hset(b("h"), vec![(b(&format!("f{i}")), value.clone())], now))
            .value
            .unwrap();
    }
    let refused = store
        .run(|ks, now| {
            ks.hset(
                b("h"),
                vec![(b("a"), value.clone()), (b("b"), value.clone())],
                now,
            )
        })
        .value;
    assert!(
        matches!(refused, Err(StoreError::TooLarge { what: "hash", .. })),
        "{refused:?}"
    );
    assert_eq!(
        store
            .run(|ks, now| ks.hgetall(b"h", now))
            .value
            .unwrap()
            .len(),
        fields
    );
    // Overwriting a field does not grow the hash: it passes.
    store
        .run(|ks, now| ks.hset(b("h"), vec![(b("f0"), value.clone())], now))
        .value
        .unwrap();
}

/// Writes of every type into databases 0 and 3 of `store`, with a delete among them.
fn every_type(store: &SessionStore, db: usize, tag: &str) {
    store.run_at(store.now_ms(), db, &mut false, |ks, now| {
        ks.set(
            b("s"),
            b(tag),
            SetExpiry::At(now + 60_000),
            SetCondition::Always,
            false,
            now,
        )
        .unwrap();
        ks.hset(b("h"), vec![(b("f"), b(tag)), (b("g"), b("2"))], now)
            .unwrap();
        ks.sadd(b("set"), vec![b("1"), b(tag), b("x")], now)
            .unwrap();
        ks.srem(b("set"), vec![b("x")], now).unwrap();
        let scores = vec![(1.5, b("a")), (f64::NEG_INFINITY, b(tag))];
        ks.zadd(b("z"), ZaddOptions::default(), scores, now)
            .unwrap();
        ks.push(b("l"), true, vec![b("1"), b("2"), b(tag)], false, now)
            .unwrap();
        ks.pop(b("l"), false, 1, now).unwrap();
        ks.lset(b("l"), 0, b("head"), now).unwrap();
        ks.set(
            b("gone"),
            b("v"),
            SetExpiry::None,
            SetCondition::Always,
            false,
            now,
        )
        .unwrap();
        ks.delete(&[b("gone")], now);
    });
}

/// Every key of databases 0 and 3, as entries.
fn contents(store: &SessionStore) -> Vec<(usize, Bytes, Option<Entry>)> {
    let mut all = Vec::new();
    for db in [0, 3] {
        for key in ["s", "h", "set", "z", "l", "gone"] {
            let entry = store.run_at(store.now_ms(), db, &mut false, |ks, now| {
                ks.entry(key.as_bytes(), now).cloned()
            });
            all.push((db, b(key), entry));
        }
    }
    all
}

/// Deltas of every type replay to the same state on a partner, whole values arrive by
/// snapshot, and anti-entropy finds and repairs a difference in each type and database.
#[test]
fn every_type_replicates_by_delta_snapshot_and_repair() {
    let (primary, _) = store();
    let replica = SessionStore::new("node-b", Limits::default(), ManualClock::at(T0));
    // Deltas, recorded as the primary makes them.
    let mut held = primary.lock();
    for db in [0, 3] {
        primary.run_locked(&mut held, primary.now_ms(), db, &mut false, |ks, now| {
            ks.sadd(b("set"), vec![b("1"), b("2")], now).unwrap();
            ks.push(b("l"), false, vec![b("a"), b("b")], false, now)
                .unwrap();
        });
    }
    // Without a sink, the writes wait in the outbox.
    let deltas = held.take_outbox_unsunk().to_mutations().unwrap();
    drop(held);
    assert!(deltas.iter().any(|m| m.db == 3) && deltas.iter().any(|m| m.db == 0));
    assert!(
        deltas
            .iter()
            .any(|m| matches!(m.op, Op::AddMembers { .. } | Op::Push { .. }))
    );
    replica.apply(deltas);
    every_type(&primary, 0, "p");
    every_type(&primary, 3, "p");
    // The replica gets the rest by snapshot.
    let snapshot = primary
        .run(|ks, now| ks.snapshot_chunk(0, usize::MAX, now))
        .value
        .1;
    replica.apply(snapshot);
    assert_eq!(contents(&primary), contents(&replica));

    // Writes the partner never saw (recording off), in every type: digests differ, and
    // the repair of the shards that differ makes the two equal.
    primary.set_recording(false);
    every_type(&primary, 3, "newer");
    every_type(&primary, 0, "newer");
    let digests = |store: &SessionStore| -> Vec<u64> {
        store
            .run(|ks, now| {
                (0..keyspace::SHARDS)
                    .map(|s| ks.shard_digest(s, now))
                    .collect()
            })
            .value
    };
    let (mine, theirs) = (digests(&primary), digests(&replica));
    let differing: Vec<usize> = (0..keyspace::SHARDS)
        .filter(|&s| mine[s] != theirs[s])
        .collect();
    assert!(differing.len() >= 5, "{differing:?}");
    for shard in differing {
        let repair = primary.run(|ks, now| ks.shard_repair(shard, now)).value;
        replica.apply(repair);
    }
    assert_eq!(contents(&primary), contents(&replica));
    assert_eq!(digests(&primary), digests(&replica));
}

/// `WATCH` sees any change to the key: a partner's write, an expiry, a delete; a command
/// that changed nothing changes no version.
#[test]
fn a_watched_key_changes_with_any_write_and_only_then() {
    let (primary, clock) = store();
    set(&primary, "k", "v", SetExpiry::At(T0 + 1_000));
    let mark = primary.run(|ks, now| ks.watch_mark(b"k", now)).value;
    let unchanged =
        |store: &SessionStore| !store.run(|ks, now| ks.changed_since(b"k", mark, now)).value;
    primary.run(|ks, now| {
        ks.set(
            b("k"),
            b("x"),
            SetExpiry::None,
            SetCondition::IfAbsent,
            false,
            now,
        )
    });
    assert!(unchanged(&primary), "a SET NX that wrote nothing");
    let added = primary.run(|ks, now| ks.sadd(b("other"), vec![b("m")], now));
    assert_eq!(added.value, Ok(1));
    assert!(unchanged(&primary), "another key");
    clock.advance(2_000);
    assert!(!unchanged(&primary), "the key expired");

    let (replica, _) = store();
    set(&replica, "k", "v", SetExpiry::None);
    let mark = replica.run(|ks, now| ks.watch_mark(b"k", now)).value;
    let partner = Mutation {
        key: b("k"),
        version: Version {
            millis: T0 + 5,
            counter: 0,
            node: 99,
        },
        op: Op::Set {
            value: b("theirs"),
            expires_at_ms: None,
        },
        db: 0,
        base: None,
    };
    replica.apply(vec![partner]);
    assert!(
        replica
            .run(|ks, now| ks.changed_since(b"k", mark, now))
            .value,
        "a partner's write"
    );
}
