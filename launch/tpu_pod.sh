#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it (or reuse it), copy this checkout to every worker, install Python 3.11
# (uv) and jax[tpu], and run the same `otter-jax train` command on all workers at once. Each worker calls
# jax.distributed.initialize() (--config.distributed.mode=on; the pod is read from the TPU metadata). Checkpoints and
# TensorBoard go to a bucket, so a preempted slice resumes where it stopped: re-run this script with the same RUN.
#
#   launch/tpu_pod.sh configs/otter_image_mpt7b.py --config.data.store=gs://BUCKET/store \
#       --config.data.tokenizer=gs://BUCKET/tokenizer --config.train.init_from=gs://BUCKET/otter-init
#
# Edit these lines (or set them in the environment):
PROJECT=${PROJECT:-my-gcp-project}          # your Google Cloud project
ZONE=${ZONE:-us-central2-b}                 # a zone that has the accelerator type
ACCELERATOR=${ACCELERATOR:-v4-32}           # pod slice type (v4-32 = 16 chips on 4 workers; v5p-64; v6e-64 ...)
TPU_NAME=${TPU_NAME:-otter-jax-${ACCELERATOR}}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}     # TPU VM runtime image (v5e: v2-alpha-tpuv5-lite; v6e: v2-alpha-tpuv6e)
BUCKET=${BUCKET:-gs://my-bucket/otter-jax}  # checkpoints + TensorBoard go to $BUCKET/$RUN (orbax writes gs:// directly)
RUN=${RUN:-run-$(date +%Y%m%d-%H%M%S)}      # set RUN=<the old name> to resume a run
SPOT=${SPOT:-}                              # SPOT=--spot for preemptible capacity (preemption -> checkpoint, exit 0)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/tpu_pod.sh configs/X.py[:arg] [--config.a.b=value ...]}
shift
GC="gcloud compute tpus tpu-vm --project=$PROJECT --zone=$ZONE"

if ! $GC describe "$TPU_NAME" >/dev/null 2>&1; then
  echo "creating $TPU_NAME ($ACCELERATOR, $RUNTIME)"
  $GC create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" $SPOT
fi

echo "copying the checkout to every worker and installing (uv: Python 3.11; scripts/install.sh --accelerator tpu)"
SRC=$(mktemp -d)/otter-jax-src.tgz
tar --exclude=.venv --exclude=.venv-ref --exclude=runs --exclude=.git -czf "$SRC" .
$GC scp "$SRC" "$TPU_NAME":/tmp/ --worker=all
$GC ssh "$TPU_NAME" --worker=all --command="set -e; mkdir -p ~/otter-jax && tar -xzf /tmp/otter-jax-src.tgz -C ~/otter-jax
  cd ~/otter-jax
  command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
  [ -x .venv/bin/python ] || ~/.local/bin/uv venv --seed --python 3.11 .venv
  bash scripts/install.sh --accelerator tpu"

# The same command on every worker; data, tokenizer and workdir on the bucket (or copied to each worker).
ARGS=$(printf ' %q' "$@")
$GC ssh "$TPU_NAME" --worker=all --command="cd ~/otter-jax && .venv/bin/otter-jax train --config $CONFIG \
  --config.distributed.mode=on --config.workdir=$BUCKET/$RUN $ARGS"
echo "done: checkpoints in $BUCKET/$RUN/checkpoints; tensorboard --logdir $BUCKET/$RUN/tensorboard"
echo "model: $BUCKET/$RUN/model (or: otter-jax convert --from-checkpoint $BUCKET/$RUN/checkpoints/STEP --out DIR)"
echo "delete the slice when finished: $GC delete $TPU_NAME"
