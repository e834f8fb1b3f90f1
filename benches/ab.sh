#!/usr/bin/env bash
# A/B of two Switchyard builds or configs on loopback, alternating: both
# proxies run at once (pinned to core 0, wrk and two mock backends to
# core 1), each round runs wrk against A then B (B first on even rounds,
# so neither always goes first), and the script prints every round's
# req/s and the median ratio A/B. Stops everything it started.
#
#   benches/ab.sh BIN_A BIN_B                       # same config, two builds
#   A_EXTRA='breaker = { plugin = "error-rate-breaker.wasm" }' benches/ab.sh BIN BIN
#
# SHARED=1 pins nothing: proxies, backends and wrk share every core, as
# on a box where the backends run beside the proxy (where scheduling, not
# the proxy's own work, sets the tail). WORKERS (1) sets both proxies'
# workers; A_SERVER / B_SERVER add lines to each one's [server]. Every
# round also prints wrk's p99, and the end its median per build.
#
# ROUNDS (6), SECONDS_PER_RUN (6), CONNS (64); ROUTER_A / ROUTER_B: the
# route's router line (default the Wasm least-outstanding; empty: the
# built-in); A_EXTRA / B_EXTRA: lines added to each one's pool.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2
ROUNDS=${ROUNDS:-6}; SECS=${SECONDS_PER_RUN:-6}; CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
proxy_cpu=0; peer_cpu=1
if [ "${SHARED:-0}" = 1 ]; then all="0-$(($(nproc) - 1))"; proxy_cpu=$all; peer_cpu=$all; fi
default_router='router = { plugin = "least-outstanding.wasm" }'
ROUTER_A=${ROUTER_A-$default_router}; ROUTER_B=${ROUTER_B-$default_router}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
./scripts/build-plugins.sh >/dev/null

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/plugins"
cp target/plugins/*.wasm "$work/plugins/"
base=${BASE_PORT:-18600}
for port in $((base + 1)) $((base + 2)); do
  taskset -c "$peer_cpu" "$A" mock --listen "127.0.0.1:$port" --name "b$port" >/dev/null 2>&1 &
  pids+=($!)
done
config() { # port router extra server
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
workers = $WORKERS
$4
[plugins]
dir = "$work/plugins"
watch = false
[pools.p]
$3
backends = [{ name = "b1", address = "127.0.0.1:$((base + 1))" }, { name = "b2", address = "127.0.0.1:$((base + 2))" }]
[[routes]]
name = "r"
pool = "p"
$2
EOF
}
config $((base + 11)) "$ROUTER_A" "${A_EXTRA:-}" "${A_SERVER:-}" > "$work/a.toml"
config $((base + 12)) "$ROUTER_B" "${B_EXTRA:-}" "${B_SERVER:-}" > "$work/b.toml"
RUST_LOG=warn taskset -c "$proxy_cpu" "$A" run --config "$work/a.toml" 2>"$work/a.log" &
pids+=($!)
RUST_LOG=warn taskset -c "$proxy_cpu" "$B" run --config "$work/b.toml" 2>"$work/b.log" &
pids+=($!)
sleep 1.5
# One wrk run: "req/s p99-µs".
run() {
  taskset -c "$peer_cpu" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$1/ok" | awk '
    /Requests\/sec/ { r = $2 }
    / 99%/ { l = $2; u = 1
             if (l ~ /us$/) { sub(/us$/, "", l) } else if (l ~ /ms$/) { sub(/ms$/, "", l); u = 1000 } else { sub(/s$/, "", l); u = 1e6 }
             p = l * u }
    END { printf "%s %.0f\n", r, p }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
ratios=(); p99a=(); p99b=()
for i in $(seq "$ROUNDS"); do
  if [ $((i % 2)) = 1 ]; then a=$(run $((base + 11))); b=$(run $((base + 12)));
  else b=$(run $((base + 12))); a=$(run $((base + 11))); fi
  r=$(awk -v a="${a% *}" -v b="${b% *}" 'BEGIN { printf "%.3f", a / b }')
  ratios+=("$r"); p99a+=("${a#* }"); p99b+=("${b#* }")
  echo "round $i: A ${a% *} req/s p99 ${a#* } µs, B ${b% *} req/s p99 ${b#* } µs, A/B $r"
done
echo "median A/B over $ROUNDS rounds: $(printf '%s\n' "${ratios[@]}" | median)"
echo "median p99 µs: A $(printf '%s\n' "${p99a[@]}" | median), B $(printf '%s\n' "${p99b[@]}" | median)"
