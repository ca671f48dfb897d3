#!/usr/bin/env bash
# The agent's Redis-protocol store next to redis-server, measured in one run with
# redis-benchmark: SET, GET, HSET, SADD, ZADD, LPUSH and LRANGE_100 (the first 100 items
# of a list) with 50 clients and 1 KiB values (16-byte list items), without and with
# pipelining (-P 16). First each alone; then replicated: redis-server with one replica
# next to the agent paired with a partner, in sync mode (a write returns once the partner
# has it) and in async mode. Prints Markdown tables (requests/s, p50/p99 latency, and the
# CPU time the servers, with their replica or partner, spent per request), and writes the
# requests/s as CSV and PNG charts into $RESULTS (bench/results).
#
#   bench/resp.sh            # 200,000 requests per test (1,000,000 pipelined), 3 rounds
#   REQUESTS=1000000 bench/resp.sh
#   MODES=sync TESTS=set bench/resp.sh   # only the sync-replicated SET rows
#   ROUNDS=1 bench/resp.sh   # one round: quicker, noisier
#
# Each comparison runs ROUNDS times, the two servers taking turns, and each row shows the
# round with the median requests/s of each server: on a small shared machine one run can
# be 20 % off the next.
#
# The last comparison ("acked") gives both sides the same guarantee: every write is on
# the replica before its reply. redis-server is asked for it with WAIT 1 after each
# pipeline of SETs; the agent's sync mode gives it to every write. redis-benchmark cannot
# send WAIT, so that comparison uses tandem-bench's acked-writes as the client for both.
#
# "session" saves sessions as session stores do, in MULTI/EXEC (tandem-bench's
# acked-writes --session), alone and with the write on the replica before the reply.
#
# The last table ("split") shows where the CPU of unpipelined SETs goes: to the server, or
# to its replica or partner.
#
# "scripts" runs a session save as a Lua script by EVALSHA (HSET of the data and its
# access time, PEXPIRE), alone and replicated (sync mode; redis-server with a replica).
# "pubsub" publishes to SUBSCRIBERS (100) connections subscribed to the channel, which
# read everything; the CPU counted is the server's alone.
#
# PIN=1 runs the client on the first core and the servers on the others (see lib.sh); by
# default the scheduler places every process. The placement changes the comparison, not
# only the noise: pinned, a server shares its core with its replica or partner.
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
source "$(dirname "$0")/lib.sh"

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
SIZE=${SIZE:-1024}
TESTS=${TESTS:-set,get,hset,sadd,zadd,lpush,lrange_100}
MODES=${MODES:-alone sync async acked session split scripts pubsub}   # which comparisons to run
ROUNDS=${ROUNDS:-3}

# Of the rows "test,requests/s,..." of several rounds, the one with the median requests/s
# of each test, in the order the tests first appear.
median_rows() { # csv
    local test
    for test in $(cut -d, -f1 "$1" | awk '!seen[$0]++'); do
        grep "^$test," "$1" | sort -t, -k2,2 -g | awk -v n="$(grep -c "^$test," "$1")" 'NR == int((n + 1) / 2)'
    done
}

need redis-server redis-benchmark redis-cli   # Debian: redis-server redis-tools

wait_replica() { # port of a redis replica
    for _ in $(seq 150); do
        redis-cli -p "$1" info replication | grep -q '^master_link_status:up' && return
        sleep 0.2
    done
    echo "bench/resp.sh: the redis replica on port $1 did not connect" >&2; exit 1
}

wait_paired() { # resp-port of an agent
    for _ in $(seq 150); do
        "$tandem" members --admin "$1" --json 2>/dev/null | grep -Eq '"partner": *\{' && return
        sleep 0.2
    done
    echo "bench/resp.sh: agents did not pair" >&2; exit 1
}

