#!/usr/bin/env bash
# A virtual environment with only what `python -m zeroshift.export.run` needs: onnxruntime, numpy, Pillow and
# tokenizers (no PyTorch), installed from the same package sources as .venv and at .venv's versions (every
# package .venv also has is pinned to its version there). Idempotent: rebuilt only when those versions change.
# VENV names the main environment when it is not .venv.
#   bash scripts/notorch-env.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/notorch-venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
mkdir -p "$(dirname "$dir")"
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
"${VENV:-.venv}/bin/python" -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' > "$pins"
stamp="$dir/.zeroshift-notorch"
want=$(sha256sum "$pins" | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
rm -rf "$dir"
"$PY" -m venv "$dir"
"$dir/bin/python" -m pip install -q -c "$pins" onnxruntime numpy pillow tokenizers
if "$dir/bin/python" -c "import torch" 2>/dev/null; then
  echo "notorch-env: torch got installed into $dir; the runner's check needs an environment without it" >&2
  exit 1
fi
echo "$want" > "$stamp"
