#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it (or reuse it), copy this checkout to every worker, install, and run
# the same `otter-jax train` command on all workers at once (jax.distributed finds the pod by itself).
#
#   launch/tpu_pod.sh configs/otter_image_mpt7b.py --config.data.store=gs://BUCKET/store ...
#
# Edit these lines (or set them in the environment):
PROJECT=${PROJECT:-my-gcp-project}          # your Google Cloud project
ZONE=${ZONE:-us-central2-b}                 # a zone that has the accelerator type
ACCELERATOR=${ACCELERATOR:-v4-32}           # pod slice type (v4-32 = 16 chips on 4 workers; v5p-64; v6e-64 ...)
TPU_NAME=${TPU_NAME:-otter-jax-${ACCELERATOR}}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}     # TPU VM software version
BUCKET=${BUCKET:-gs://my-bucket/otter-jax}  # checkpoints + TensorBoard go to $BUCKET/$RUN (orbax writes gs:// directly)
RUN=${RUN:-run-$(date +%Y%m%d-%H%M%S)}
SPOT=${SPOT:-}                              # set SPOT=--spot for preemptible capacity (SIGTERM -> checkpoint)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/tpu_pod.sh configs/X.py[:arg] [--config.a.b=value ...]}
shift
GC="gcloud compute tpus tpu-vm --project=$PROJECT --zone=$ZONE"

if ! $GC describe "$TPU_NAME" >/dev/null 2>&1; then
  echo "creating $TPU_NAME ($ACCELERATOR)"
  $GC create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" $SPOT
fi

echo "copying the checkout to every worker"
tar --exclude=.venv --exclude=.venv-ref --exclude=runs --exclude=.git -czf /tmp/otter-jax-src.tgz .
$GC scp /tmp/otter-jax-src.tgz "$TPU_NAME":/tmp/ --worker=all
$GC ssh "$TPU_NAME" --worker=all --command="set -e; mkdir -p ~/otter-jax && tar -xzf /tmp/otter-jax-src.tgz -C ~/otter-jax
  cd ~/otter-jax && [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e . 'jax[tpu]'"

# Same command on every worker; the workdir must be shared storage (a bucket), data too (or copied per worker).
ARGS=$(printf ' %q' "$@")
$GC ssh "$TPU_NAME" --worker=all --command="cd ~/otter-jax && .venv/bin/otter-jax train \
  --config $CONFIG --config.workdir=$BUCKET/$RUN $ARGS"
echo "done: checkpoints in $BUCKET/$RUN/checkpoints; tensorboard --logdir $BUCKET/$RUN/tensorboard"
echo "delete the slice when finished: $GC delete $TPU_NAME"