# Table rows comparing two servers, side by side; the requests/s also go to
# $results/resp-<name>.csv, drawn as resp-<name>.png once the comparison is done.
compare() { # name redis-port agent-port, then "redis-pids" "agent-pids" (space-separated)
    local csv=$results/resp-$1.csv
    echo "test,server,requests/s" >"$csv"
    for pipeline in 1 16; do
        # One after the other: the two servers never share the cores with each other.
        : >"$work/redis-rounds.csv"
        : >"$work/tandem-rounds.csv"
        for _ in $(seq "$ROUNDS"); do
            # shellcheck disable=SC2086
            measure 127.0.0.1 "$2" "$pipeline" $4 >>"$work/redis-rounds.csv"
            # shellcheck disable=SC2086
            measure 127.0.0.1 "$3" "$pipeline" $5 >>"$work/tandem-rounds.csv"
        done
        median_rows "$work/redis-rounds.csv" >"$work/redis.csv"
        median_rows "$work/tandem-rounds.csv" >"$work/tandem.csv"
        paste -d, "$work/redis.csv" "$work/tandem.csv" |
        while IFS=, read -r test r_rps r_p50 r_p99 r_cpu _ a_rps a_p50 a_p99 a_cpu; do
            ratio=$(awk -v a="$a_rps" -v r="$r_rps" 'BEGIN { printf "%.2f", a / r }')
            printf '| %s | %s | %.0f | %.0f | %s | %s / %s | %s / %s | %s / %s |\n' \
                "$test" "$pipeline" "$r_rps" "$a_rps" "$ratio" "$r_p50" "$r_p99" "$a_p50" "$a_p99" "$r_cpu" "$a_cpu"
            printf '%s -P %s,%s,%.0f\n%s -P %s,%s,%.0f\n' "$test" "$pipeline" "$6" "$r_rps" \
                "$test" "$pipeline" "$7" "$a_rps" >>"$csv"
        done
    done
    "$chart" --title "$8, $CLIENTS clients, $SIZE-byte values" --y-label "requests/s" \
        --out "$results/resp-$1.png" <"$csv" 2>/dev/null
}
header() { # title, agent column name
    echo
    echo "### $1"
    echo
    echo "| test | pipeline | redis-server req/s | $2 req/s | tandem / redis | redis p50 / p99 ms | tandem p50 / p99 ms | CPU µs per request, redis / tandem |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
}

echo "redis-benchmark: $REQUESTS requests per test ($(requests_for 16) pipelined), $CLIENTS clients, ${SIZE}-byte values, random keys over 100,000;"
echo "each row is the round with the median requests/s of $ROUNDS, the two servers taking turns"
echo "machine: $(nproc) cores, $(uname -r); $(redis-server --version | awk '{print $3}'), tandem $($tandem version | awk '{print $2}')"
if [ ${#on_client[@]} -gt 0 ]; then
    servers="CPU 1"
    [ "$(nproc)" -gt 2 ] && servers="CPUs 1-$(($(nproc) - 1))"
    echo "placement: the client on CPU 0, the servers with their replica or partner on $servers"
else
    echo "placement: unpinned, every process where the scheduler puts it"
fi

if [[ " $MODES " == *" alone "* ]]; then
    redis_port=$(free_port); agent_port=$(free_port)
    start_redis "$redis_port"
    start_agent solo "$agent_port" "$(free_port)" ""
    header "Alone: redis-server vs one agent (no partner)" "agent"
    compare alone "$redis_port" "$agent_port" "${pids[0]}" "${pids[1]}" redis-server "tandem agent" \
        "Alone: redis-server vs one agent"
    stop_all
fi

# redis-server with one replica and an agent paired with a partner in the given mode;
# sets redis_port and agent_port. (pids: redis, its replica, the agent, its partner.)
start_replicated() { # mode
    redis_port=$(free_port); replica_port=$(free_port)
    agent_port=$(free_port); partner_port=$(free_port); seed=$(free_port)
    start_redis "$redis_port"
    start_redis "$replica_port" "$redis_port"
    wait_replica "$replica_port"
    start_agent "a-$1" "$agent_port" "$seed" "" --replication "$1"
    admin=$(admin_of "a-$1")
    start_agent "b-$1" "$partner_port" "$(free_port)" "$seed" --replication "$1"
    wait_paired "$admin"
}

for mode in $MODES; do
    case $mode in alone | acked | session | split | scripts | pubsub) continue ;; esac
    start_replicated "$mode"
    header "Replicated: redis-server with one replica vs an agent with a partner, $mode mode" "agent ($mode)"
    compare "$mode" "$redis_port" "$agent_port" "${pids[0]} ${pids[1]}" "${pids[2]} ${pids[3]}" \
        "redis + replica" "tandem pair ($mode)" "Replicated: redis with a replica vs a pair in $mode mode"
    stop_all
done

# One acked-writes run: prints "requests/s,p50,p99,unacknowledged,cpu µs per request".
acked_run() { # port pipeline "pids" [acked-writes flags: --wait, --session]
    local before after out requests
    requests=$(requests_for "$2")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $3)
    out=$("${on_client[@]}" "$acked_writes" --addr "127.0.0.1:$1" --pipeline "$2" --requests "$requests" --clients "$CLIENTS" \
        --size "$SIZE" "${@:4}")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $3)
    echo "$out,$(cpu_us_per $((after - before)) "$requests")"
}

