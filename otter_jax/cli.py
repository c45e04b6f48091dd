"""`otter-jax <command>`: one entry point, one module per command.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; modules are imported only when their
command runs, so `otter-jax data ...` never pays for importing the model code and vice versa.

User mistakes (a missing or unreadable path, not an image, a bad config value, a checkpoint that does not fit)
end in one line `otter-jax <command>: error: ...` and exit status 2; `-v` / `--verbose` shows the traceback and
keeps library logs, which are otherwise quieted (see quiet.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# Exceptions that mean "the input is wrong", not "the program is wrong": every project error class derives from
# ValueError (CheckpointError, ConfigError, EvalConfigError, TrainConfigError, DataError, SchemaError, ...), and a
# path that is missing, a folder, unreadable or not an image (PIL's UnidentifiedImageError) is an OSError.
USER_ERRORS = (ValueError, OSError, KeyError)


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    return msg or type(e).__name__

# command name -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("otter_jax.convert.cli", "convert Otter checkpoints between PyTorch (HF layout) and our orbax format"),
    "init": ("otter_jax.convert.init_builder", "build an Otter starting point from CLIP + a base LLaMA/MPT (+ OpenFlamingo)"),
    "forward": ("otter_jax.forward", "run a checkpoint on inputs from an .npz and compare with reference outputs"),
    "generate": ("otter_jax.generate.cli", "answer questions about images or videos (single request or a JSONL)"),
    "serve": ("otter_jax.serve.cli", "OpenAI-compatible chat-completions server (images, in-context turns, video)"),
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
    name, rest = argv[0], argv[1:]
    verbose = any(a in ("-v", "--verbose") for a in rest)
    from otter_jax.quiet import quiet_output
    set_here = quiet_output(verbose)
    try:
        return _run(name, rest, verbose)
    finally:   # in-process callers (tests, notebooks) get their environment back
        for k in set_here:
            os.environ.pop(k, None)


def _run(name: str, rest: list[str], verbose: bool) -> int:
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"otter-jax {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    if not any(o in cmd_parser._option_string_actions for o in ("-v", "--verbose")):
        cmd_parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except SystemExit as e:
        if isinstance(e.code, str):   # `raise SystemExit("message")` in a command: same one-line form
            msg = e.code.removeprefix(f"otter-jax {name}: ").removeprefix("error: ")
            print(f"otter-jax {name}: error: {msg}", file=sys.stderr)
            return 2
        raise
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc()
        print(f"otter-jax {name}: error: {_one_line(e)}" + ("" if verbose else "  (-v shows the traceback)"),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
