"""One process of the multi-process tests: 4 simulated CPU devices, joins the job at 127.0.0.1:PORT, trains on the
global (2, 2, 2) mesh and writes its result as JSON.

usage: python dist_worker.py PORT NUM_PROCESSES PROCESS_ID WORKDIR OUT_JSON [DEMO_ROOT [SIGTERM_AT]]
DEMO_ROOT: train on that demo store (train_helpers.store_config) instead of synthetic batches. SIGTERM_AT: process 1
sends itself a SIGTERM while fetching the batch of that step (a preemption notice reaching one host only); then both
export the model of the stopped state to WORKDIR/model_at_stop together (a collective save).
"""
import json
import os
import signal
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_helpers import store_config, tiny_config  # noqa: E402
from otter_jax.data import loader  # noqa: E402
from otter_jax.train import data, loop  # noqa: E402


def sigterm_at(step: int) -> None:
    """Process 1 gets a SIGTERM when its training iterator is about to produce the batch of `step`."""
    import jax

    make, nxt = data.train_batches, loader.LoaderIterator.__next__

    def train_batches(*args, **kwargs):
        it = make(*args, **kwargs)
        it.sigterm_at = step if jax.process_index() == 1 else None
        return it

    def next_batch(self):
        if getattr(self, "sigterm_at", None) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return nxt(self)

    data.train_batches, loader.LoaderIterator.__next__ = train_batches, next_batch


def main(port: str, nproc: str, pid: str, workdir: str, out: str, demo_root: str = "", at: str = "") -> None:
    dist = dict(mode="on", coordinator=f"127.0.0.1:{port}", num_processes=int(nproc), process_id=int(pid))
    c = store_config(workdir, demo_root, distributed=dist) if demo_root else tiny_config(workdir, distributed=dist)
    if at:
        sigterm_at(int(at))
    r = loop.train(c)
    import jax

    if at:
        loop.export_model(r.state, os.path.join(workdir, "model_at_stop"), c.data.tokenizer)

    with open(out, "w") as fh:
        json.dump({"losses": r.losses, "eval": r.eval_losses, "process_count": jax.process_count(),
                   "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                   "checkpoints": r.checkpoint_dir, "preempted": r.preempted, "last_step": r.last_step,
                   "model_dir": r.model_dir}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:])
