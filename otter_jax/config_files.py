"""Loading `configs/*.py` experiment files (`path.py[:arg]`, each with `get_config(arg)`) outside absl flags."""
from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from otter_jax.models.config import OtterConfig, Policy


def load(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such config file")
    module_spec = importlib.util.spec_from_file_location(f"_otter_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def model_config(c: ml_collections.ConfigDict, source: str = "config") -> OtterConfig:
    return OtterConfig.from_hf_dict(c.model.to_dict() if hasattr(c.model, "to_dict") else dict(c.model), source)


def policy(c: ml_collections.ConfigDict) -> Policy:
    return Policy(**dict(c.get("policy", {})))


def accept_overrides(parser: argparse.ArgumentParser) -> None:
    """Let `parser` collect absl-style `--config.a.b[=v]` arguments into `args.overrides` instead of rejecting them
    (argparse cannot declare options with arbitrary dotted names)."""
    parse_known = parser.parse_known_args

    def parse_args(args=None, namespace=None):
        ns, rest = parse_known(args, namespace)
        ns.overrides, i = [], 0
        while i < len(rest):
            if not rest[i].startswith("--config."):
                parser.error(f"unrecognized argument {rest[i]!r} (config overrides look like --config.a.b=value)")
            if "=" not in rest[i] and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                ns.overrides.append(f"{rest[i]}={rest[i + 1]}")
                i += 2
            else:
                ns.overrides.append(rest[i])
                i += 1
        return ns

    parser.parse_args = parse_args


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str], error: type[Exception] = ValueError
                    ) -> ml_collections.ConfigDict:
    """`--config.a.b=v` (or `--config.a.b v`) overrides applied by ml_collections' absl flag parser (values typed like the defaults);
    a key that does not exist raises `error` naming it and the keys known at that level."""
    from absl import flags
    from ml_collections import config_flags

    for arg in overrides:  # absl argv: "--config.a.b=v" or "--config.a.b", "v"
        if arg.startswith("--config."):
            _check_key(cfg, arg[len("--config."):].split("=", 1)[0], error)
    fv = flags.FlagValues()
    argv = ["otter-jax", *overrides]
    config_flags.DEFINE_config_dict("config", cfg, flag_values=fv, sys_argv=argv)
    try:
        fv(argv)
    except flags.Error as e:
        raise error(str(e)) from None
    return fv.config


def _check_key(cfg: ml_collections.ConfigDict, dotted: str, error: type[Exception]) -> None:
    node: Any = cfg
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = "config." + ".".join(dotted.split(".")[:i + 1])
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "-"
            raise error(f"--config.{dotted}: {where} does not exist (known here: {known})")
        node = node[part]


def merge_strict(base: ml_collections.ConfigDict, user, error: type[Exception] = ValueError, prefix: str = "config",
                 free_form: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`user` over the defaults `base`: a key absent from `base` is an error naming it (a typo never passes
    silently), sections merge recursively, ints become floats where the default is a float. Keys named in
    `free_form` (dotted, e.g. "config.model") are taken whole."""
    out = ml_collections.ConfigDict(base.to_dict())
    for key, value in user.items():
        name = f"{prefix}.{key}"
        if name in free_form:
            out[key] = ml_collections.ConfigDict(value.to_dict() if hasattr(value, "to_dict") else dict(value))
        elif key not in base:
            raise error(f"{name}: unknown key (known: {', '.join(sorted(base.keys()))})")
        elif isinstance(base[key], ml_collections.ConfigDict):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise error(f"{name}: expected a section, got {value!r}")
            out[key] = merge_strict(base[key], ml_collections.ConfigDict(dict(value)), error, name, free_form)
        elif isinstance(base[key], float) and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            out[key] = value
    return out
