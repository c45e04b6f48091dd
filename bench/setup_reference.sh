#!/usr/bin/env bash
# The original PyTorch Otter (PyPI `otter-ai`), in a virtual environment of its own (.venv-ref), with only what the
# model needs: its declared dependencies (deepspeed, gradio, wandb, ...) are not needed to time it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv-ref/bin/python ] && .venv-ref/bin/python -c "import otter_ai" 2>/dev/null; then
  echo ".venv-ref ready"; exit 0
fi
python3.11 -m venv .venv-ref
.venv-ref/bin/pip install -q torch==2.13.0 transformers==4.35.1 accelerate==0.25.0 peft==0.10.0 \
    tokenizers==0.14.1 "numpy<2" einops einops_exts safetensors sentencepiece
.venv-ref/bin/pip install -q --no-deps otter-ai==0.0.0a8
echo ".venv-ref ready"
