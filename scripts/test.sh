#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the wasm target, builds the
# plugins, then runs the workspace's tests (unit, plugin, end-to-end, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
cargo test --workspace --exclude switchyard-benches "$@"
