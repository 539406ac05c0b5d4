#!/usr/bin/env bash
# GPU readiness: run every CUDA path of the project once and write one JSON of what ran, what failed and
# the figures (default benchmarks/results/gpu_check.json; --out PATH or GPU_CHECK_OUT to change it).
# On a machine without CUDA it runs the CPU-side checks and records every CUDA check as skipped, with why.
#
#   bash scripts/gpu_check.sh [--out PATH] [--budget-s 450] [--only train_bf16,decode_cuda_graph] [--list]
#
# Python: $PYTHON if set, else .venv/bin/python if present, else python3. The project is imported from
# this checkout (PYTHONPATH), so it needs no install. Exit code: 0 nothing failed, 1 a check failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" -m kernels.gpu_check "$@"
