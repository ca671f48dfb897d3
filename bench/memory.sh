#!/usr/bin/env bash
# Resident memory for KEYS sessions of SIZE bytes: redis-server next to `tandem agent`,
# in one run. Each server is started empty, its resident set size (VmRSS) read, the
# sessions written through the Redis protocol (redis-cli --pipe), and its RSS read again;
# redis-server also reports INFO memory. Then the agent with a partner: both agents' RSS
# once the partner holds every session. Then the collections: ELEMENTS elements of 16
# bytes in hashes, sets, sorted sets and lists of PER elements each, every type on a
# fresh server of each kind: the resident memory each element adds. Prints Markdown
# tables and writes $RESULTS/memory.csv and memory.png.
#
#   bench/memory.sh                   # 1,000,000 sessions of 1 KiB, 1,000,000 elements
#   KEYS=100000 ELEMENTS=100000 bench/memory.sh
#   PER=1000 bench/memory.sh          # larger collections (Redis' large encodings)
#
# Needs redis-server and redis-cli (Debian: redis-server, redis-tools) and python3.
source "$(dirname "$0")/lib.sh"

KEYS=${KEYS:-1000000}
SIZE=${SIZE:-1024}
ELEMENTS=${ELEMENTS:-1000000}
PER=${PER:-100}
need redis-server redis-cli   # Debian: redis-server redis-tools

mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
per_session() { awk -v a="$1" -v b="$2" -v n="$KEYS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }'; }
row() { # what, pid, rss-before-KiB
    local after; after=$(rss_kib "$2")
    printf '| %s | %s | %s | %s |\n' "$1" "$(mib "$3")" "$(mib "$after")" "$(per_session "$3" "$after")"
    echo "$1,RSS MiB,$(mib "$after")" >>"$results/memory.csv"
}

echo "sessions: $KEYS of $SIZE bytes; machine: $(nproc) cores, $(uname -r); $(redis-server --version | awk '{print $3}')"
echo
echo "| server | RSS empty, MiB | RSS with the sessions, MiB | bytes per session |"
echo "| --- | --- | --- | --- |"
: >"$results/memory.csv"

port=$(free_port)
start_redis "$port"
redis_pid=${pids[-1]}
before=$(rss_kib "$redis_pid")
load_sessions "$port" "$KEYS" "$SIZE"
[ "$(redis-cli -p "$port" dbsize)" -eq "$KEYS" ] || { echo "redis-server holds $(redis-cli -p "$port" dbsize) keys, not $KEYS" >&2; exit 1; }
row "redis-server" "$redis_pid" "$before"
used=$(redis-cli -p "$port" info memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r')
stop_all

port=$(free_port); seed=$(free_port)
start_agent a "$port" "$seed" ""
agent_pid=${pids[-1]}
before=$(rss_kib "$agent_pid")
load_sessions "$port" "$KEYS" "$SIZE"
[ "$(redis-cli -p "$port" dbsize)" -eq "$KEYS" ] || { echo "the agent holds $(redis-cli -p "$port" dbsize) sessions, not $KEYS" >&2; exit 1; }
row "tandem agent" "$agent_pid" "$before"

partner_port=$(free_port)
start_agent b "$partner_port" "$(free_port)" "$seed"
partner_pid=${pids[-1]}
partner_before=$(rss_kib "$partner_pid")
for _ in $(seq 600); do
    [ "$(redis-cli -p "$partner_port" dbsize)" -ge "$KEYS" ] && break
    sleep 0.1
done
[ "$(redis-cli -p "$partner_port" dbsize)" -eq "$KEYS" ] || { echo "the partner holds $(redis-cli -p "$partner_port" dbsize) sessions, not $KEYS" >&2; exit 1; }
sleep 1
row "tandem agent (paired)" "$agent_pid" "$before"
row "its partner (replica)" "$partner_pid" "$partner_before"
stop_all

echo
echo "redis-server INFO used_memory: $(mib $((used / 1024))) MiB"
"$chart" --title "Resident memory, $KEYS sessions of $SIZE bytes" --y-label "MiB" \
    --out "$results/memory.png" <"$results/memory.csv"

# Writes ELEMENTS elements of 16 bytes into collections of PER elements of one type, one
# command per collection (HSET, SADD, ZADD, RPUSH).
load_collections() { # port type
    python3 - "$2" "$ELEMENTS" "$PER" <<'PY' | redis-cli -p "$1" --pipe >/dev/null
import sys
kind, elements, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout.buffer
def command(*args):
    out.write(b"*%d\r\n" % len(args))
    for a in args:
        out.write(b"$%d\r\n%s\r\n" % (len(a), a))
for k in range(elements // per):
    key = b"%s:%d" % (kind.encode(), k)
    items = [b"element:%08d" % (k * per + i) for i in range(per)]  # 16 bytes
    if kind == "hash":
        command(b"HSET", key, *[x for i in items for x in (i, b"value:0123456789")])
    elif kind == "set":
        command(b"SADD", key, *items)
    elif kind == "zset":
        command(b"ZADD", key, *[x for n, i in enumerate(items) for x in (b"%d" % n, i)])
    else:
        command(b"RPUSH", key, *items)
PY
}

echo
echo "collections: $ELEMENTS elements of 16 bytes (a hash's field and its 16-byte value), $PER to a key"
echo
echo "| type | redis-server bytes per element | tandem agent bytes per element |"
echo "| --- | --- | --- |"
for kind in hash set zset list; do
    port=$(free_port)
    start_redis "$port"
    before=$(rss_kib "${pids[-1]}")
    load_collections "$port" "$kind"
    redis_per=$(awk -v a="$before" -v b="$(rss_kib "${pids[-1]}")" -v n="$ELEMENTS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    stop_all
    port=$(free_port)
    start_agent "m-$kind" "$port" "$(free_port)" ""
    before=$(rss_kib "${pids[-1]}")
    load_collections "$port" "$kind"
    [ "$(redis-cli -p "$port" dbsize)" -eq $((ELEMENTS / PER)) ] || { echo "the agent holds $(redis-cli -p "$port" dbsize) $kind keys" >&2; exit 1; }
    agent_per=$(awk -v a="$before" -v b="$(rss_kib "${pids[-1]}")" -v n="$ELEMENTS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    stop_all
    printf '| %s | %s | %s |\n' "$kind" "$redis_per" "$agent_per"
done
