"""One process of the 2-process test: 4 simulated CPU devices, joins the job at 127.0.0.1:PORT, trains the tiny
config on the global (2, 2, 2) mesh and writes its per-step losses as JSON.

usage: python dist_worker.py PORT NUM_PROCESSES PROCESS_ID WORKDIR OUT_JSON
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_helpers import tiny_config  # noqa: E402
from otter_jax.train import loop  # noqa: E402


def main(port: str, nproc: str, pid: str, workdir: str, out: str) -> None:
    c = tiny_config(workdir, distributed=dict(mode="on", coordinator=f"127.0.0.1:{port}", num_processes=int(nproc),
                                              process_id=int(pid)))
    r = loop.train(c)
    import jax

    with open(out, "w") as fh:
        json.dump({"losses": r.losses, "eval": r.eval_losses, "process_count": jax.process_count(),
                   "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                   "checkpoints": r.checkpoint_dir}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:])
