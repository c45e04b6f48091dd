#!/usr/bin/env bash
# The main job on a fresh machine: install, convert a golden Otter checkpoint produced by the original PyTorch code
# into an otter-jax checkpoint, run it, and compare its logits with the original's.
set -euo pipefail
cd "$(dirname "$0")/.."
GOLDEN=${GOLDEN:-../shared/golden/otter_llama_tiny}
OUT=${OUT:-runs/demo}
bash scripts/install.sh
rm -rf "$OUT/ckpt"
mkdir -p "$OUT"
.venv/bin/otter-jax convert --from-torch "$GOLDEN" --out "$OUT/ckpt"
.venv/bin/otter-jax forward --checkpoint "$OUT/ckpt" --inputs "$GOLDEN/inputs_image.npz" \
    --compare "$GOLDEN/outputs_image.npz"
echo "checkpoint: $OUT/ckpt"
