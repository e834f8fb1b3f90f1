#!/usr/bin/env bash
# Creates (once) the virtualenv target/python with the Python clients the
# tests and examples/langgraph use, and prints its interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python
requirements=tests/python/requirements.txt
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the pinned versions change.
if ! cmp -s "$requirements" "$venv/requirements.txt"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
echo "$PWD/$venv/bin/python"
