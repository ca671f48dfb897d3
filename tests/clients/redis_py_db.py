"""redis-py, unchanged, with a database number in the URL: a transaction pipeline (the
default), an optimistic lock with WATCH (redis-py's transaction helper), and the set,
sorted-set and list calls session and queue libraries make. Prints what each call returned
(the test compares the transcript with redis-server's); fails on a wrong one.

Usage: redis_py_db.py HOST PORT
"""
import sys

import redis


def main(host: str, port: int) -> None:
    for protocol in (2, 3):
        r = redis.Redis.from_url(f"redis://{host}:{port}/1", protocol=protocol, decode_responses=True)
        other = redis.Redis.from_url(f"redis://{host}:{port}/0", protocol=protocol, decode_responses=True)
        r.flushdb()
        other.set("only-in-0", "x")
        assert r.get("only-in-0") is None, "databases are apart"
        pipe = r.pipeline()
        pipe.set("session:1", "a", ex=60).hset("h", mapping={"f": "1"}).incr("n").get("session:1")
        result = pipe.execute()
        assert result == [True, 1, 1, "a"], result

        def bump(pipe):
            current = int(pipe.get("counter") or 0)
            pipe.multi()
            pipe.set("counter", current + 1)

        for _ in range(3):
            r.transaction(bump, "counter")
        assert r.get("counter") == "3"
        assert r.sadd("tags", "a", "b", "c") == 3
        assert r.smembers("tags") == {"a", "b", "c"}
        assert r.srem("tags", "b") == 1 and r.sismember("tags", "a")
        assert r.zadd("scores", {"ada": 3, "bob": 1.5}) == 2
        assert r.zincrby("scores", 2, "bob") == 3.5
        ranked = [tuple(pair) for pair in r.zrange("scores", 0, -1, withscores=True)]
        assert ranked == [("ada", 3.0), ("bob", 3.5)], ranked
        assert r.zrangebyscore("scores", 3.2, "+inf") == ["bob"]
        assert r.rpush("queue", "j1", "j2", "j3") == 3
        assert r.lpop("queue") == "j1"
        assert r.lmove("queue", "done", "LEFT", "RIGHT") == "j2"
        assert r.lrange("done", 0, -1) == ["j2"] and r.llen("queue") == 1
        assert r.rename("session:1", "session:2") is True
        assert r.get("session:2") == "a" and 0 < r.ttl("session:2") <= 60
        assert r.copy("session:2", "copied", destination_db=0) is True
        assert other.get("copied") == "a"
        info = r.info("keyspace")
        assert info["db1"]["keys"] == r.dbsize(), info
        print(f"resp{protocol}: pipeline {result}, counter {r.get('counter')}, "
              f"scores {ranked}, dbsize {r.dbsize()}")
        other.delete("only-in-0", "copied")
    print("redis-py: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
