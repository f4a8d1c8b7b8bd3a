#!/usr/bin/env bash
# The tests on a fresh machine: install, run the default suite, then the group on the real offline assets
# (with a second environment that has no PyTorch, for the exported graphs' runner).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One worker per core: most of the default suite waits on subprocesses (torchrun worlds, CLI runs, servers).
.venv/bin/python -m pytest -m "not assets" -n "${ZEROSHIFT_TEST_WORKERS:-auto}" "$@"
.venv/bin/zeroshift data fetch fashion-mnist tuxpaint openclipart >/dev/null
bash scripts/notorch-env.sh build/notorch-venv
ZEROSHIFT_NOTORCH_PYTHON="$PWD/build/notorch-venv/bin/python" .venv/bin/python -m pytest -m assets "$@"
