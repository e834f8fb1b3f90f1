#!/usr/bin/env bash
# The decoupled long-job scenario, scaled from minutes to seconds: Redis,
# two workers whose jobs take STEPS x STEP seconds, two Switchyard replicas
# on one Redis, and a client that drops its connection halfway and resumes
# on the other replica. Stops everything it started when it ends.
#
#   examples/long-jobs/run.sh            # STEPS=6 STEP=1 by default
#
# SWITCHYARD_BIN runs a given binary instead of building the release one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
steps="${STEPS:-6}"
step="${STEP:-1}"
command -v redis-server >/dev/null || {
  echo "redis-server is needed (Debian: apt-get install redis-server)" >&2
  exit 1
}
python="$("$root/scripts/python-env.sh")"   # websockets and redis for the client and workers
bin="${SWITCHYARD_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release -q -p switchyard)
  bin="$root/target/release/switchyard"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" &
pids+=($!)
for i in 1 2; do
  name=$([ $i = 1 ] && echo worker-a || echo worker-b)
  SWITCHYARD_REDIS_URL=redis://127.0.0.1:6390 PYTHONPATH="$here" \
    "$python" "$here/worker.py" --listen "127.0.0.1:920$i" --name "$name" --steps "$steps" --step "$step" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
done
mkdir -p "$work/plugins"
for i in 1 2; do
  sed -e "s/127.0.0.1:8081/127.0.0.1:808$i/" -e "s/127.0.0.1:9911/127.0.0.1:991$i/" \
    -e "s|^dir = \"plugins\"|dir = \"$work/plugins\"|" "$here/switchyard.toml" >"$work/replica-$i.toml"
  "$bin" run --config "$work/replica-$i.toml" >"$work/replica-$i.log" 2>&1 &
  pids+=($!)
done
for port in 6390 9201 9202 8081 8082; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done
echo "redis :6390, workers :9201 :9202, replicas :8081 :8082 (admin :9911 :9912)"
"$python" "$here/client.py" --first 127.0.0.1:8081 --second 127.0.0.1:8082
echo "replica 2 jobs: $(curl -s 127.0.0.1:9912/status | "$python" -c 'import json,sys; print(json.load(sys.stdin)["routes"][0]["jobs"])')"
