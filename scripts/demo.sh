#!/usr/bin/env bash
# Starts the demo on a fresh machine: installs the wasm target, builds the
# plugins, then runs the proxy with mock model backends on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
exec cargo run --release -p switchyard -- demo --plugin-dir target/plugins "$@"
