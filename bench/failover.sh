#!/usr/bin/env bash
# Failover under sticky load: five agents with the demo app (two pairs and a spare), a
# balancer in front, USERS users clicking their session counters without pause through
# it. The agent that holds KEYS more sessions of SIZE bytes is killed with `kill -9`
# while they click. Measured:
#
# * failed clicks and lost session writes (a counter reset, repeated or rolled back);
# * the preloaded sessions found on the survivor, and on its new partner;
# * time from the kill until the balancer's routing table no longer routes to the node;
# * time from the kill until redundancy is restored: the survivor paired with the spare
#   and the spare holding every session the survivor holds.
#
# Prints a Markdown table and writes $RESULTS/failover.csv and failover.png (clicks
# answered per node per 100 ms around the kill).
#
#   bench/failover.sh                 # 200 users, 100,000 sessions of 1 KiB
#   USERS=50 KEYS=10000 bench/failover.sh
#
# Needs redis-cli (Debian: redis-tools), curl and python3.
source "$(dirname "$0")/lib.sh"

USERS=${USERS:-200}
KEYS=${KEYS:-100000}
SIZE=${SIZE:-1024}
need redis-cli curl python3
clicks=${CARGO_TARGET_DIR:-target}/release/clicks
now_ms() { date +%s%3N; }

seed=$(free_port)
declare -A resp admin agent_pid
for i in 1 2 3 4 5; do
    resp[a$i]=$(free_port)
    if [ "$i" -eq 1 ]; then
        start_agent a1 "${resp[a1]}" "$seed" "" --demo-app "127.0.0.1:$(free_port)"
    else
        start_agent "a$i" "${resp[a$i]}" "$(free_port)" "$seed" --demo-app "127.0.0.1:$(free_port)"
    fi
    agent_pid[a$i]=${pids[-1]}
    admin[a$i]=$(admin_of "a$i")
done

# Reads the members view: "paired-count lone-agent" or a partner lookup.
view() { # admin-address python-expression over `agents` (id -> member)
    members_json "$1" | python3 -c "
import json, sys
agents = {m['id']: m for m in json.load(sys.stdin)['members'] if m.get('role') == 'agent' and m['live']}
partner = lambda a: (agents.get(a, {}).get('partner') or {}).get('node_id')
print($2)"
}
for _ in $(seq 600); do
    [ "$(view "${admin[a1]}" "sum(1 for a in agents if partner(a) and partner(partner(a)) == a), len(agents)")" = "4 5" ] && break
    sleep 0.1
done
[ "$(view "${admin[a1]}" "len([a for a in agents if not partner(a)])")" = 1 ] ||
    { echo "bench/failover.sh: the agents did not form two pairs and a spare:" >&2; "$tandem" members --admin "${admin[a1]}" >&2; exit 1; }
spare=$(view "${admin[a1]}" "[a for a in sorted(agents) if not partner(a)][0]")
listen=$(free_port)
start_balancer "$seed" "$listen"

echo "$USERS users clicking through the balancer; $(nproc) cores"
"$clicks" --balancer "127.0.0.1:$listen" --users "$USERS" --duration "${DURATION:-30s}" >"$work/clicks.json" &
clicks_pid=$!
# The victim: the paired agent that serves the most users; it is given KEYS sessions more.
sleep 1
victim=$(for a in a1 a2 a3 a4 a5; do
    [ "$a" = "$spare" ] || echo "$(redis-cli -p "${resp[$a]}" dbsize) $a"
done | sort -rn | head -1 | cut -d' ' -f2)
survivor=$(view "${admin[a1]}" "partner('$victim')")
echo "victim: $victim (of the paired agents, the one holding the most demo sessions), paired with $survivor; spare: $spare"
load_sessions "${resp[$victim]}" "$KEYS" "$SIZE"
echo "loaded $KEYS sessions of $SIZE bytes into $victim"
sleep 2
killed_at=$(now_ms)
kill -9 "${agent_pid[$victim]}"

routed_off=""
redundant=""
# Each condition is checked every few tens of milliseconds (the checks themselves take
# some) and timed when it is first seen to hold.
while [ -z "$routed_off" ] || [ -z "$redundant" ]; do
    if [ -z "$routed_off" ]; then
        usable=$(curl -s "http://$balancer_admin/v1/routes" | python3 -c "
import json, sys
backends = json.load(sys.stdin)['backends']
print(next((b for b in backends if b['id'] == '$victim'), {}).get('usable', False))")
        [ "$usable" = False ] && routed_off=$(($(now_ms) - killed_at))
    fi
    if [ -z "$redundant" ] &&
        [ "$(view "${admin[$survivor]}" "partner('$survivor') == '$spare' and partner('$spare') == '$survivor' and not agents['$survivor'].get('snapshot')")" = True ] &&
        [ "$(redis-cli -p "${resp[$spare]}" dbsize)" -ge "$(redis-cli -p "${resp[$survivor]}" dbsize)" ]; then
        redundant=$(($(now_ms) - killed_at))
    fi
    [ $(($(now_ms) - killed_at)) -gt 120000 ] && { echo "bench/failover.sh: not recovered within 2 minutes" >&2; exit 1; }
    sleep 0.02
done
wait "$clicks_pid"

count_sessions() { redis-cli -p "$1" --scan --pattern 'session:*' | wc -l; }
on_survivor=$(count_sessions "${resp[$survivor]}")
on_spare=$(count_sessions "${resp[$spare]}")

python3 - "$work/clicks.json" "$killed_at" "$victim" "$results/failover.csv" <<'PY' >"$work/summary"
import json, sys
report = json.load(open(sys.argv[1]))
killed_at, victim = int(sys.argv[2]), sys.argv[3]
timeline = {int(t): nodes for t, nodes in report["timeline"].items()}
last_on_victim = max((t for t, nodes in timeline.items() if victim in nodes), default=killed_at)
nodes = sorted({n for nodes in timeline.values() for n in nodes})
with open(sys.argv[4], "w") as out:
    out.write("seconds since the kill,node,clicks per 100 ms\n")
    for t in sorted(timeline):
        for n in nodes:
            out.write("%.1f,%s,%d\n" % ((t - killed_at) / 1000, n, timeline[t].get(n, 0)))
print(report["clicks"], report["failed"], report["lost"], report["p50_ms"], report["p99_ms"], report["max_ms"],
      last_on_victim + 100 - killed_at, json.dumps(report["errors"]))
PY
read -r total failed lost p50 p99 max last errors <"$work/summary"

echo
echo "| what | measured | goal |"
echo "| --- | --- | --- |"
echo "| clicks answered (all users, ${DURATION:-30s}) | $((total - failed)) of $total | all |"
echo "| failed clicks | $failed $( [ "$failed" -gt 0 ] && echo "$errors") | 0 |"
echo "| lost session writes (counter reset, repeated or rolled back) | $lost | 0 |"
echo "| click latency p50 / p99 / max, ms | $p50 / $p99 / $max | |"
echo "| preloaded sessions on the survivor ($survivor) | $on_survivor of $KEYS | all |"
echo "| preloaded sessions on its new partner ($spare) | $on_spare of $KEYS | all |"
echo "| kill → last click answered by the dead node | ≤ $last ms | |"
echo "| kill → the balancer's routing table stops routing to it | $routed_off ms | |"
echo "| kill → redundancy restored ($survivor paired with $spare, which holds every session) | $redundant ms | |"
"$chart" --lines --title "Clicks answered per node, kill -9 of $victim at 0 s" --x-label "seconds since the kill" \
    --y-label "clicks per 100 ms" --out "$results/failover.png" <"$results/failover.csv"
