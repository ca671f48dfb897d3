#!/usr/bin/env bash
# Redundancy restored: how long a new partner takes to hold every session of an agent.
# Loads KEYS sessions of SIZE bytes into one agent, starts a second agent that pairs with
# it, and measures from the second agent's start until its store holds them all (its
# DBSIZE), plus what the first agent logged for the snapshot.
#
#   bench/snapshot.sh                 # 100,000 sessions of 1 KiB
#   KEYS=1000000 bench/snapshot.sh
#
# Needs redis-cli (Debian: redis-tools) and python3.
source "$(dirname "$0")/lib.sh"

KEYS=${KEYS:-100000}
SIZE=${SIZE:-1024}
need redis-cli   # Debian: redis-tools

start_agent() { # name resp gossip [join]
    local join=()
    [ -n "${4:-}" ] && join=(--join "127.0.0.1:$4")
    "$tandem" agent --node-id "$1" --resp-addr "127.0.0.1:$2" --gossip-addr "127.0.0.1:$3" \
        --admin-addr "127.0.0.1:$(free_port)" --api-addr "127.0.0.1:$(free_port)" \
        --repl-addr "127.0.0.1:$(free_port)" --tls-dir "$work/tls" "${join[@]}" \
        >"$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$2" ping >/dev/null 2>&1 && return; sleep 0.1; done
}
now() { date +%s.%N; }

a_resp=$(free_port); a_gossip=$(free_port); b_resp=$(free_port)
start_agent a "$a_resp" "$a_gossip"
python3 - "$KEYS" "$SIZE" <<'PY' | redis-cli -p "$a_resp" --pipe >/dev/null
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
for i in range(keys):
    key = b"session:%d" % i
    value = (b"%d:" % i).ljust(size, b"x")
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
PY
loaded=$(redis-cli -p "$a_resp" dbsize)

started=$(now)
start_agent b "$b_resp" "$(free_port)" "$a_gossip"
while [ "$(redis-cli -p "$b_resp" dbsize)" -lt "$loaded" ]; do sleep 0.05; done
done_at=$(now)

echo "sessions: $loaded of $SIZE bytes; machine: $(nproc) cores"
awk -v s="$started" -v e="$done_at" -v n="$loaded" \
    'BEGIN { t = e - s; printf "new partner holds every session %.2f s after it was started (%.0f sessions/s)\n", t, n / t }'
grep -h "snapshot sent" "$work/a.log" | sed 's/^.*INFO //'
