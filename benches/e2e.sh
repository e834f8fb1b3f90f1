#!/usr/bin/env bash
# End-to-end throughput on loopback, side by side in one run:
#   1. backend direct   2. Switchyard, built-in router (no plugin)
#   3. Switchyard, Wasm least-outstanding router on every request
#   4. nginx least_conn with upstream keepalive   5. HAProxy leastconn
# Same two single-threaded backends, same wrk settings, targets alternated
# over ROUNDS rounds; prints medians and writes the table to
# benches/results/e2e-<threads>t.md. Installs nginx, haproxy and wrk (Debian)
# when missing, and stops every process it started.
#
#   THREADS=1 DURATION=10 CONNS=64 ROUNDS=3 PROFILE=release benches/e2e.sh
#
# BASELINE=path/to/an/older/switchyard adds that binary (Wasm router) as a
# sixth target, to tell a regression from machine noise; the table then goes
# to benches/results/e2e-<threads>t-vs-baseline.md. BASELINE_PLUGIN names
# its least-outstanding.wasm when the interface changed since (built with
# that version's SDK).
#
# AFFINITY=1 binds each proxy's worker threads to a CPU each (the proxy
# CPUs): Switchyard `cpu_affinity = "auto"`, nginx `worker_cpu_affinity
# auto`, HAProxy `cpu-map auto:1/1-N`. The default leaves placement to the
# kernel, as all three do out of the box; the table file gets `-pinned`.
#
# BREAKER=1 (the default) gives Switchyard's pool an error-rate breaker, so
# every outcome feeds it as in a production config; BREAKER=0 leaves it out.
# BASELINE_BREAKER names the baseline's error-rate-breaker.wasm when needed.
#
# TLS=1 puts the backends behind TLS (a private CA made with openssl) and
# every proxy speaks TLS to them over warm connections: Switchyard with the
# Wasm router over HTTP/2 by ALPN (`wasm`) and over HTTP/1.1 (`wasm-h1`, in
# place of the built-in router), nginx `proxy_pass https://` with upstream
# keepalive and `proxy_ssl_session_reuse on`, HAProxy `ssl verify required`.
# Its `handshake` row is the backend with a fresh TLS handshake per request
# (wrk with `connection: close`), the cost a cold connection pays. The table
# goes to benches/results/e2e-tls-<threads>t.md.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-1}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PROFILE=${PROFILE:-release}
BASE_PORT=${BASE_PORT:-18500}
TLS=${TLS:-0}
AFFINITY=${AFFINITY:-0}
sw_affinity=""; nginx_affinity=""; haproxy_affinity=""
if [ "$AFFINITY" = 1 ]; then
  sw_affinity='cpu_affinity = "auto"'
  nginx_affinity="worker_cpu_affinity auto;"
  haproxy_affinity="cpu-map auto:1/1-$THREADS 0-$((THREADS - 1))"
fi
BREAKER=${BREAKER:-1}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

./scripts/build-plugins.sh >/dev/null
cargo build -q --profile "$PROFILE" -p switchyard
bin="target/$PROFILE/switchyard"
[ "$PROFILE" = dev ] && bin=target/debug/switchyard

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The proxies get the first THREADS cores, wrk and the backends the rest
# (on a 2-core machine with THREADS=2 everything shares both cores).
cores=$(nproc)
proxy_cpus="0-$((THREADS - 1))"
if [ "$THREADS" -lt "$cores" ]; then other_cpus="$THREADS-$((cores - 1))"; else other_cpus="0-$((cores - 1))"; fi

scheme=http; mock_tls=()
if [ "$TLS" = 1 ]; then
  scheme=https
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$work/backend.key" -out "$work/backend.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/san.ext"
  openssl x509 -req -in "$work/backend.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/san.ext" -out "$work/backend.pem" 2>/dev/null
  mock_tls=(--tls-cert "$work/backend.pem" --tls-key "$work/backend.key")
fi

b1=$((BASE_PORT + 1)); b2=$((BASE_PORT + 2))
for port in $b1 $b2; do
  RUST_LOG=warn,rustls=error taskset -c "$other_cpus" "$bin" mock --listen "127.0.0.1:$port" --name "b$port" "${mock_tls[@]}" >/dev/null &
  pids+=($!)
done

