# Shared by the benchmark scripts: a release build, free ports, a work directory, and
# every process started is stopped on exit. Source it from a script in bench/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --quiet
tandem=${CARGO_TARGET_DIR:-target}/release/tandem
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

# CPU time (user + system, in clock ticks) the given processes have used so far.
cpu_ticks() { local total=0; for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$total"; }

# One redis-benchmark run per test in $TESTS against host:port; prints "test,rps,p50,p99,cpu"
# lines, cpu being the microseconds of CPU the server processes (the rest of the arguments:
# the server and its replica or partner) spent per request. redis-benchmark runs inside
# network namespace $BENCH_NETNS when that is set.
measure() { # host port pipeline pid...
    local host=$1 port=$2 pipeline=$3
    shift 3
    local hz; hz=$(getconf CLK_TCK)
    local run=()
    [ -n "${BENCH_NETNS:-}" ] && run=(ip netns exec "$BENCH_NETNS")
    for test in ${TESTS//,/ }; do
        local before after out
        before=$(cpu_ticks "$@")
        out=$("${run[@]}" redis-benchmark -h "$host" -p "$port" -t "$test" -n "$REQUESTS" -c "$CLIENTS" \
            -d "$SIZE" -P "$pipeline" -r 100000 --csv 2>"$work/redis-benchmark.err") || {
            echo "redis-benchmark -t $test against $host:$port failed:" >&2
            cat "$work/redis-benchmark.err" >&2
            exit 1
        }
        after=$(cpu_ticks "$@")
        awk -F, -v ticks=$((after - before)) -v hz="$hz" -v n="$REQUESTS" \
            'NR > 1 { gsub(/"/, ""); printf "%s,%s,%s,%s,%.2f\n", $1, $2, $5, $7, ticks / hz * 1e6 / n }' <<<"$out"
    done
}
