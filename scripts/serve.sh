#!/usr/bin/env bash
# Set up a torch-free serving environment (idempotent) and serve the bundled default model.
# Usage: bash scripts/serve.sh [flowserve serve flags...], e.g. --port 8080 --models ./artifacts
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-serve/bin/python ]; then
  "$PY" -m venv .venv-serve
fi
. .venv-serve/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[serve]"
exec flowserve serve "$@"
