"""Loading `configs/*.py` experiment files (`path.py[:arg]`, each with `get_config(arg)`) outside absl flags."""
from __future__ import annotations

import importlib.util
import os

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
