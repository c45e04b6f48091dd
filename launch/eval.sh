#!/usr/bin/env bash
# Evaluate a checkpoint on a benchmark family; predictions resume if the job is interrupted and rerun.
#   CKPT=runs/demo/ckpt bash launch/eval.sh                       # tiny bundled sets (written on first use)
#   CKPT=/ckpts/otter-mpt7b DATA=/data/eval SUITE=vqa bash launch/eval.sh --config.shots=0,4
# SUITE: demo | captioning | vqa | multichoice | yesno | pairwise (configs/eval/$SUITE.py). DATA: benchmark root.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:?set CKPT to a checkpoint folder}
SUITE=${SUITE:-demo}
EXTRA=()
[ -n "${DATA:-}" ] && EXTRA+=("--config.data_root=$DATA")
[ -n "${OUT:-}" ] && EXTRA+=("--config.output_dir=$OUT")
.venv/bin/otter-jax eval --config "configs/eval/$SUITE.py:$CKPT" "${EXTRA[@]}" "$@"
