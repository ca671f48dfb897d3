#!/usr/bin/env bash
# The balancer next to nginx and HAProxy, in one run: wrk through `tandem balancer`,
# through nginx (proxy_pass to keep-alive upstreams) and through HAProxy (`http-reuse
# always`), the two sticky by hashing the same route cookie, to the same two app servers
# (two paired agents' demo apps, GET /), with the sticky cookie sent. Prints requests/s,
# latency percentiles and the proxy's CPU time per request side by side, and writes
# $RESULTS/balancer.csv and balancer.png.
#
#   bench/balancer.sh              # 10 s per run, 50 connections, 2 threads
#   DURATION=30s CONNECTIONS=100 ROUNDS=5 bench/balancer.sh
#
# Then the same over HTTP/2 with TLS (h2load, 50 connections of 10 streams each), with
# the proxies terminating TLS: $RESULTS/balancer-h2.csv.
#
# Needs wrk, h2load, nginx and haproxy (Debian: wrk nghttp2-client nginx-light haproxy),
# curl, openssl and python3.
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
need wrk nginx haproxy curl h2load openssl   # Debian: wrk nginx-light haproxy curl nghttp2-client openssl

wait_http() { for _ in $(seq 150); do curl -fsS -o /dev/null "$1" 2>/dev/null && return; sleep 0.1; done; echo "bench/balancer.sh: $1 did not answer" >&2; exit 1; }

seed=$(free_port)
apps=()
for i in 1 2; do
    app=$(free_port)
    join=()
    [ "$i" -gt 1 ] && join=(--join "127.0.0.1:$seed")
    gossip=$([ "$i" -eq 1 ] && echo "$seed" || free_port)
    admin=$(free_port)
    "$tandem" agent --node-id "app-$i" --gossip-addr "127.0.0.1:$gossip" --admin-addr "127.0.0.1:$admin" \
        --resp-addr "127.0.0.1:$(free_port)" --api-addr "127.0.0.1:$(free_port)" --repl-addr "127.0.0.1:$(free_port)" \
        --tls-dir "$work/tls" --demo-app "127.0.0.1:$app" "${join[@]}" >"$work/app-$i.log" 2>&1 &
    pids+=($!)
    apps+=("$app")
    wait_http "http://127.0.0.1:$app/"
done

# The route cookie names the node and its partner: take it once the pair has formed.
for _ in $(seq 150); do
    "$tandem" members --admin "127.0.0.1:$admin" --json 2>/dev/null | grep -Eq '"partner": *\{' && break
    sleep 0.2
done

listen=$(free_port)
start_balancer "$seed" "$listen"

# HTTP/2 over TLS: one self-signed certificate for the three proxies, and a second
# balancer that serves users over TLS (same cluster, same cookie secret).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cat "$work/tls.crt" "$work/tls.key" >"$work/tls.pem"
tls_listen=$(free_port)
"$tandem" balancer --node-id bench-balancer-tls --gossip-addr "127.0.0.1:$(free_port)" \
    --admin-addr "127.0.0.1:$(free_port)" --join "127.0.0.1:$seed" --listen "127.0.0.1:$tls_listen" \
    --cookie-secret-file "$work/secret" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
    >"$work/balancer-tls.log" 2>&1 &
pids+=($!)
tls_balancer_pid=$!