acked_writes=${CARGO_TARGET_DIR:-target}/release/acked-writes
if [[ " $MODES " == *" acked "* ]]; then
    start_replicated sync
    echo
    echo "### Acknowledged writes: redis-server with a replica and WAIT vs an agent with a partner, sync mode"
    echo
    echo "| pipeline | redis (SET, then WAIT 1) req/s | agent (sync) req/s | tandem / redis | redis p50 / p99 ms | tandem p50 / p99 ms | CPU µs per request, redis / tandem | writes WAIT found on no replica |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    csv=$results/resp-acked.csv
    echo "test,server,requests/s" >"$csv"
    for pipeline in 1 16; do
        : >"$work/redis-acked.csv"
        : >"$work/tandem-acked.csv"
        for _ in $(seq "$ROUNDS"); do
            echo "SET,$(acked_run "$redis_port" "$pipeline" "${pids[0]} ${pids[1]}" --wait)" >>"$work/redis-acked.csv"
            echo "SET,$(acked_run "$agent_port" "$pipeline" "${pids[2]} ${pids[3]}")" >>"$work/tandem-acked.csv"
        done
        IFS=, read -r _ r_rps r_p50 r_p99 r_lost r_cpu < <(median_rows "$work/redis-acked.csv")
        IFS=, read -r _ a_rps a_p50 a_p99 _ a_cpu < <(median_rows "$work/tandem-acked.csv")
        # Writes lost are counted over every round, not only the median one.
        r_lost=$(awk -F, '{ lost += $5 } END { print lost }' "$work/redis-acked.csv")
        ratio=$(awk -v a="$a_rps" -v r="$r_rps" 'BEGIN { printf "%.2f", a / r }')
        printf '| %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s |\n' "$pipeline" "$r_rps" "$a_rps" "$ratio" \
            "$r_p50" "$r_p99" "$a_p50" "$a_p99" "$r_cpu" "$a_cpu" "$r_lost"
        printf 'SET -P %s,redis + replica + WAIT,%s\nSET -P %s,tandem pair (sync),%s\n' "$pipeline" "$r_rps" \
            "$pipeline" "$a_rps" >>"$csv"
    done
    "$chart" --title "Writes on the replica before the reply, $CLIENTS clients, $SIZE-byte values" \
        --y-label "requests/s" --out "$results/resp-acked.png" <"$csv" 2>/dev/null
    stop_all
fi

# A session save as session stores send it, in a transaction: MULTI, HSET of the session's
# data (SIZE bytes) and its last access time, EXPIRE, EXEC. Alone; then with the write on
# the replica before the reply (redis-server: WAIT 1 after each EXEC).
session_row() { # label redis-port "redis-pids" agent-port "agent-pids" [redis flags]
    : >"$work/redis-session.csv"
    : >"$work/tandem-session.csv"
    for _ in $(seq "$ROUNDS"); do
        echo "x,$(acked_run "$2" 1 "$3" --session "${@:6}")" >>"$work/redis-session.csv"
        echo "x,$(acked_run "$4" 1 "$5" --session)" >>"$work/tandem-session.csv"
    done
    IFS=, read -r _ r_rps r_p50 r_p99 _ r_cpu < <(median_rows "$work/redis-session.csv")
    IFS=, read -r _ a_rps a_p50 a_p99 _ a_cpu < <(median_rows "$work/tandem-session.csv")
    ratio=$(awk -v a="$a_rps" -v r="$r_rps" 'BEGIN { printf "%.2f", a / r }')
    printf '| %s | %s | %s | %s | %s / %s | %s / %s | %s / %s |\n' "$1" "$r_rps" "$a_rps" "$ratio" \
        "$r_p50" "$r_p99" "$a_p50" "$a_p99" "$r_cpu" "$a_cpu"
}

