"""`otter-jax eval --config configs/eval/X.py[:ARG] [--config.key=value ...]`: run a configured evaluation, write
results.json + report.md into config.output_dir, and print the report. `--write-tiny-sets DIR` only writes the
bundled tiny evaluation sets."""
from __future__ import annotations

import argparse
import sys

from otter_jax import config_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="eval config file, e.g. configs/eval/demo.py:runs/demo/ckpt; then "
                                    "--config.KEY=VALUE overrides (absl style)")
    p.add_argument("--write-tiny-sets", metavar="DIR", help="write the tiny evaluation sets into DIR and exit")
    config_files.accept_overrides(p)


def run(args: argparse.Namespace) -> int:
    if args.write_tiny_sets:
        from otter_jax.evaluate.tiny_sets import write_tiny_sets
        print(f"wrote {write_tiny_sets(args.write_tiny_sets)}")
        return 0
    if not args.config:
        print("otter-jax eval: --config is required (or --write-tiny-sets DIR)", file=sys.stderr)
        return 2
    from otter_jax.evaluate import config as C

    try:
        c = C.load(args.config, args.overrides)
    except (C.EvalConfigError, FileNotFoundError) as e:
        print(f"otter-jax eval: {e}", file=sys.stderr)
        return 2
    return evaluate_config(c, args.config)


def evaluate_config(c, source: str = "") -> int:
    from otter_jax.evaluate import report, tiny_sets
    from otter_jax.evaluate.runner import Evaluation

    if c.write_tiny_sets:
        tiny_sets.ensure(c.data_root)
    results = Evaluation(c).run(source)
    print(report.markdown(results))
    print(f"results: {c.output_dir}/results.json, report: {c.output_dir}/report.md")
    return 0
