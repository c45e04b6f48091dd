"""Our own model checkpoint: `config.json` (the HF-style Otter config), `otter_jax.json` (special token ids),
tokenizer files, and the parameters as an orbax checkpoint under `params/`.

Parameters are restored straight into their shards when a mesh is given. Paths go through etils.epath, so a model
can live on a bucket (gs://) as well as on a local disk. `load_training_checkpoint` reads the model out of a
training checkpoint (`otter-jax convert --from-checkpoint`); handing a training checkpoint to `load_model` says so.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from otter_jax import sharding as S
from otter_jax.convert.otter_hf import TOKENIZER_FILES, abstract_model
from otter_jax.convert.torch_io import CheckpointError, atomic_dir_write
from otter_jax.models.config import OtterConfig, Policy, SpecialTokens
from otter_jax.models.layout import relayout
from otter_jax.models.otter import Otter

META_FILE = "otter_jax.json"
TRAINING_ITEMS = ("state", "meta")  # the items of a training checkpoint step (otter_jax.train.checkpoints)


def _path(p: str | os.PathLike) -> epath.Path:
    """gs://... (or another registered file system) as given; local paths absolute (orbax wants them so)."""
    s = os.fspath(p)
    return epath.Path(s if "://" in s else os.path.abspath(s))


def _is_local(p: str | os.PathLike) -> bool:
    return "://" not in os.fspath(p)


def copy_tokenizer_files(src: str | os.PathLike | None, dst: str | os.PathLike) -> None:
    """The tokenizer files of `src` (local or remote) into `dst`."""
    if not src:
        return
    for name in TOKENIZER_FILES:
        f = _path(src) / name
        if f.exists():
            (_path(dst) / name).write_bytes(f.read_bytes())


def _write_small_files(out: epath.Path, cfg: OtterConfig, tokenizer_dir) -> None:
    """config.json and the tokenizer, then otter_jax.json last: its presence marks the checkpoint complete."""
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2, sort_keys=True))
    copy_tokenizer_files(tokenizer_dir, out)
    meta = {"format": 1, "tokens": dataclasses.asdict(cfg.tokens) if cfg.tokens else None}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))


