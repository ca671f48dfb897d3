#!/usr/bin/env bash
# The agent's Redis-protocol store next to redis-server, measured in one run with
# redis-benchmark: SET, GET and HSET with 1 KiB values and 50 clients, without and with
# pipelining (-P 16). Prints a Markdown table (requests/s and p50/p99 latency).
#
#   bench/resp.sh            # 200,000 requests per test
#   REQUESTS=1000000 bench/resp.sh
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
SIZE=${SIZE:-1024}
TESTS=${TESTS:-set,get,hset}

for tool in redis-server redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "bench/resp.sh: $tool is missing (apt-get install redis-server redis-tools)" >&2; exit 1; }
done

cargo build --release --quiet
tandem=target/release/tandem

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
agent_port=$(free_port)
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$work/redis.log" 2>&1 &
pids+=($!)
"$tandem" agent --node-id bench --gossip-addr "127.0.0.1:$(free_port)" --admin-addr "127.0.0.1:$(free_port)" \
    --resp-addr "127.0.0.1:$agent_port" --api-addr "127.0.0.1:$(free_port)" >"$work/agent.log" 2>&1 &
pids+=($!)
for port in "$redis_port" "$agent_port"; do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

# One redis-benchmark run; prints "test,rps,p50,p99" lines.
measure() {
    local port=$1 pipeline=$2
    redis-benchmark -h 127.0.0.1 -p "$port" -t "$TESTS" -n "$REQUESTS" -c "$CLIENTS" -d "$SIZE" \
        -P "$pipeline" -r 100000 --csv 2>/dev/null |
        awk -F, 'NR > 1 { gsub(/"/, ""); print $1 "," $2 "," $5 "," $7 }'
}

echo "redis-benchmark: $REQUESTS requests per test, $CLIENTS clients, ${SIZE}-byte values, random keys over 100,000"
echo "machine: $(nproc) cores, $(uname -r); $(redis-server --version | awk '{print $3}'), tandem $($tandem version | awk '{print $2}')"
echo
echo "| test | pipeline | redis-server req/s | tandem agent req/s | tandem / redis | redis p50 / p99 ms | tandem p50 / p99 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for pipeline in 1 16; do
    paste -d, <(measure "$redis_port" "$pipeline") <(measure "$agent_port" "$pipeline") |
    while IFS=, read -r test r_rps r_p50 r_p99 _ a_rps a_p50 a_p99; do
        ratio=$(awk -v a="$a_rps" -v r="$r_rps" 'BEGIN { printf "%.2f", a / r }')
        printf '| %s | %s | %.0f | %.0f | %s | %s / %s | %s / %s |\n' \
            "$test" "$pipeline" "$r_rps" "$a_rps" "$ratio" "$r_p50" "$r_p99" "$a_p50" "$a_p99"
    done
done
