#!/usr/bin/env bash
# The main job on a fresh machine: install, fetch the offline catalogue, run the quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/zeroshift data fetch fashion-mnist tuxpaint openclipart
exec .venv/bin/zeroshift quickstart "$@"