if [[ " $MODES " == *" session "* ]]; then
    echo
    echo "### Session saves in MULTI/EXEC (HSET of two fields and EXPIRE), unpipelined"
    echo
    echo "| servers | redis-server saves/s | agent saves/s | tandem / redis | redis p50 / p99 ms | tandem p50 / p99 ms | CPU µs per save, redis / tandem |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    redis_port=$(free_port); agent_port=$(free_port)
    start_redis "$redis_port"
    start_agent solo "$agent_port" "$(free_port)" ""
    session_row "alone" "$redis_port" "${pids[0]}" "$agent_port" "${pids[1]}"
    stop_all
    start_replicated sync
    session_row "redis + replica + WAIT 1 / pair in sync mode" "$redis_port" "${pids[0]} ${pids[1]}" \
        "$agent_port" "${pids[2]} ${pids[3]}" --wait
    stop_all
fi

if [[ " $MODES " == *" split "* ]]; then
    echo
    echo "### CPU per SET of each process, unpipelined"
    echo
    echo "| servers | requests/s | CPU µs per SET: the server / its replica or partner |"
    echo "| --- | --- | --- |"
    for mode in sync async; do
        start_replicated "$mode"
        if [ "$mode" = sync ]; then
            IFS=, read -r _ rps _ _ cpu < <(TESTS=set CPU_EACH=1 measure 127.0.0.1 "$redis_port" 1 "${pids[0]}" "${pids[1]}")
            printf '| redis-server + replica | %.0f | %s |\n' "$rps" "$cpu"
        fi
        IFS=, read -r _ rps _ _ cpu < <(TESTS=set CPU_EACH=1 measure 127.0.0.1 "$agent_port" 1 "${pids[2]}" "${pids[3]}")
        printf '| tandem pair (%s) | %.0f | %s |\n' "$mode" "$rps" "$cpu"
        stop_all
    done
fi

if [[ " $MODES " == *" scripts "* ]]; then
    redis_port=$(free_port); agent_port=$(free_port)
    start_redis "$redis_port"
    start_agent solo "$agent_port" "$(free_port)" ""
    header "Scripts: a session save by EVALSHA, alone" "agent"
    TESTS=evalsha compare scripts-alone "$redis_port" "$agent_port" "${pids[0]}" "${pids[1]}" \
        redis-server "tandem agent" "EVALSHA session save, alone"
    stop_all
    start_replicated sync
    header "Scripts: a session save by EVALSHA, redis-server with a replica vs a pair in sync mode" "agent (sync)"
    TESTS=evalsha compare scripts-sync "$redis_port" "$agent_port" "${pids[0]} ${pids[1]}" "${pids[2]} ${pids[3]}" \
        "redis + replica" "tandem pair (sync)" "EVALSHA session save, replicated"
    stop_all
fi

if [[ " $MODES " == *" pubsub "* ]]; then
    redis_port=$(free_port); agent_port=$(free_port)
    start_redis "$redis_port"
    start_agent solo "$agent_port" "$(free_port)" ""
    SUBSCRIBERS=${SUBSCRIBERS:-100}
    # Subscribers that read everything, for both servers; their CPU is not counted.
    python3 - "$redis_port" "$agent_port" "$SUBSCRIBERS" <<'PY' &
import selectors, socket, sys
ports, count = sys.argv[1:3], int(sys.argv[3])
selector = selectors.DefaultSelector()
for port in ports:
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", int(port)))
        s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
while True:
    for key, _ in selector.select():
        if not key.fileobj.recv(1 << 20):
            sys.exit(0)
PY
    subscribers=$!
    for port in "$redis_port" "$agent_port"; do
        for _ in $(seq 100); do
            [ "$(redis-cli -p "$port" pubsub numsub news | tail -1)" = "$SUBSCRIBERS" ] && break
            sleep 0.1
        done
    done
    header "Pub/sub: PUBLISH to $SUBSCRIBERS subscribers" "agent"
    REQUESTS=$((REQUESTS / 10)) PIPELINED_REQUESTS=$((REQUESTS / 2)) TESTS=publish \
        compare pubsub "$redis_port" "$agent_port" "${pids[0]}" "${pids[1]}" \
        redis-server "tandem agent" "PUBLISH to $SUBSCRIBERS subscribers"
    kill "$subscribers" 2>/dev/null
    stop_all
fi