nginx_port=$(free_port)
nginx_tls_port=$(free_port)
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream apps {
        hash \$cookie_TANDEM_ROUTE consistent;
        server 127.0.0.1:${apps[0]};
        server 127.0.0.1:${apps[1]};
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        listen 127.0.0.1:$nginx_tls_port ssl http2;
        ssl_certificate $work/tls.crt;
        ssl_certificate_key $work/tls.key;
        location / {
            proxy_pass http://apps;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
wait_http "http://127.0.0.1:$nginx_port/"
nginx_pids="$(cat "$work/nginx.pid") $(pgrep -d' ' -P "$(cat "$work/nginx.pid")")"

haproxy_port=$(free_port)
haproxy_tls_port=$(free_port)
cat >"$work/haproxy.cfg" <<HAPROXY
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:$haproxy_port
    bind 127.0.0.1:$haproxy_tls_port ssl crt $work/tls.pem alpn h2,http/1.1
    default_backend apps
backend apps
    balance hash req.cook(TANDEM_ROUTE)
    hash-type consistent
    server app1 127.0.0.1:${apps[0]}
    server app2 127.0.0.1:${apps[1]}
HAPROXY
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!
wait_http "http://127.0.0.1:$haproxy_port/"

# One user's route cookie, issued by the balancer; both proxies get it on every request.
cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$listen/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(TANDEM_ROUTE=[^;]*\).*/\1/p' | head -1)
[ -n "$cookie" ] || { echo "bench/balancer.sh: the balancer set no route cookie" >&2; exit 1; }
# A settled cookie is sent back as is: no Set-Cookie on the measured requests.
for _ in $(seq 50); do
    curl -s -D - -o /dev/null -H "Cookie: $cookie" "http://127.0.0.1:$listen/" | grep -qi '^set-cookie' || break
    sleep 0.2
    cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$listen/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(TANDEM_ROUTE=[^;]*\).*/\1/p' | head -1)
done
if curl -s -D - -o /dev/null -H "Cookie: $cookie" "http://127.0.0.1:$listen/" | grep -qi '^set-cookie'; then
    echo "bench/balancer.sh: the balancer keeps rewriting the route cookie" >&2; exit 1
fi

measure() { # url pids... -> "rps p50 p99 non-2xx cpu-µs-per-request" (latencies in ms)
    local url=$1 before after
    shift
    before=$(cpu_ticks "$@")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Cookie: $cookie" "$url" >"$work/wrk.out"
    after=$(cpu_ticks "$@")
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
        / requests in / { n = $1 } /Non-2xx/ { bad = $NF }
        END { printf "%.0f %.3f %.3f %s %.2f\n", rps, p50, p99, (bad == "" ? 0 : bad), ticks / hz * 1e6 / n }' "$work/wrk.out"
}

# $ROUNDS rounds of `MEASURE URL PIDS...` against each proxy in turn: a table row of the
# measure's fields per run, and its first field (requests/s) into CSV.
rounds() { # measure csv scheme nginx-port haproxy-port tandem-port tandem-pid
    local measure=$1 csv=$2 scheme=$3 round proxy url name pids fields
    echo "round,proxy,requests/s" >"$csv"
    for round in $(seq "$ROUNDS"); do
        for proxy in nginx haproxy tandem; do
            case $proxy in
                nginx) url="$scheme://127.0.0.1:$4/"; name=nginx; pids=$nginx_pids ;;
                haproxy) url="$scheme://127.0.0.1:$5/"; name=HAProxy; pids=$haproxy_pid ;;
                tandem) url="$scheme://127.0.0.1:$6/"; name="tandem balancer"; pids=$7 ;;
            esac
            # shellcheck disable=SC2086
            fields=$("$measure" "$url" $pids)
            echo "| $name (round $round) | ${fields// / | } |"
            echo "round $round,$name,${fields%% *}" >>"$csv"
        done
    done
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET / of a demo app, sticky cookie sent; machine: $(nproc) cores"
echo "$(nginx -v 2>&1), $(haproxy -v | head -1), tandem $($tandem version | awk '{print $2}')"
echo
echo "| proxy | requests/s | p50 ms | p99 ms | non-2xx | proxy CPU µs per request |"
echo "| --- | --- | --- | --- | --- | --- |"
rounds measure "$results/balancer.csv" http "$nginx_port" "$haproxy_port" "$listen" "$balancer_pid"
"$chart" --title "Sticky HTTP proxying, wrk -c$CONNECTIONS, 2 app servers" --y-label "requests/s" \
    --out "$results/balancer.png" <"$results/balancer.csv"

# HTTP/2 over TLS, each proxy terminating it.
for _ in $(seq 150); do
    curl -ks -o /dev/null -w '%{http_code}' "https://127.0.0.1:$tls_listen/" | grep -q 200 && break
    sleep 0.1
done
H2_REQUESTS=${H2_REQUESTS:-100000}
measure_h2() { # url pids... -> "rps mean-ms not-2xx cpu-µs-per-request"
    local url=$1 before after
    shift
    before=$(cpu_ticks "$@")
    h2load -n "$H2_REQUESTS" -c "$CONNECTIONS" -m 10 -t "$THREADS" -H "cookie: $cookie" "$url" >"$work/h2load.out"
    after=$(cpu_ticks "$@")
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^finished in/ { rps = $4 } /^requests:/ { n = $2 } /^status codes:/ { ok = $3 }
        /^time for request:/ { mean = ms($6) }
        END { printf "%.0f %.3f %d %.2f\n", rps, mean, n - ok, ticks / hz * 1e6 / n }' "$work/h2load.out"
}
echo
echo "h2load -n $H2_REQUESTS -c$CONNECTIONS -m 10 -t$THREADS, HTTP/2 over TLS to each proxy, sticky cookie sent"
echo
echo "| proxy | requests/s | mean ms | not 2xx | proxy CPU µs per request |"
echo "| --- | --- | --- | --- | --- |"
rounds measure_h2 "$results/balancer-h2.csv" https "$nginx_tls_port" "$haproxy_tls_port" "$tls_listen" "$tls_balancer_pid"
