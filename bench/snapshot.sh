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

now() { date +%s.%N; }

a_resp=$(free_port); a_gossip=$(free_port); b_resp=$(free_port)
start_agent a "$a_resp" "$a_gossip" ""
load_sessions "$a_resp" "$KEYS" "$SIZE"
loaded=$(redis-cli -p "$a_resp" dbsize)

started=$(now)
start_agent b "$b_resp" "$(free_port)" "$a_gossip"
while [ "$(redis-cli -p "$b_resp" dbsize)" -lt "$loaded" ]; do sleep 0.05; done
done_at=$(now)

echo "sessions: $loaded of $SIZE bytes; machine: $(nproc) cores"
awk -v s="$started" -v e="$done_at" -v n="$loaded" \
    'BEGIN { t = e - s; printf "new partner holds every session %.2f s after it was started (%.0f sessions/s)\n", t, n / t }'
grep -h "snapshot sent" "$work/agent-a.log" | sed 's/^.*INFO //'
