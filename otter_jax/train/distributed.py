"""Multi-host start-up: `jax.distributed.initialize` from the config / environment, before any device is touched.

TPU VMs and SLURM jobs need no arguments (jax reads the cluster from its environment); other GPU clusters pass the
coordinator address, process count and id (config.distributed.* or OTTER_COORDINATOR / OTTER_NUM_PROCESSES /
OTTER_PROCESS_ID). On a TPU VM `jax.distributed.initialize()` is always called explicitly ("auto" sees the TPU
devices): every worker of a pod slice runs the same command and must join the one job, and the preemption service
(maintenance notices, SIGTERM) only runs inside it. On CPU (tests, laptops) the cross-process collectives need gloo.
"""
from __future__ import annotations

import logging
import os

import ml_collections

log = logging.getLogger(__name__)

ENV = {"coordinator": "OTTER_COORDINATOR", "num_processes": "OTTER_NUM_PROCESSES", "process_id": "OTTER_PROCESS_ID"}
CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")
TPU_DEVICE_FILES = ("/dev/accel0", "/dev/vfio/0")  # TPU VM chips (v2-v4: accel; v5+: vfio)


def on_tpu_vm() -> bool:
    """TPU chips present and libtpu installed (jax[tpu])."""
    import importlib.util

    return any(os.path.exists(f) for f in TPU_DEVICE_FILES) and importlib.util.find_spec("libtpu") is not None


def settings(d: ml_collections.ConfigDict) -> dict:
    """Coordinator/process settings: config values first, then the OTTER_* environment variables."""
    out = {
        "coordinator": d.coordinator or os.environ.get(ENV["coordinator"], ""),
        "num_processes": d.num_processes if d.num_processes >= 0 else int(os.environ.get(ENV["num_processes"], -1)),
        "process_id": d.process_id if d.process_id >= 0 else int(os.environ.get(ENV["process_id"], -1)),
        "local_device_ids": d.local_device_ids,
    }
    return out


def initialize(d: ml_collections.ConfigDict) -> bool:
    """Initialise the multi-process runtime when asked ("on"), or when a coordinator or known cluster is found
    ("auto"); returns whether it did. Must run before the first jax computation."""
    import jax

    s = settings(d)
    wanted = d.mode == "on" or (d.mode == "auto" and (s["coordinator"] or any(k in os.environ for k in CLUSTER_ENV)
                                                      or on_tpu_vm()))
    if not wanted or d.mode == "off":
        return False
    kwargs = {}
    if s["coordinator"]:
        missing = [k for k in ("num_processes", "process_id") if s[k] < 0]
        if missing:
            raise ValueError(f"config.distributed.coordinator={s['coordinator']!r} needs "
                             + " and ".join(f"config.distributed.{k} (or ${ENV[k]})" for k in missing))
        kwargs = dict(coordinator_address=s["coordinator"], num_processes=s["num_processes"],
                      process_id=s["process_id"])
    if s["local_device_ids"]:
        kwargs["local_device_ids"] = [int(i) for i in s["local_device_ids"].split(",")]
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or jax.config.jax_platforms == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
