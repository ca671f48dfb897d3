"""Django 5's cache API and cache sessions, through django-redis and through Django's own
RedisCache, unchanged, against the server at HOST:PORT, database DB. Prints what each call
returned (the test compares the transcript with redis-server's) and fails on a wrong one.

Usage: django_cache.py HOST PORT DB
"""
import sys

import django
from django.conf import settings


def main(host: str, port: int, db: int) -> None:
    location = f"redis://{host}:{port}/{db}"
    settings.configure(
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": location,
            },
            "builtin": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": location,
            },
        },
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        SESSION_CACHE_ALIAS="default",
        INSTALLED_APPS=["django.contrib.sessions"],
        SECRET_KEY="a-secret-for-tests",
        USE_TZ=True,
    )
    django.setup()
    from django.core.cache import caches

    for alias in ("default", "builtin"):
        cache = caches[alias]
        say = lambda what, value: print(f"{alias} {what}: {value!r}")
        cache.clear()
        assert cache.set("a", {"user": "ada"}, timeout=60) in (None, True)
        say("get", cache.get("a"))
        assert cache.get("a") == {"user": "ada"}
        assert cache.add("a", "other") is False
        assert cache.add("b", 1) is True
        cache.set_many({"c": 3, "d": [4, 5], "e": "five"}, timeout=120)
        many = cache.get_many(["a", "c", "d", "e", "missing"])
        say("get_many", sorted(many.items()))
        assert many == {"a": {"user": "ada"}, "c": 3, "d": [4, 5], "e": "five"}, many
        assert cache.incr("c") == 4
        assert cache.incr("c", 10) == 14
        assert cache.decr("c", 4) == 10
        say("incr", cache.get("c"))
        if alias == "builtin":
            # (django-redis finds a missing key with a Lua script, which scripting brings.)
            try:
                cache.incr("missing")
                raise AssertionError("incr of a missing key must fail")
            except ValueError:
                pass
        assert cache.touch("a", 300) is True
        assert cache.touch("missing", 300) is False
        assert cache.has_key("b") is True
        cache.delete_many(["b", "c"])
        assert cache.get("b") is None and cache.get("c") is None
        assert cache.get_or_set("f", "made", timeout=30) == "made"
        say("after delete_many", sorted(cache.get_many(["a", "b", "c", "d", "e", "f"]).items()))
        cache.clear()
        say("after clear", cache.get_many(["a", "d", "e", "f"]))
        assert cache.get_many(["a", "d", "e", "f"]) == {}

    # Cache sessions: create, load, change the id (as at login), flush.
    from django.contrib.sessions.backends.cache import SessionStore

    session = SessionStore()
    session["user_id"] = 42
    session["cart"] = ["book"]
    session.save()
    key = session.session_key
    loaded = SessionStore(session_key=key)
    assert loaded["user_id"] == 42 and loaded["cart"] == ["book"], dict(loaded)
    loaded.cycle_key()
    new_key = loaded.session_key
    assert new_key != key
    assert SessionStore(session_key=new_key)["user_id"] == 42
    assert not SessionStore().exists(key), "the old id is gone"
    again = SessionStore(session_key=new_key)
    again.flush()
    assert not SessionStore().exists(new_key)
    print("sessions: created, loaded, cycled, flushed")
    print("django: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
