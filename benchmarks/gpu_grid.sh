#!/usr/bin/env bash
# The thesis grid at full MM-IMDb size on a GPU: encoder throughput (movies/s) and grid time.
# Random-weight BERT-base / RoBERTa-base / ResNet-50 / ViT-B/16 on 25,959 synthetic movies; nothing is downloaded.
# Target: under 10 minutes on one H100. `--small` runs a tiny version on any CPU. Other options: see --help.
#   benchmarks/gpu_grid.sh [--small] [--device auto|cuda|cpu] [--movies N] [--batch-size N] [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then PY=python3; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
elif [[ " $* " != *" --small "* ]]; then
  echo "note: no nvidia-smi here; the full-size run on a CPU takes hours (use --small to check the script)" >&2
fi
exec "$PY" benchmarks/gpu_grid.py "$@"
