"""The training config: every section with its defaults, merged under a `configs/*.py` file, then `--config.a.b=v`.

Why defaults live here: experiment files (configs/otter_image_mpt7b.py ...) describe a model, a policy and a mesh;
the trainer needs many more knobs, and absl `config_flags` can only override keys that exist. Merging the file over
this schema first makes every knob overridable from the command line and rejects misspelt keys by name.
Values are typed (no None) so absl can parse overrides: "" means "not set" for strings, -1 for counts.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from otter_jax import config_files

SCHEDULES = ("constant", "linear", "cosine")
DATA_SOURCES = ("store", "synthetic")


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()  # HF-style Otter config dict (from the experiment file)
    c.policy = dict(dtype="float32", param_dtype="float32", remat="none", scan_layers=True, frozen_param_dtype="",
                    attention="dense", attention_chunk=512, loss_chunk=0, scan_group_layers=False,
                    offload_layer_inputs=False, shard_activations=True, media_budget=0.0)  # models.config.Policy
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.rules = ""  # logical axis rules as "name=axis,name=axis1+axis2,name=" ("" = otter_jax.sharding.DEFAULT_RULES)
    c.workdir = "runs/train"  # checkpoints in <workdir>/checkpoints, TensorBoard in <workdir>/tensorboard; or gs://
    c.data = dict(
        source="store",           # "store": a store from `otter-jax data build`; "synthetic": random batches
        store="",                 # store folder (local or gs://)
        tokenizer="",             # HF tokenizer folder, local or gs:// (its special-token ids go into the model)
        eval_store="",            # validation store ("" = the store's --val-fraction split, else training examples)
        max_seq_len=2048, image_size=224, resize="squash", max_media=4, num_frames=32,
        resampler="opencv",       # "opencv" (fast bicubic) or "pil" (upstream's exact kernel): otter_jax/data/images.py
        group_weights="",         # "IMAGE_TEXT=1,VIDEO_TEXT=0.5" ("" = proportional to group sizes)
        seed=0, strict=False, num_threads=4, num_workers=0,
        synthetic_images=2,       # synthetic source: media items per sample (F = 1)
        pack_episodes=1,          # > 1: pack this many episodes into each max_seq_len row (training; data/packing.py)
    )
    c.train = dict(
        steps=1000, global_batch_size=8, grad_accum=1, seed=0,
        train_lm=False, train_vision=False,  # upstream recipe: both frozen
        init_from="",             # "" = random init; an otter-jax checkpoint, or an HF-layout torch Otter folder
        log_every=10, eval_every=0, eval_batches=4,  # eval_every 0 = validate only at the end
        peak_flops=0.0,           # per-device peak FLOP/s for MFU; 0 = look the device up (unknown: no MFU)
        progress=True,            # progress bar on process 0 (when stderr is a terminal)
    )
    c.optim = dict(
        lr=1e-5, schedule="cosine", warmup_steps=-1, warmup_ratio=0.01, end_lr_ratio=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
    )
    c.checkpoint = dict(every=500, keep=3, async_save=True, enabled=True)
    c.distributed = dict(
        mode="auto",              # auto: initialise when a coordinator/cluster/TPU VM is detected; "on"; "off"
        coordinator="",           # host:port of process 0 (GPU clusters); TPU VMs and SLURM need nothing
        num_processes=-1, process_id=-1, local_device_ids="",
    )
    return c


class TrainConfigError(ValueError):
    """A config value the trainer cannot use (names the key)."""


def merge(base: ml_collections.ConfigDict, user: ml_collections.ConfigDict, prefix: str = "config"
          ) -> ml_collections.ConfigDict:
    """`user` over `base`; a key absent from `base` is an error, except inside `model` (a free-form HF dict)."""
    return config_files.merge_strict(base, user, TrainConfigError, prefix, free_form=("config.model",))


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`configs/x.py[:arg]` merged over the defaults, then absl-style `--config.a.b=v` overrides applied."""
    cfg = merge(defaults(), config_files.load(spec))
    return validate(config_files.apply_overrides(cfg, overrides, TrainConfigError))


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise TrainConfigError(f"config.{key}={_get(c, key)!r}: {msg}")

    need(len(c.model) > 0, "model", "no model: the config file must set c.model (an HF-style Otter config dict)")
    need(c.data.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}")
    need(c.optim.schedule in SCHEDULES, "optim.schedule", f"must be one of {SCHEDULES}")
    need(c.train.steps > 0, "train.steps", "must be > 0")
    need(c.train.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(c.data.pack_episodes >= 1, "data.pack_episodes", "must be >= 1")
    need(c.train.global_batch_size % c.train.grad_accum == 0, "train.global_batch_size",
         f"must be a multiple of train.grad_accum={c.train.grad_accum}")
    need(0.0 <= c.optim.warmup_ratio < 1.0, "optim.warmup_ratio", "must be in [0, 1)")
    need(c.optim.lr > 0, "optim.lr", "must be > 0")
    need(c.distributed.mode in ("auto", "on", "off"), "distributed.mode", "must be auto, on or off")
    parse_rules(c.rules)  # raises with the key on bad syntax
    parse_group_weights(c.data.group_weights)
    return c


def _get(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c


def parse_rules(text: str):
    """"batch=data+fsdp,embed=fsdp,vocab=" -> rules tuple; "" -> DEFAULT_RULES."""
    from otter_jax.sharding import DEFAULT_RULES, MESH_AXES

    if not text:
        return DEFAULT_RULES
    rules = []
    for item in text.split(","):
        name, sep, axes = item.partition("=")
        bad = [a for a in axes.split("+") if a and a not in MESH_AXES]
        if not sep or not name or bad:
            raise TrainConfigError(f"config.rules: bad entry {item!r} (want logical=axis[+axis], axes {MESH_AXES})")
        parts = tuple(a for a in axes.split("+") if a)
        rules.append((name.strip(), parts[0] if len(parts) == 1 else (parts or None)))
    return tuple(rules)


def parse_group_weights(text: str) -> tuple[tuple[str, float], ...] | None:
    if not text:
        return None
    out = []
    for item in text.split(","):
        name, sep, w = item.partition("=")
        try:
            out.append((name.strip(), float(w)))
        except ValueError:
            raise TrainConfigError(f"config.data.group_weights: bad entry {item!r} (want GROUP=weight)") from None
        if not sep:
            raise TrainConfigError(f"config.data.group_weights: bad entry {item!r} (want GROUP=weight)")
    return tuple(out)


def model_config(c: ml_collections.ConfigDict, tokens=None):
    """The OtterConfig of `c.model` with the tokenizer's special ids."""
    cfg = config_files.model_config(c, source="config.model")
    return dataclasses.replace(cfg, tokens=tokens) if tokens is not None else cfg
