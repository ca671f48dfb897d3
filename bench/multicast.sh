#!/usr/bin/env bash
# Replicated writes between two hosts of one subnet: an agent paired with a partner that
# replicates by multicast (`--multicast auto`) next to the same pair over QUIC + mutual TLS
# (`--multicast off`), both in sync mode (a write returns once the partner has it), with
# redis-server and a replica on the same two hosts as the anchor, all in one run.
#
# The hosts are network namespaces on one bridge (as two servers on one switch); the load
# generator runs on the first host beside the agent, as an app server would. Prints a
# Markdown table: requests/s, p50/p99 latency, and the CPU both servers spent per request.
#
#   sudo bench/multicast.sh                 # 200,000 requests per test
#   sudo REQUESTS=1000000 TESTS=set bench/multicast.sh
#
# Needs root, iproute2, redis-server and redis-benchmark (Debian: iproute2 redis-server
# redis-tools).
source "$(dirname "$0")/lib.sh"

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
SIZE=${SIZE:-1024}
TESTS=${TESTS:-set,hset}   # writes: reads are not replicated

need ip redis-server redis-benchmark redis-cli
[ "$(id -u)" = 0 ] || { echo "bench/multicast.sh: network namespaces need root" >&2; exit 1; }

# Two hosts, 10.231.0.1 and .2, on a bridge inside a switch namespace of their own (a
# namespace with no firewall: where br_netfilter is loaded, bridged frames would meet the
# host's FORWARD policy).
net=tmb$$
subnet=10.231.0
if ip -4 -o addr show | grep -q " $subnet\."; then
    echo "bench/multicast.sh: $subnet.0/24 is in use on this machine" >&2; exit 1
fi
teardown() { for ns in "$net-a" "$net-b" "$net-sw"; do ip netns del "$ns" 2>/dev/null || true; done; }
trap 'cleanup; teardown' EXIT
ip netns add "$net-sw"
ip -n "$net-sw" link add br0 type bridge
ip -n "$net-sw" link set br0 type bridge mcast_snooping 0
ip -n "$net-sw" link set br0 up
for host in a b; do
    last=$([ "$host" = a ] && echo 1 || echo 2)
    ip netns add "$net-$host"
    ip -n "$net-$host" link set lo up
    ip -n "$net-sw" link add "p-$host" type veth peer name eth0 netns "$net-$host"
    ip -n "$net-sw" link set "p-$host" master br0 up
    ip -n "$net-$host" addr add "$subnet.$last/24" dev eth0
    ip -n "$net-$host" link set eth0 up
done
ip_a=$subnet.1
ip_b=$subnet.2
on() { local host=$1; shift; ip netns exec "$net-$host" "$@"; }
# Starts a program on a host in the background, to be stopped on exit. `ip netns exec`
# execs the program, so the pid kept is the program's.
spawn_on() { # host log program args...
    local host=$1 log=$2
    shift 2
    ip netns exec "$net-$host" "$@" >"$log" 2>&1 &
    pids+=($!)
}

wait_ping() { # host ip
    for _ in $(seq 100); do on "$1" redis-cli -h "$2" -p 6380 ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "bench/multicast.sh: nothing answers on $2:6380" >&2; exit 1
}

start_redis() { # host ip [replicaof-ip]
    local extra=()
    [ -n "${3:-}" ] && extra=(--replicaof "$3" 6380)
    spawn_on "$1" "$work/redis-$1.log" \
        redis-server --port 6380 --bind "$2" --protected-mode no --save '' --appendonly no --dir "$work" "${extra[@]}"
    wait_ping "$1" "$2"
}

start_agent() { # host ip multicast [seed-ip]
    local join=()
    [ -n "${4:-}" ] && join=(--join "$4:7946")
    spawn_on "$1" "$work/agent-$1-$3.log" \
        "$tandem" agent --node-id "$1" --gossip-addr "$2:7946" --admin-addr "$2:7951" \
        --resp-addr "$2:6380" --api-addr 127.0.0.1:7950 --repl-addr 0.0.0.0:7947 \
        --tls-dir "$work/tls" --replication sync --multicast "$3" "${join[@]}"
    wait_ping "$1" "$2"
}

wait_transport() { # the transport both agents must report
    for _ in $(seq 150); do
        local view
        view=$(on a "$tandem" members --admin "$ip_a:7951" --json 2>/dev/null || true)
        [ "$(grep -c "\"transport\": *\"$1\"" <<<"$view")" = 2 ] && return
        sleep 0.2
    done
    echo "bench/multicast.sh: the pair never replicated by $1; the members view:" >&2
    on a "$tandem" members --admin "$ip_a:7951" >&2 || tail -n 5 "$work"/agent-*.log >&2
    exit 1
}

# Each setup in turn, its measurements in $work/<setup>.csv (one line per test and
# pipelining depth).
run() { # setup
    for pipeline in 1 16; do
        # shellcheck disable=SC2086
        BENCH_NETNS=$net-a measure "$ip_a" 6380 "$pipeline" "${pids[@]}" | sed "s/^/$pipeline,/"
    done >"$work/$1.csv"
    stop_all
}

echo "redis-benchmark on host a: $REQUESTS requests per test ($(requests_for 16) pipelined), $CLIENTS clients, ${SIZE}-byte values, random keys over 100,000"
echo "machine: $(nproc) cores, $(uname -r); $(redis-server --version | awk '{print $3}'), tandem $($tandem version | awk '{print $2}')"

start_redis a "$ip_a"
start_redis b "$ip_b" "$ip_a"
run redis

for transport in quic multicast; do
    mode=$([ "$transport" = quic ] && echo off || echo auto)
    start_agent a "$ip_a" "$mode"
    start_agent b "$ip_b" "$mode" "$ip_a"
    wait_transport "$transport"
    run "$transport"
done

echo
echo "| test | pipeline | redis + replica req/s | tandem QUIC req/s | tandem multicast req/s | multicast / QUIC | p50 / p99 ms: redis, QUIC, multicast | CPU µs per request: redis, QUIC, multicast |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
paste -d, "$work/redis.csv" "$work/quic.csv" "$work/multicast.csv" |
while IFS=, read -r pipeline test r_rps r_p50 r_p99 r_cpu _ _ q_rps q_p50 q_p99 q_cpu _ _ m_rps m_p50 m_p99 m_cpu; do
    ratio=$(awk -v m="$m_rps" -v q="$q_rps" 'BEGIN { printf "%.2f", m / q }')
    printf '| %s | %s | %.0f | %.0f | %.0f | %s | %s / %s, %s / %s, %s / %s | %s, %s, %s |\n' \
        "$test" "$pipeline" "$r_rps" "$q_rps" "$m_rps" "$ratio" \
        "$r_p50" "$r_p99" "$q_p50" "$q_p99" "$m_p50" "$m_p99" "$r_cpu" "$q_cpu" "$m_cpu"
done
