#!/usr/bin/env bash
# What shipping a router safely costs, side by side in one run: the same
# Wasm least-outstanding route with
#   none        no shadow, no record
#   shadow-1    a p2c-ewma shadow deciding every request
#   shadow-0.1  the same shadow on 10 % of requests
#   record-0.05 5 % of requests written to a trace
# Same two single-threaded backends, same wrk settings, targets alternated
# over ROUNDS rounds; prints medians (req/s, latency, CPU per request) and
# then replays the recorded trace (a p2c-ewma candidate against the
# recorded least-outstanding decisions) for the replay speed. Writes
# benches/results/rollout.md. Installs wrk (Debian) when missing.
#
#   THREADS=1 DURATION=10 CONNS=64 ROUNDS=3 PROFILE=release benches/rollout.sh
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-1}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PROFILE=${PROFILE:-release}
BASE_PORT=${BASE_PORT:-18600}

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
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

cores=$(nproc)
proxy_cpus="0-$((THREADS - 1))"
if [ "$THREADS" -lt "$cores" ]; then other_cpus="$THREADS-$((cores - 1))"; else other_cpus="0-$((cores - 1))"; fi

b1=$((BASE_PORT + 1)); b2=$((BASE_PORT + 2))
for port in $b1 $b2; do
  RUST_LOG=warn taskset -c "$other_cpus" "$bin" mock --listen "127.0.0.1:$port" --name "b$port" >/dev/null &
  pids+=($!)
done

mkdir -p "$work/plugins"
cp target/plugins/least-outstanding.wasm target/plugins/p2c-ewma.wasm "$work/plugins/"
names=(none shadow-1 shadow-0.1 record-0.05)
extras=(
  'router = { plugin = "least-outstanding.wasm" }'
  'router = { plugin = "least-outstanding.wasm", shadow = { plugin = "p2c-ewma.wasm", sample = 1.0 } }'
  'router = { plugin = "least-outstanding.wasm", shadow = { plugin = "p2c-ewma.wasm", sample = 0.1 } }'
  "router = { plugin = \"least-outstanding.wasm\" }
record = { path = \"$work/trace.jsonl\", sample = 0.05, max_size = \"1024MiB\" }"
)
ports=()
for i in "${!names[@]}"; do
  port=$((BASE_PORT + 10 + i)); ports+=($port)
  cat > "$work/${names[$i]}.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
workers = $THREADS
[plugins]
dir = "$work/plugins"
watch = false
[pools.p]
backends = [{ name = "b1", address = "127.0.0.1:$b1" }, { name = "b2", address = "127.0.0.1:$b2" }]
[[routes]]
name = "r"
pool = "p"
${extras[$i]}
EOF
  RUST_LOG=warn taskset -c "$proxy_cpus" "$bin" run --config "$work/${names[$i]}.toml" 2>"$work/${names[$i]}.log" &
  pids+=($!)
done

cat > "$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.0f %.0f %.0f\n", summary.requests,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
EOF
sleep 1
for port in "${ports[@]}"; do
  curl -sf "http://127.0.0.1:$port/ok" >/dev/null || { echo "127.0.0.1:$port is not answering"; exit 1; }
done

ticks() {
  local f; f=$(cut -d' ' -f14,15 "/proc/$1/stat")
  echo $((${f% *} + ${f#* }))
}
hz=$(getconf CLK_TCK)
declare -A rps p50 p99 cpu
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!names[@]}"; do
    n=${names[$i]}; pid=${pids[$((i + 2))]}
    before=$(ticks "$pid")
    out=$(taskset -c "$other_cpus" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$work/report.lua" "http://127.0.0.1:${ports[$i]}/ok" | grep RESULT)
    after=$(ticks "$pid")
    read -r _ reqs l50 l99 micros <<<"$out"
    rps[$n]+="$(awk -v r="$reqs" -v d="$micros" 'BEGIN{printf "%.0f", r/(d/1e6)}') "
    p50[$n]+="$l50 "; p99[$n]+="$l99 "
    cpu[$n]+="$(awk -v t=$((after - before)) -v hz="$hz" -v r="$reqs" 'BEGIN{printf "%.2f", t/hz*1e6/r}') "
    echo "round $round $n: $reqs requests" >&2
  done
done

# Shadow decisions finish after their requests; let the record writer drain.
sleep 1
replay=$("$bin" replay --trace "$work/trace.jsonl" --config "$work/record-0.05.toml" --route r \
  --plugin p2c-ewma.wasm --json "$work/replay.json" --svg "$work/replay.svg")
records=$(grep -vc switchyard_trace "$work/trace.jsonl")
dps=$(grep -o '"decisions_per_second": [0-9.]*' "$work/replay.json" | awk '{printf "%.0f", $2}')
median_ns=$(grep -o '"decision_ns_median": [0-9]*' "$work/replay.json" | awk '{print $2}')
changed=$(grep -o '"changed_primary_share": [0-9.e-]*' "$work/replay.json" | awk '{printf "%.1f", $2 * 100}')

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mkdir -p benches/results
{
  echo "# Shadow and record cost, $THREADS proxy thread(s)"
  echo
  echo "\`THREADS=$THREADS DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS PROFILE=$PROFILE benches/rollout.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "wrk -t1 -c$CONNS -d${DURATION}s, GET /ok, two single-threaded backends; medians of $ROUNDS alternating rounds."
  echo "Every target routes with the Wasm least-outstanding router; CPU/req is the proxy's user+system time per request."
  echo
  echo "| target | req/s | vs none | p50 µs | p99 µs | CPU µs/req |"
  echo "|---|---:|---:|---:|---:|---:|"
  base=$(echo "${rps[none]}" | median)
  for n in "${names[@]}"; do
    r=$(echo "${rps[$n]}" | median)
    echo "| $n | $r | $(awk -v a="$r" -v b="$base" 'BEGIN{printf "%.3f", a/b}') | $(echo "${p50[$n]}" | median) | $(echo "${p99[$n]}" | median) | $(echo "${cpu[$n]}" | median) |"
  done
  echo
  echo "Replay of the record-0.05 trace ($records records, p2c-ewma against the recorded least-outstanding decisions):"
  echo "$dps decisions/s end to end (parsing included), median decision ${median_ns} ns, first backend changed on $changed %."
} | tee benches/results/rollout.md
echo "$replay" >&2
