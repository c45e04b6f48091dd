"""Our own model checkpoint: `config.json` (the HF-style Otter config), `otter_jax.json` (special token ids),
tokenizer files, and the parameters as an orbax checkpoint under `params/`.

Parameters are restored straight into their shards when a mesh is given.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from otter_jax import sharding as S
from otter_jax.convert.otter_hf import abstract_model, copy_tokenizer_files
from otter_jax.convert.torch_io import CheckpointError, atomic_dir_write
from otter_jax.models.config import OtterConfig, Policy, SpecialTokens
from otter_jax.models.layout import relayout
from otter_jax.models.otter import Otter

META_FILE = "otter_jax.json"


def save_model(model: Otter, cfg: OtterConfig, ckpt_dir: str, tokenizer_dir: str | None = None) -> None:
    """Write a new checkpoint directory atomically (nothing is left behind on failure)."""
    params = nnx.to_pure_dict(nnx.state(relayout(model, True)))  # checkpoints are always in the stacked layout

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(cfg.to_hf_dict(), fh, indent=2, sort_keys=True)
        meta = {"format": 1, "tokens": dataclasses.asdict(cfg.tokens) if cfg.tokens else None}
        with open(os.path.join(tmp, META_FILE), "w") as fh:
            json.dump(meta, fh, indent=2)
        copy_tokenizer_files(tokenizer_dir, tmp)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(os.path.abspath(tmp), "params"), params)

    atomic_dir_write(ckpt_dir, write)


def read_config(ckpt_dir: str) -> OtterConfig:
    for name in ("config.json", META_FILE):
        if not os.path.exists(os.path.join(ckpt_dir, name)):
            raise CheckpointError(f"{ckpt_dir}: not an otter-jax checkpoint (no {name})")
    with open(os.path.join(ckpt_dir, "config.json")) as fh:
        cfg = OtterConfig.from_hf_dict(json.load(fh), source=os.path.join(ckpt_dir, "config.json"))
    with open(os.path.join(ckpt_dir, META_FILE)) as fh:
        meta = json.load(fh)
    tokens = SpecialTokens(**meta["tokens"]) if meta.get("tokens") else None
    return dataclasses.replace(cfg, tokens=tokens)


def load_model(ckpt_dir: str, policy: Policy = Policy(), mesh=None, rules: S.Rules = S.DEFAULT_RULES
               ) -> tuple[Otter, OtterConfig]:
    cfg = read_config(ckpt_dir)
    abstract = abstract_model(cfg, policy)
    graphdef, state = nnx.split(abstract)
    if mesh is not None:
        shardings = S.state_shardings(state, mesh, rules)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda v: v.replace(device), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                          nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
    path = os.path.join(os.path.abspath(ckpt_dir), "params")
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, target)
    nnx.replace_by_pure_dict(state, restored)
    return relayout(nnx.merge(graphdef, state), policy.scan_layers), cfg
