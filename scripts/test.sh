#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the wasm target, builds the
# plugins, installs what the tests drive (Debian's chromium and
# redis-server, playwright-core from npm, the openai and langgraph Python
# clients in a virtualenv under target/), then runs the workspace's tests
# (unit, plugin, end-to-end, CLI, browser, Python clients, Redis replicas).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
./scripts/python-env.sh >/dev/null
export SWITCHYARD_PYTHON="$PWD/target/python/bin/python"
cargo test --workspace --exclude switchyard-benches "$@"
