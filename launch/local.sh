#!/usr/bin/env bash
# Train on this machine (all its local devices: CPU, one GPU box, or a single TPU VM).
#   launch/local.sh configs/demo.py --config.train.steps=100
# Re-running the same command resumes from the newest checkpoint in config.workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/local.sh configs/X.py[:arg] [--config.a.b=value ...]}
shift
exec .venv/bin/otter-jax train --config "$CONFIG" "$@"
