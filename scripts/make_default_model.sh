#!/usr/bin/env bash
# Regenerate the default model that `flowserve serve` answers with on a fresh machine:
# flowserve/default_model/sensors/1/ (package data, committed).
#
# It is trained by the project's own command on the project's own generated data (the 4-feature
# "sensors" set, see flowserve.models.datasets), with fixed seeds, so anyone can reproduce it.
# Checkpoints go to a temporary directory, never into the package.
# Usage: bash scripts/make_default_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi

OUT=flowserve/default_model
CKPT=$(mktemp -d)
trap 'rm -rf "$CKPT"' EXIT

rm -rf "$OUT/sensors"
flowserve train --demo sensors --demo-rows 5000 --seed 0 \
  --name sensors --out "$OUT" --version 1 \
  --family realnvp --layers 8 --hidden 64 \
  --epochs 200 --patience 30 --batch-size 256 --lr 2e-3 \
  --accelerator cpu --devices 1 \
  --checkpoint-dir "$CKPT" --no-progress
du -sh "$OUT/sensors/1"
