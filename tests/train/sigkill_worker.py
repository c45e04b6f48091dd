"""A single-process training run (8 CPU devices, the tiny synthetic config) that SIGKILLs itself while fetching the
batch of step AT: an abrupt death with no handler, no final save.

usage: python sigkill_worker.py WORKDIR AT
"""
import os
import signal
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_helpers import tiny_config  # noqa: E402
from otter_jax.train import data, loop  # noqa: E402


def main(workdir: str, at: str) -> None:
    class KilledAt(data.SyntheticBatches):
        def __next__(self):
            if self.step == int(at) - 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__next__()

    data.SyntheticBatches = KilledAt
    loop.train(tiny_config(workdir, checkpoint=dict(async_save=False)))


if __name__ == "__main__":
    main(*sys.argv[1:])
