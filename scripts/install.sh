#!/usr/bin/env bash
# Create .venv (Python >= 3.11) with the project, its PyTorch extra, the test tools, and the jax build of the
# accelerator:
#   bash scripts/install.sh                       # CPU (the default; CI uses it)
#   bash scripts/install.sh --accelerator tpu     # Cloud TPU VM: jax[tpu] (libtpu) at the installed jax version
#   bash scripts/install.sh --accelerator cuda    # NVIDIA GPUs: jax[cuda12] (CUDA and cuDNN come as wheels)
# PYTHON=python3.12 picks the interpreter (an existing .venv is reused as it is).
# torch==2.13.0 first: on these CPU machines that exact version is a local CPU wheel; any other spec would pull a
# multi-GB CUDA build (see README, "Install"). On TPU/GPU machines torch (conversion only) comes from PyTorch's CPU
# index for the same reason.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCELERATOR=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --accelerator) ACCELERATOR=${2:-}; shift 2 ;;
    --accelerator=*) ACCELERATOR=${1#*=}; shift ;;
    *) echo "usage: scripts/install.sh [--accelerator cpu|tpu|cuda]" >&2; exit 2 ;;
  esac
done
case "$ACCELERATOR" in
  cpu|tpu|cuda) ;;
  *) echo "scripts/install.sh: --accelerator must be cpu, tpu or cuda (got '$ACCELERATOR')" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [ "$ACCELERATOR" = cpu ]; then
  .venv/bin/pip install -q torch==2.13.0
else
  .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
# [aot]: libtpu, for `otter-jax plan --topology` (compiles for TPU slices on any host; CI runs those tests)
EXTRAS=dev,torch,aot
[ "$ACCELERATOR" = cuda ] && EXTRAS=dev,torch
.venv/bin/pip install -q -e ".[$EXTRAS]"
JAX_VERSION=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
case "$ACCELERATOR" in  # the same jax version, with the accelerator's plugin
  tpu) .venv/bin/pip install -q "jax[tpu]==$JAX_VERSION" ;;
  cuda) .venv/bin/pip install -q "jax[cuda12]==$JAX_VERSION" ;;
esac
echo "installed into $(pwd)/.venv (jax $JAX_VERSION, accelerator: $ACCELERATOR)"
[ "$ACCELERATOR" = cpu ] || echo "check: .venv/bin/python -c 'import jax; print(jax.devices())' lists the ${ACCELERATOR^^} devices"
