#!/usr/bin/env bash
# Create .venv (Python 3.11) with the project, its PyTorch extra and the test tools.
# torch==2.13.0 first: on these CPU machines that exact version is a local CPU wheel; any other spec would pull a
# multi-GB CUDA build (see README, "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev,torch]'
echo "installed into $(pwd)/.venv"
