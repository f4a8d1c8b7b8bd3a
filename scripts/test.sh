#!/usr/bin/env bash
# The tests on a fresh machine: install, run the default suite, then the group on the real offline assets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -m "not assets" "$@"
.venv/bin/zeroshift data fetch fashion-mnist tuxpaint openclipart >/dev/null
.venv/bin/python -m pytest -m assets "$@"
