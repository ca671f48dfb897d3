#!/usr/bin/env bash
# Anti-entropy under sustained writes: an agent paired with a partner (sync mode), both
# comparing their stores every INTERVAL (3s), under redis-benchmark SET -P 16 from 50
# clients with 1 KiB values, ROUNDS rounds of REQUESTS each. Once with both agents
# speaking protocol 2.1 (each side sends the other the whole of every shard whose digest
# differs: writes in flight make the shards they touch differ) and once with 2.2 (the
# versions of those shards' keys go first, then only the keys that differ). Prints, per
# protocol, the requests/s of each round, the comparisons made and the keys sent whole.
#
#   bench/anti-entropy.sh
#   INTERVAL=1s ROUNDS=10 bench/anti-entropy.sh
#
# Needs redis-benchmark and redis-cli (Debian: redis-tools) and curl.
source "$(dirname "$0")/lib.sh"

INTERVAL=${INTERVAL:-3s}
REQUESTS=${REQUESTS:-1000000}
ROUNDS=${ROUNDS:-6}
need redis-benchmark redis-cli curl

# The sum of an unlabelled counter over the agents' /metrics.
counter() { # name admin...
    local name=$1 total=0 admin
    shift
    for admin in "$@"; do
        total=$((total + $(curl -s "http://$admin/metrics" | awk -v m="$name" '$1 == m { printf "%d", $2 }')))
    done
    echo "$total"
}

echo "machine: $(nproc) cores, $(uname -r); tandem $($tandem version | awk '{print $2}')"
echo "SET -P 16, 50 clients, 1 KiB values, $REQUESTS requests per round, anti-entropy every $INTERVAL"
echo
echo "| protocol | requests/s of each round | slowest / fastest | comparisons | keys sent whole |"
echo "| --- | --- | --- | --- | --- |"
for protocol in 2.1 2.2; do
    v=${protocol/./}   # in node ids, which name certificates: a21, b22
    # Each port picked right before its agent starts: a port picked earlier may be
    # handed out again meanwhile.
    seed=$(free_port); a=$(free_port)
    start_agent "a$v" "$a" "$seed" "" --protocol "$protocol" --anti-entropy-interval "$INTERVAL"
    b=$(free_port)
    start_agent "b$v" "$b" "$(free_port)" "$seed" --protocol "$protocol" --anti-entropy-interval "$INTERVAL"
    admins=("$(admin_of "a$v")" "$(admin_of "b$v")")
    for _ in $(seq 300); do
        "$tandem" members --admin "${admins[0]}" --json 2>/dev/null | grep -Eq '"partner": *\{' && break
        sleep 0.1
    done
    rounds=()
    for _ in $(seq "$ROUNDS"); do
        rps=$("${on_client[@]}" redis-benchmark -p "$a" -t set -n "$REQUESTS" -P 16 -c 50 -d 1024 -r 1000000 -q |
            tr '\r' '\n' | awk '/requests per second/ { v = $2 } END { printf "%d", v }')
        rounds+=("$rps")
    done
    sorted=$(printf '%s\n' "${rounds[@]}" | sort -n)
    echo "| $protocol | ${rounds[*]} | $(head -1 <<<"$sorted") / $(tail -1 <<<"$sorted") |" \
        "$(counter tandem_repl_anti_entropy_rounds_total "${admins[@]}") |" \
        "$(counter tandem_repl_repair_keys_sent_total "${admins[@]}") |"
    stop_all
done
