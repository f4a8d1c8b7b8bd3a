#!/usr/bin/env bash
# Create .venv at the repository root and install zeroshift with everything its commands and tests use.
# Idempotent: a second run only re-installs when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.zeroshift-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision first, pinned to the pair that installs on the build machines.
.venv/bin/python -m pip install -q -c constraints.txt torch torchvision
.venv/bin/python -m pip install -q -c constraints.txt -e ".[catalogue,data,synthetic,serve,test]"
echo "$want" > "$stamp"
