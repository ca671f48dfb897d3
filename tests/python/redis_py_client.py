"""redis-py against a Tandem agent: the calls web frameworks' session stores make.

Usage: redis_py_client.py HOST PORT
"""
import sys
import time

import redis


def main(host: str, port: int) -> None:
    for protocol in (2, 3):
        r = redis.Redis(host=host, port=port, protocol=protocol, decode_responses=True)
        prefix = f"resp{protocol}:"
        assert r.ping() is True
        assert r.set(prefix + "session:a", "payload", ex=60) is True
        assert r.get(prefix + "session:a") == "payload"
        assert 58 <= r.ttl(prefix + "session:a") <= 60
        assert r.setex(prefix + "session:b", 30, "x") is True
        assert r.exists(prefix + "session:a", prefix + "session:b") == 2
        assert r.hset(prefix + "h", mapping={"user": "ada", "n": "1"}) == 2
        assert r.hgetall(prefix + "h") == {"user": "ada", "n": "1"}
        assert r.hincrby(prefix + "h", "n", 4) == 5
        assert r.hmget(prefix + "h", ["user", "missing"]) == ["ada", None]
        assert r.expire(prefix + "h", 100) is True
        assert r.persist(prefix + "h") is True
        assert r.ttl(prefix + "h") == -1
        assert r.incr(prefix + "counter") == 1
        assert r.getdel(prefix + "counter") == "1"
        assert r.getex(prefix + "session:a", px=5000) == "payload"
        found = sorted(r.scan_iter(match=prefix + "session:*", count=5))
        assert found == [prefix + "session:a", prefix + "session:b"], found
        assert r.delete(prefix + "session:a", prefix + "session:b") == 2
        assert r.get(prefix + "session:a") is None
        try:
            r.hget(prefix + "counter-string", "x") if r.set(prefix + "counter-string", "s") else None
            raise AssertionError("WRONGTYPE expected")
        except redis.ResponseError as err:
            assert str(err).startswith("WRONGTYPE"), err
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"{prefix}p{i}", i)
        pipe.mget([f"{prefix}p{i}" for i in range(100)])
        results = pipe.execute()
        assert results[-1] == [str(i) for i in range(100)]
        r.close()
    # Expiry is honoured.
    r = redis.Redis(host=host, port=port)
    r.set("short", "v", px=200)
    time.sleep(0.4)
    assert r.get("short") is None
    print("redis-py: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
