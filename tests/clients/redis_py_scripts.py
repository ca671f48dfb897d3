"""redis-py, unchanged: register_script (EVALSHA, with its load-and-retry on NOSCRIPT),
a script's errors, and pubsub() receiving keyspace events, `del` and `expired` among
them, in RESP2 and RESP3. Prints what each call returned (the test compares the
transcript with redis-server's); fails on a wrong one.

Usage: redis_py_scripts.py HOST PORT
"""
import sys
import time

import redis


def events(pubsub, want: int, within: float = 5.0):
    got = []
    deadline = time.time() + within
    while len(got) < want and time.time() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            got.append((message["channel"], message["data"]))
    return got


def main(host: str, port: int) -> None:
    for protocol in (2, 3):
        r = redis.Redis(host=host, port=port, db=4, protocol=protocol, decode_responses=True)
        r.flushdb()
        r.script_flush()
        touch = r.register_script(
            "redis.call('hset', KEYS[1], 'seen', ARGV[1]) "
            "redis.call('pexpire', KEYS[1], ARGV[2]) "
            "return redis.call('hincrby', KEYS[1], 'hits', 1)"
        )
        assert not r.script_exists(touch.sha)[0]
        hits = [touch(keys=["session:a"], args=["t1", 60000]) for _ in range(3)]
        assert hits == [1, 2, 3], hits
        assert r.script_exists(touch.sha) == [True]
        assert 0 < r.pttl("session:a") <= 60000
        try:
            r.eval("return redis.call('incr', KEYS[1])", 1, "session:a")
            raise AssertionError("INCR of a hash succeeded")
        except redis.ResponseError as err:
            assert "WRONGTYPE" in str(err), err
        assert r.eval("return {1, 'two', {3}}", 0) == [1, "two", [3]]

        p = r.pubsub()
        r.config_set("notify-keyspace-events", "Egx")
        p.psubscribe("__keyevent@4__:*")
        assert p.get_message(timeout=1)["type"] == "psubscribe"
        r.set("gone", "v")
        r.delete("gone")
        r.set("brief", "v", px=100)
        # "Egx": generic and expired events only (no "set").
        heard = events(p, 2)
        print(f"resp{protocol}: hits {hits}, events {heard}")
        assert heard == [
            ("__keyevent@4__:del", "gone"),
            ("__keyevent@4__:expire", "brief"),
        ], heard
        expired = events(p, 1)
        assert expired == [("__keyevent@4__:expired", "brief")], expired
        p.close()
        r.config_set("notify-keyspace-events", "")
    print("redis-py scripts and pubsub: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
