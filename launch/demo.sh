#!/usr/bin/env bash
# The main job on a fresh machine: install, write the bundled demo data and build its store, train the tiny Otter
# (configs/demo.py) on CPU for a few minutes, evaluate it on the tiny bundled evaluation sets, and print where the
# checkpoints, the model, the TensorBoard logs and the evaluation report are.
# Extra arguments go to `otter-jax train` (e.g. --config.train.steps=100). Re-running resumes / starts over with
# FRESH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
bash scripts/install.sh
[ "${FRESH:-0}" = 1 ] && rm -rf "$OUT"
mkdir -p "$OUT"
[ -f "$OUT/data/demo.yaml" ] || .venv/bin/otter-jax data demo --out "$OUT/data"
# Hold out ~20% of the queries (whole conversations / in-context sets) as the store's validation split: the
# validation loss printed during training is on examples never trained on.
[ -f "$OUT/store/manifest.json" ] || .venv/bin/otter-jax data build --yaml "$OUT/data/demo.yaml" --out "$OUT/store" \
  --val-fraction 0.2
.venv/bin/otter-jax train --config "configs/demo.py:$OUT" "$@"
# Evaluate the trained model on the tiny bundled evaluation sets (all task formats) and print the report.
.venv/bin/otter-jax eval --config "configs/eval/demo.py:$OUT/train/model" --config.output_dir="$OUT/eval"
echo "checkpoints: $(pwd)/$OUT/train/checkpoints"
echo "model:       $(pwd)/$OUT/train/model"
echo "TensorBoard: .venv/bin/tensorboard --logdir $(pwd)/$OUT/train/tensorboard"
echo "evaluation:  $(pwd)/$OUT/eval/report.md"
