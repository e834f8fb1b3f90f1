#!/usr/bin/env bash
# Connection scale and long jobs, on loopback:
#  1. COUNT (10,000) idle WebSockets held through the proxy to an echo
#     backend (as many as the open-file limit allows: each is two sockets
#     in the proxy), and COUNT idle WebSockets each following a running
#     job: the proxy's RSS per connection, its CPU and wakeups at rest;
#  2. the same against a proxy started with a 1,024 open-file limit: what
#     happens at the limit (and that the proxy still serves afterwards);
#  3. JOBS (1,000) concurrent jobs of DURATION (30 s) with a progress event
#     every second, through Redis: lag from the worker's XADD to the client.
#
#   benches/long-jobs.sh                 # COUNT=10000 JOBS=1000 DURATION=30
#   PARTS="relays lag" benches/long-jobs.sh   # some of: tunnels relays limit lag
#
# Raises its own open-file limit (root, or a hard limit high enough, is
# needed for 10,000 proxied sockets: each holds two descriptors).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
count="${COUNT:-10000}"
jobs="${JOBS:-1000}"
duration="${DURATION:-30}"
command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
python="$("$root/scripts/python-env.sh")"
(cd "$root" && cargo build --release -q -p switchyard)
bin="$root/target/release/switchyard"
ulimit -Hn 200000 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
echo "open-file limit: $(ulimit -Sn)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  exit 1
}
bench="$root/benches/long_jobs.py"
redis-server --port 6399 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --maxclients 20000 >"$work/redis.log" &
pids+=($!)
"$python" "$bench" echo --listen 127.0.0.1:9300 &
pids+=($!)
"$python" "$bench" worker --listen 127.0.0.1:9301 --redis redis://127.0.0.1:6399 --duration "$duration" --every 1 &
pids+=($!)
# Jobs that stay quiet for minutes: the idle-job case.
"$python" "$bench" worker --listen 127.0.0.1:9302 --redis redis://127.0.0.1:6399 --duration 240 --every 120 &
pids+=($!)
mkdir -p "$work/plugins"
config() { # listen admin
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
idle_timeout = "10m"

[admin]
listen = "127.0.0.1:$2"

[plugins]
dir = "$work/plugins"

[shared]
store = "redis://127.0.0.1:6399"

[pools.echo]
backends = [{ name = "echo", address = "127.0.0.1:9300" }]

[pools.workers]
backends = [{ name = "worker", address = "127.0.0.1:9301" }]

[pools.quiet]
backends = [{ name = "quiet", address = "127.0.0.1:9302" }]

[[routes]]
name = "idle-jobs"
pool = "quiet"
match = { path_prefix = "/idle-jobs" }
mode = "job"
jobs = { store = "redis", ttl = "1h", heartbeat = "15s", job_timeout = "5m", max_in_flight = 20000 }

[[routes]]
name = "jobs"
pool = "workers"
match = { path_prefix = "/jobs-bench" }
mode = "job"
jobs = { store = "redis", ttl = "1h", heartbeat = "15s", job_timeout = "60s" }

[[routes]]
name = "ws"
pool = "echo"
TOML
}
# A fresh proxy per measurement, so each starts from the same RSS.
start_proxy() { # name listen admin [prlimit args]
  local name=$1 listen=$2 admin=$3
  shift 3
  config "$listen" "$admin" >"$work/$name.toml"
  "$@" "$bin" run --config "$work/$name.toml" 2>"$work/$name.log" &
  pids+=($!)
  last_pid=$!
  wait_port "$listen"
}
for port in 6399 9300 9301 9302; do wait_port "$port"; done

parts=" ${PARTS:-tunnels relays limit lag} "
limit=$(ulimit -Sn)
tunnels=$(( count < (limit - 300) / 2 ? count : (limit - 300) / 2 ))
if [[ $parts == *" tunnels "* ]]; then
  start_proxy tunnels 8400 9400
  echo "== $tunnels idle WebSockets through the proxy to an echo backend (two sockets each)"
  "$python" "$bench" hold --url ws://127.0.0.1:8400/ws --count "$tunnels" --pid "$last_pid" --rest 10
fi
if [[ $parts == *" relays "* ]]; then
  start_proxy relays 8401 9401
  echo "== $count idle WebSockets, each following a running job"
  "$python" "$bench" hold --url ws://127.0.0.1:8401/idle-jobs/run --count "$count" --pid "$last_pid" --rest 20 --job
fi
if [[ $parts == *" limit "* ]]; then
  start_proxy small 8402 9402 prlimit --nofile=1024:1024
  echo "== 1,500 WebSockets against a proxy with a 1,024 open-file limit"
  "$python" "$bench" hold --url ws://127.0.0.1:8402/ws --count 1500 --pid "$last_pid" --rest 2
  refused=$(curl -s 127.0.0.1:9402/metrics | awk '/^switchyard_connections_refused_total/ {print $2}')
  after=$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:8402/ws)
  echo "{\"connections_refused_total\": ${refused:-0}, \"plain_request_after\": $after}"
fi
if [[ $parts == *" lag "* ]]; then
  start_proxy lag 8403 9403
  echo "== $jobs concurrent jobs of ${duration}s, a progress event a second"
  "$python" "$bench" jobs --url ws://127.0.0.1:8403/jobs-bench/run --count "$jobs"
  "$python" "$bench" proxy-lag --metrics http://127.0.0.1:9403/metrics
fi
