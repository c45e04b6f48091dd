"""`otter-jax train --config configs/X.py[:arg] [--config.a.b=value ...]`: run or resume a training job.

Overrides follow absl `config_flags` (`--config.optim.lr=2e-5`, `--config.mesh.fsdp 8`); every key of
`otter_jax.train.config.defaults()` exists, so any of them can be set even when the config file does not mention it.
Running the same command again resumes from the newest checkpoint in `config.workdir`.
"""
from __future__ import annotations

import argparse
import logging

from otter_jax import config_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="experiment file configs/X.py[:arg]; then --config.a.b=value overrides (absl style)")
    parser.add_argument("--workdir", help="shorthand for --config.workdir (checkpoints, TensorBoard, config.json)")
    parser.add_argument("--coordinator", help="multi-host: host:port of process 0 (= --config.distributed.coordinator)")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO from the trainer's modules")
    config_files.accept_overrides(parser)


def shorthand_overrides(args: argparse.Namespace) -> list[str]:
    pairs = (("workdir", "workdir"), ("coordinator", "distributed.coordinator"),
             ("num_processes", "distributed.num_processes"), ("process_id", "distributed.process_id"))
    return [f"--config.{key}={getattr(args, name)}" for name, key in pairs if getattr(args, name) is not None]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("otter_jax.train").setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax", "tensorflow"):  # orbax/jax log every save and compile at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from otter_jax.train import config as C

    setup_logging(args.verbose)
    try:
        c = C.load(args.config, shorthand_overrides(args) + args.overrides)
    except (C.TrainConfigError, FileNotFoundError) as e:
        raise SystemExit(f"otter-jax train: {e}")
    if args.print_config:
        print(c)
        return 0
    from otter_jax.train.loop import train

    try:
        result = train(c)
    except C.TrainConfigError as e:
        raise SystemExit(f"otter-jax train: {e}")
    return 0 if result.last_step >= c.train.steps or result.preempted else 1
