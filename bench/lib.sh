# Shared by the benchmark scripts: a release build, free ports, a work directory, and
# every process started is stopped on exit. Source it from a script in bench/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --quiet -p tandem -p tandem-bench
# TANDEM=path runs another build of tandem (to compare two builds side by side).
tandem=${TANDEM:-${CARGO_TARGET_DIR:-target}/release/tandem}
chart=${CARGO_TARGET_DIR:-target}/release/chart
# Results (CSV) and charts (PNG) are written here; BENCHMARKS.md embeds the charts.
results=${RESULTS:-bench/results}
mkdir -p "$results"
work=$(mktemp -d)
pids=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
cleanup() {
    stop_all
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Exits with a clear message unless every named program is installed.
need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$(basename "$0"): $tool is missing" >&2; exit 1; }
    done
}

# With PIN=1 on a machine of two cores or more, the client (redis-benchmark) runs on the
# first core and the servers (each with its replica or partner) on the others, as if the
# client were another machine. Unpinned, the client and the servers contend for the same
# cores, and where the scheduler happens to place them moves a run's result by ±15 %.
on_client=()
on_server=()
if [ "${PIN:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    need taskset   # Debian: util-linux
    on_client=(taskset -c 0)
    on_server=(taskset -c "1-$(($(nproc) - 1))")
fi

# CPU time (user + system, in clock ticks) the given processes have used so far.
cpu_ticks() { local total=0; for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$total"; }
# Microseconds of CPU per request, from the clock ticks `cpu_ticks` counted over them.
cpu_us_per() { awk -v ticks="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.2f", ticks / hz * 1e6 / n }'; }

# Requests per run with the given pipeline: $REQUESTS unpipelined, and by default five
# times as many pipelined ($PIPELINED_REQUESTS), so that a pipelined run lasts seconds too
# (200,000 pipelined requests took under a second, ramp-up and the odd stall included).
requests_for() { # pipeline
    if [ "$1" -gt 1 ]; then echo "${PIPELINED_REQUESTS:-$((REQUESTS * 5))}"; else echo "$REQUESTS"; fi
}

# One redis-benchmark run per test in $TESTS against host:port; prints "test,rps,p50,p99,cpu"
# lines, cpu being the microseconds of CPU the server processes (the rest of the arguments:
# the server and its replica or partner) spent per request: their sum, or with CPU_EACH=1
# each process' own, separated by "/". redis-benchmark runs inside network namespace
# $BENCH_NETNS when that is set.
measure() { # host port pipeline pid...
    local host=$1 port=$2 pipeline=$3 requests
    requests=$(requests_for "$3")
    shift 3
    local run=()
    [ -n "${BENCH_NETNS:-}" ] && run=(ip netns exec "$BENCH_NETNS")
    run+=("${on_client[@]}")
    for test in ${TESTS//,/ }; do
        local before=() out each=() total=0 cpu i range=100000 size=$SIZE what=(-t "$test")
        # redis-benchmark's HSET writes one hash, a field per random number: 25,000 fields
        # of 1 KiB stay below the agent's limit for one hash (32 MiB, half a frame).
        [ "$test" = hset ] && range=${HSET_FIELDS:-25000}
        # LPUSH pushes every request onto one list: items of LIST_SIZE bytes (16, a queue's
        # ids) keep a million of them below that limit too. The list starts empty each run.
        case $test in lpush | lrange_100)
            size=${LIST_SIZE:-16}
            "${run[@]}" redis-cli -h "$host" -p "$port" del mylist >/dev/null ;;
        esac
        if [ "$test" = evalsha ]; then
            # A session save as a script, the way Redisson and ASP.NET Core send theirs:
            # HSET of the data and its access time, then PEXPIRE, by EVALSHA.
            local sha value
            sha=$("${run[@]}" redis-cli -h "$host" -p "$port" script load \
                "redis.call('hset', KEYS[1], 'data', ARGV[1], 'lastAccessedTime', ARGV[2]) redis.call('pexpire', KEYS[1], ARGV[2]) return 1")
            value=$(head -c "$size" /dev/zero | tr '\0' x)
            what=(evalsha "$sha" 1 "session:__rand_int__" "$value" 1800000)
        fi
        if [ "$test" = publish ]; then
            what=(publish "${PUBLISH_CHANNEL:-news}" "$(head -c "$size" /dev/zero | tr '\0' x)")
        fi
        if [ "$test" = lrange_100 ]; then
            # Outside the CPU count: redis-benchmark's own lrange_100 pushes -n items first.
            "${run[@]}" redis-benchmark -h "$host" -p "$port" -t lpush -n 1000 -d "$size" -q >/dev/null
            what=(lrange mylist 0 99)
        fi
        for pid in "$@"; do before+=("$(cpu_ticks "$pid")"); done
        out=$("${run[@]}" redis-benchmark -h "$host" -p "$port" -n "$requests" -c "$CLIENTS" \
            -d "$size" -P "$pipeline" -r "$range" --csv "${what[@]}" 2>"$work/redis-benchmark.err") || {
            echo "redis-benchmark -t $test against $host:$port failed:" >&2
            cat "$work/redis-benchmark.err" >&2
            exit 1
        }
        i=0
        for pid in "$@"; do
            local used=$(($(cpu_ticks "$pid") - before[i++]))
            total=$((total + used))
            each+=("$(cpu_us_per "$used" "$requests")")
        done
        if [ -n "${CPU_EACH:-}" ]; then
            cpu=$(IFS=/; echo "${each[*]}")
        else
            cpu=$(cpu_us_per "$total" "$requests")
        fi
        awk -F, -v cpu="$cpu" -v test="$test" '
            NR > 1 { gsub(/"/, ""); if (test == "lrange_100" || test == "evalsha" || test == "publish") $1 = toupper(test)
                     printf "%s,%s,%s,%s,%s\n", $1, $2, $5, $7, cpu }' <<<"$out"
    done
}

wait_ping() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.1; done; }

start_redis() { # port [replicaof-port]
    local extra=()
    [ -n "${2:-}" ] && extra=(--replicaof 127.0.0.1 "$2")
    # In the work directory: a replica writes the copy it receives to disk.
    "${on_server[@]}" redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" "${extra[@]}" \
        >"$work/redis-$1.log" 2>&1 &
    pids+=($!)
    wait_ping "$1"
}

start_agent() { # name resp-port gossip-port [seed-gossip-port] [extra flags...]
    local name=$1 resp=$2 gossip=$3 seed=${4:-}
    shift 4 || shift $#
    local join=()
    [ -n "$seed" ] && join=(--join "127.0.0.1:$seed")
    "${on_server[@]}" "$tandem" agent --node-id "$name" --gossip-addr "127.0.0.1:$gossip" --admin-addr "127.0.0.1:$(free_port)" \
        --resp-addr "127.0.0.1:$resp" --api-addr "127.0.0.1:$(free_port)" --repl-addr "127.0.0.1:$(free_port)" \
        --tls-dir "$work/tls" "${join[@]}" "$@" >"$work/agent-$name.log" 2>&1 &
    pids+=($!)
    wait_ping "$resp"
}

# The admin address an agent logged at start.
admin_of() { grep -o 'admin=[0-9.:]*' "$work/agent-$1.log" | head -1 | cut -d= -f2; }

# Writes KEYS sessions "session:N" of SIZE bytes through the Redis protocol at port.
load_sessions() { # port keys size
    python3 - "$2" "$3" <<'PY' | redis-cli -p "$1" --pipe >/dev/null
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
for i in range(keys):
    key = b"session:%d" % i
    value = (b"%d:" % i).ljust(size, b"x")
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
PY
}

# Resident memory of a process, in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Starts `tandem balancer` joined at the gossip port seed, serving HTTP on port listen, and
# waits until it routes to an app; sets balancer_pid and balancer_admin.
start_balancer() { # seed-gossip-port listen-port
    echo "a secret for the benchmark" >"$work/secret"
    balancer_admin=127.0.0.1:$(free_port)
    "$tandem" balancer --node-id bench-balancer --gossip-addr "127.0.0.1:$(free_port)" --admin-addr "$balancer_admin" \
        --join "127.0.0.1:$1" --listen "127.0.0.1:$2" --cookie-secret-file "$work/secret" >"$work/balancer.log" 2>&1 &
    pids+=($!)
    balancer_pid=$!
    for _ in $(seq 150); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/")" = 200 ] && return
        sleep 0.1
    done
    echo "$(basename "$0"): the balancer on port $2 does not route" >&2; exit 1
}

# The cluster as the admin endpoint at address sees it (`tandem members --json`).
members_json() { "$tandem" members --admin "$1" --json 2>/dev/null; }
