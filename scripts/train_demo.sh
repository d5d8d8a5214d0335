#!/usr/bin/env bash
# Rebuild the shipped demo model (weights/demo/) from nothing, on a CPU, offline:
# render the demo films, train the tokenizers and the small CLIP, extract features, run
# `locomad train` stage 1 then stage 2, copy the best checkpoint into weights/demo/ and
# measure it on the held-out films (WORK/measure.json; the figures of docs/demo.md).
# Usage: scripts/train_demo.sh [WORK_DIR]   (default: runs/demo; extra flags go to
# `locomad demo train`, e.g. --seed 1)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/demo}
shift || true
exec .venv/bin/locomad demo train "$WORK" --weights weights/demo "$@"
