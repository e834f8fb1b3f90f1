#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the wasm target, builds the
# plugins, installs what the dashboard's browser test drives (Debian's
# chromium, playwright-core from npm), then runs the workspace's tests (unit,
# plugin, end-to-end, CLI, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
cargo test --workspace --exclude switchyard-benches "$@"
