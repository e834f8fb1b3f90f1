#!/usr/bin/env bash
# Runs the LangGraph example end to end: builds the proxy and its plugins,
# starts three mock OpenAI-compatible backends and Switchyard on loopback,
# installs the Python clients in target/python, runs the graph, prints which
# backend served each node and what the proxy counted, then stops everything.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
./scripts/build-plugins.sh >/dev/null
cargo build --release -q -p switchyard
python="$(./scripts/python-env.sh)"
bin="$root/target/release/switchyard"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# fast-b fails every fifth request: the proxy retries it on fast-a.
"$bin" mock --listen 127.0.0.1:7101 --name fast-a --latency-ms 40 --chunk-interval-ms 80 >/dev/null &
pids+=($!)
"$bin" mock --listen 127.0.0.1:7102 --name fast-b --latency-ms 40 --chunk-interval-ms 80 --fail-every 5 >/dev/null &
pids+=($!)
"$bin" mock --listen 127.0.0.1:7103 --name cheap --latency-ms 150 --tokens-per-minute 100000 >/dev/null &
pids+=($!)
(cd "$here" && RUST_LOG=warn exec "$bin" run --config switchyard.toml) &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:7190/healthz >/dev/null 2>&1 && break
  sleep 0.1
done

"$python" "$here/app.py" --base-url http://127.0.0.1:7100/v1 "$@"

echo
echo "What the proxy counted (http://127.0.0.1:7190/metrics):"
curl -fs http://127.0.0.1:7190/metrics \
  | grep -E '^switchyard_(tokens_total|cost_microdollars_total|requests_total\{[^}]*class="2xx"|retries_total)' \
  | grep -v ' 0$' | sed 's/^/  /'
