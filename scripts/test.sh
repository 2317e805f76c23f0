#!/usr/bin/env bash
# Set up a development environment (idempotent) and run lint + the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: on CPU-only machines this is the CPU build (a bare "torch" pulls CUDA).
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
python -m pip install -q -e clients/python --no-deps
ruff check .
ruff format --check .
# Two workers (PYTEST_WORKERS=0 runs in one process); each test file stays on one worker, so
# module fixtures (trained models, live servers) are built once.
WORKERS=${PYTEST_WORKERS:-2}
if [ "$WORKERS" != 0 ]; then
  # One compute thread per worker: torch's (OpenMP) pool on top of one worker per core
  # oversubscribes the cores, and small ops then mostly wait (2.5x slower on 2 cores).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
python -m pytest -n "$WORKERS" --dist loadfile "$@"
