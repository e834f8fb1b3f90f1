#!/usr/bin/env bash
# Builds every plugin under plugins/ (and the test fixtures) to wasm32-wasip2
# and copies the components to one directory, target/plugins by default.
# Usage: scripts/build-plugins.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/plugins}"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# Every crate under plugins/ that builds a cdylib is a plugin.
crates=()
for manifest in plugins/*/Cargo.toml plugins/fixtures/*/Cargo.toml; do
  [ -f "$manifest" ] || continue
  grep -q 'cdylib' "$manifest" || continue
  crates+=("$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n 1)")
done

args=()
for c in "${crates[@]}"; do args+=(-p "$c"); done
cargo build --release --target wasm32-wasip2 "${args[@]}"

mkdir -p "$out"
for c in "${crates[@]}"; do
  cp "target/wasm32-wasip2/release/${c//-/_}.wasm" "$out/$c.wasm"
done
echo "built ${#crates[@]} plugins into $out: ${crates[*]}"
