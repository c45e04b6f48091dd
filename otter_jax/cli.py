"""`otter-jax <command>`: one entry point, one module per command.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; modules are imported only when their
command runs, so `otter-jax data ...` never pays for importing the model code and vice versa.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("otter_jax.convert.cli", "convert Otter checkpoints between PyTorch (HF layout) and our orbax format"),
    "init": ("otter_jax.convert.init_builder", "build an Otter starting point from CLIP + a base LLaMA/MPT (+ OpenFlamingo)"),
    "forward": ("otter_jax.forward", "run a checkpoint on inputs from an .npz and compare with reference outputs"),
    "generate": ("otter_jax.generate.cli", "answer questions about images or videos (single request or a JSONL)"),
    "data": ("otter_jax.data.cli", "ingest MIMIC-IT files into the episode store and inspect it"),
    "eval": ("otter_jax.evaluate.cli", "run benchmark evaluations from a configs/eval/*.py file"),
    "train": ("otter_jax.train.cli", "train (or resume) Otter from a configs/*.py experiment file"),
    "plan": ("otter_jax.train.plan", "parameter, optimizer and per-device memory of a config on a mesh, no allocation"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="otter-jax", description="Otter in JAX: convert, run, train, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.error(f"unknown command {argv[0]!r}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"otter-jax {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    return int(module.run(cmd_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