p_builtin=$((BASE_PORT + 10)); p_wasm=$((BASE_PORT + 11)); p_nginx=$((BASE_PORT + 12)); p_haproxy=$((BASE_PORT + 13))
mkdir -p "$work/plugins"
cp target/plugins/least-outstanding.wasm target/plugins/error-rate-breaker.wasm "$work/plugins/"
# A production pool has a circuit breaker: every outcome feeds it.
breaker=""
[ "$BREAKER" = 1 ] && breaker='breaker = { plugin = "error-rate-breaker.wasm" }'
for variant in builtin wasm; do
  port=$p_builtin; router=""; upstream=""
  if [ $variant = wasm ]; then port=$p_wasm; router='router = { plugin = "least-outstanding.wasm" }'; fi
  if [ "$TLS" = 1 ]; then
    upstream="tls = { ca_file = \"$work/ca.pem\", server_name = \"localhost\" }"
    # The second Switchyard target is the Wasm router over HTTP/1.1.
    if [ $variant = builtin ]; then router='router = { plugin = "least-outstanding.wasm" }'; upstream="$upstream
protocol = \"http1\""; fi
  fi
  cat > "$work/$variant.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
workers = $THREADS
$sw_affinity
[plugins]
dir = "$work/plugins"
watch = false
[pools.p]
$upstream
$breaker
backends = [{ name = "b1", address = "127.0.0.1:$b1" }, { name = "b2", address = "127.0.0.1:$b2" }]
[[routes]]
name = "r"
pool = "p"
$router
EOF
  RUST_LOG=warn taskset -c "$proxy_cpus" "$bin" run --config "$work/$variant.toml" 2>"$work/$variant.log" &
  pids+=($!)
done

nginx_tls=""
if [ "$TLS" = 1 ]; then
  nginx_tls="proxy_ssl_session_reuse on;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/ca.pem;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;"
fi
cat > "$work/nginx.conf" <<EOF
worker_processes $THREADS;
$nginx_affinity
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backends {
    least_conn;
    server 127.0.0.1:$b1;
    server 127.0.0.1:$b2;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$p_nginx;
    location / {
      proxy_pass $scheme://backends;
      $nginx_tls
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
taskset -c "$proxy_cpus" nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)

haproxy_tls=""
[ "$TLS" = 1 ] && haproxy_tls="ssl verify required ca-file $work/ca.pem sni str(localhost) verifyhost localhost"
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread $THREADS
  $haproxy_affinity
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend f
  bind 127.0.0.1:$p_haproxy
  default_backend b
backend b
  balance leastconn
  server b1 127.0.0.1:$b1 $haproxy_tls
  server b2 127.0.0.1:$b2 $haproxy_tls
EOF
taskset -c "$proxy_cpus" haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)

cat > "$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.0f %.0f %.0f %.0f\n", summary.requests,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), summary.duration))
end
EOF

names=(direct builtin wasm nginx haproxy)
ports=($b1 $p_builtin $p_wasm $p_nginx $p_haproxy)
if [ -n "${BASELINE:-}" ]; then
  p_base=$((BASE_PORT + 14))
  mkdir -p "$work/baseline-plugins"
  cp "${BASELINE_PLUGIN:-target/plugins/least-outstanding.wasm}" "$work/baseline-plugins/least-outstanding.wasm"
  cp "${BASELINE_BREAKER:-target/plugins/error-rate-breaker.wasm}" "$work/baseline-plugins/error-rate-breaker.wasm"
  # The baseline may predate cpu_affinity: it gets the workers' binding
  # from taskset alone.
  sed -e "s/127.0.0.1:$p_wasm/127.0.0.1:$p_base/" -e "s|$work/plugins|$work/baseline-plugins|" -e '/^cpu_affinity/d' \
    "$work/wasm.toml" > "$work/baseline.toml"
  RUST_LOG=warn taskset -c "$proxy_cpus" "$BASELINE" run --config "$work/baseline.toml" 2>"$work/baseline.log" &
  pids+=($!)
  names+=(baseline); ports+=($p_base)
fi

# Under TLS=1: the direct rows talk TLS to the backend, `wasm-h1` takes
# the built-in target's place, and `handshake` pays a handshake a request.
url_of() { if [ "$TLS" = 1 ] && { [ "$1" = direct ] || [ "$1" = handshake ]; }; then echo "https://127.0.0.1:$2/ok"; else echo "http://127.0.0.1:$2/ok"; fi; }
if [ "$TLS" = 1 ]; then
  names=(direct handshake wasm-h1 wasm nginx haproxy)
  ports=($b1 $b1 $p_builtin $p_wasm $p_nginx $p_haproxy)
fi