def save_model(model: Otter, cfg: OtterConfig, ckpt_dir: str | os.PathLike, tokenizer_dir: str | None = None
               ) -> None:
    """Write a new model checkpoint. One process on a local disk: atomically (nothing is left behind on failure).
    Several processes or a remote path: a collective save -- every process calls it and orbax writes each process's
    shards; process 0 writes the small files after the arrays, `otter_jax.json` last."""
    params = nnx.to_pure_dict(nnx.state(relayout(model, True)))  # checkpoints are always in the stacked layout
    if jax.process_count() == 1 and _is_local(ckpt_dir):
        def write(tmp: str) -> None:
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(os.path.join(os.path.abspath(tmp), "params"), params)
            _write_small_files(epath.Path(tmp), cfg, tokenizer_dir)

        atomic_dir_write(os.fspath(ckpt_dir), write)
        return
    out = _path(ckpt_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{ckpt_dir}: output directory exists and is not empty")
    with ocp.StandardCheckpointer() as ckptr:  # collective; returns when every process's shards are committed
        ckptr.save(out / "params", params)
    if jax.process_index() == 0:
        _write_small_files(out, cfg, tokenizer_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("otter_jax_save_model_done")


def training_checkpoint_step(path: str | os.PathLike) -> epath.Path | None:
    """The step directory when `path` is a training checkpoint: a step directory (state/ + meta/), a checkpoints
    folder or a training workdir (their newest step); else None."""
    p = _path(path)
    if not p.is_dir():
        return None
    if all((p / item).is_dir() for item in TRAINING_ITEMS):
        return p
    for folder in (p, p / "checkpoints"):
        if folder.is_dir():
            steps = sorted((int(c.name), c) for c in folder.iterdir() if c.name.isdigit()
                           and all((c / item).is_dir() for item in TRAINING_ITEMS))
            if steps:
                return steps[-1][1]
    return None


def read_config(ckpt_dir: str | os.PathLike) -> OtterConfig:
    d = _path(ckpt_dir)
    for name in ("config.json", META_FILE):
        if not (d / name).exists():
            step = training_checkpoint_step(ckpt_dir)
            if step is not None:
                raise CheckpointError(f"{ckpt_dir} is a training checkpoint (otter-jax train), not a model: export the "
                                      f"model with `otter-jax convert --from-checkpoint {step} --out MODEL_DIR`")
            raise CheckpointError(f"{ckpt_dir}: not an otter-jax checkpoint (no {name})")
    cfg = OtterConfig.from_hf_dict(json.loads((d / "config.json").read_text()), source=str(d / "config.json"))
    meta = json.loads((d / META_FILE).read_text())
    tokens = SpecialTokens(**meta["tokens"]) if meta.get("tokens") else None
    return dataclasses.replace(cfg, tokens=tokens)


def _shardings(state: nnx.State, mesh, rules):
    if mesh is not None:
        return S.state_shardings(state, mesh, rules)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda v: v.replace(device), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def load_model(ckpt_dir: str | os.PathLike, policy: Policy = Policy(), mesh=None, rules: S.Rules = S.DEFAULT_RULES
               ) -> tuple[Otter, OtterConfig]:
    cfg = read_config(ckpt_dir)
    abstract = abstract_model(cfg, policy)
    graphdef, state = nnx.split(abstract)
    shardings = _shardings(state, mesh, rules)
    target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                          nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(_path(ckpt_dir) / "params", target)
    nnx.replace_by_pure_dict(state, restored)
    return relayout(nnx.merge(graphdef, state), policy.scan_layers), cfg


def load_training_checkpoint(path: str | os.PathLike, policy: Policy = Policy(), mesh=None,
                             rules: S.Rules = S.DEFAULT_RULES) -> tuple[Otter, OtterConfig, str | None]:
    """(model, config, tokenizer folder of the run or None) from a training checkpoint step (or the newest step of a
    checkpoints folder / workdir). Only the model's arrays are read, not the optimizer's."""
    import ml_collections

    from otter_jax import config_files
    from otter_jax.train import config as C

    step_dir = training_checkpoint_step(path)
    if step_dir is None:
        raise CheckpointError(f"{path}: not a training checkpoint (want a step directory with state/ and meta/, "
                              f"e.g. runs/x/checkpoints/300)")
    meta_file = step_dir / "meta" / "metadata"  # orbax JsonSave's file
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if not meta or "config" not in meta:
        raise CheckpointError(f"{step_dir}: its meta item holds no run config")
    c = ml_collections.ConfigDict(meta["config"])
    cfg = C.model_config(c)
    if meta.get("tokens"):
        cfg = dataclasses.replace(cfg, tokens=SpecialTokens(**meta["tokens"]))
    trained = config_files.policy(c)  # the layer layout and dtypes the run saved its state in
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Otter(cfg, trained, rngs=nnx.Rngs(0))))
    # The train state is (model, optimizer) flattened to "0.<path>" / "1.<path>" keys (otter_jax.train.checkpoints).
    shardings = nnx.to_flat_state(_shardings(state, mesh, rules))
    target = {"0." + ".".join(map(str, p)): jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.get_value())
              for (p, v), (_, s) in zip(nnx.to_flat_state(state), shardings)}
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    pairs = [(p, v.replace(restored["0." + ".".join(map(str, p))])) for p, v in nnx.to_flat_state(state)]
    model = nnx.merge(graphdef, nnx.from_flat_state(pairs))
    model = relayout(model, policy.scan_layers)
    tokenizer = c.data.get("tokenizer") or None if "data" in c else None
    return model, cfg, tokenizer