sleep 1
for i in "${!ports[@]}"; do
  curl -sfk "$(url_of "${names[$i]}" "${ports[$i]}")" >/dev/null || { echo "${names[$i]} is not answering"; exit 1; }
done

# CPU time (user + system, clock ticks) of a process and its children.
ticks() {
  local total=0 p
  for p in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
    [ -r "/proc/$p/stat" ] || continue
    local f; f=$(cut -d' ' -f14,15 "/proc/$p/stat")
    total=$((total + ${f% *} + ${f#* }))
  done
  echo $total
}
pid_of() {
  case $1 in
    direct|handshake) echo "${pids[0]}" ;;
    builtin|wasm-h1) echo "${pids[2]}" ;;
    wasm) echo "${pids[3]}" ;;
    nginx) echo "${pids[4]}" ;;
    haproxy) echo "${pids[5]}" ;;
    baseline) echo "${pids[6]}" ;;
  esac
}
hz=$(getconf CLK_TCK)

declare -A rps p50 p99 p999 cpu
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!names[@]}"; do
    n=${names[$i]}; port=${ports[$i]}; pid=$(pid_of "$n")
    before=$(ticks "$pid")
    close=(); [ "$n" = handshake ] && close=(-H "connection: close")
    out=$(taskset -c "$other_cpus" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${close[@]}" -s "$work/report.lua" "$(url_of "$n" "$port")" | grep RESULT)
    after=$(ticks "$pid")
    read -r _ reqs l50 l99 l999 micros <<<"$out"
    rps[$n]+="$(awk -v r="$reqs" -v d="$micros" 'BEGIN{printf "%.0f", r/(d/1e6)}') "
    p50[$n]+="$l50 "; p99[$n]+="$l99 "; p999[$n]+="$l999 "
    cpu[$n]+="$(awk -v t=$((after - before)) -v hz="$hz" -v r="$reqs" 'BEGIN{printf "%.2f", t/hz*1e6/r}') "
    echo "round $round $n: $reqs requests" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mkdir -p benches/results
tls_tag=""; tls_title=""; [ "$TLS" = 1 ] && { tls_tag="tls-"; tls_title=", TLS to the backends"; }
pin_tag=""; [ "$AFFINITY" = 1 ] && pin_tag="-pinned"
file="benches/results/e2e-${tls_tag}${THREADS}t${pin_tag}${BASELINE:+-vs-baseline}.md"
{
  echo "# End-to-end$tls_title, $THREADS proxy thread(s)/worker(s)"
  echo
  echo "\`AFFINITY=$AFFINITY BREAKER=$BREAKER TLS=$TLS THREADS=$THREADS DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS PROFILE=$PROFILE benches/e2e.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "wrk -t1 -c$CONNS -d${DURATION}s, GET /ok, two single-threaded backends; medians of $ROUNDS alternating rounds."
  echo "CPU/req is the proxy's user+system time per request (the backend's own for \`direct\`)."
  echo
  echo "| target | req/s | p50 µs | p99 µs | p99.9 µs | CPU µs/req |"
  echo "|---|---:|---:|---:|---:|---:|"
  for n in "${names[@]}"; do
    echo "| $n | $(echo "${rps[$n]}" | median) | $(echo "${p50[$n]}" | median) | $(echo "${p99[$n]}" | median) | $(echo "${p999[$n]}" | median) | $(echo "${cpu[$n]}" | median) |"
  done
  w=$(echo "${rps[wasm]}" | median)
  if [ "$TLS" = 1 ]; then b=$(echo "${rps[wasm-h1]}" | median); else b=$(echo "${rps[builtin]}" | median); fi
  ng=$(echo "${rps[nginx]}" | median); hp=$(echo "${rps[haproxy]}" | median)
  echo
  first="Wasm / built-in"; [ "$TLS" = 1 ] && first="Wasm h2 / Wasm HTTP/1.1"
  echo "Ratios of req/s: $first = $(awk -v a="$w" -v b="$b" 'BEGIN{printf "%.3f", a/b}'),"\
    "Wasm / nginx = $(awk -v a="$w" -v b="$ng" 'BEGIN{printf "%.3f", a/b}'),"\
    "Wasm / HAProxy = $(awk -v a="$w" -v b="$hp" 'BEGIN{printf "%.3f", a/b}')."
  if [ -n "${BASELINE:-}" ]; then
    bl=$(echo "${rps[baseline]}" | median)
    echo "Wasm / baseline ($BASELINE) = $(awk -v a="$w" -v b="$bl" 'BEGIN{printf "%.3f", a/b}')."
  fi
} | tee "$file"
