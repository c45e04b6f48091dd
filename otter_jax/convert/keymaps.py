"""Declarative maps between our parameter paths and the original Otter (HF layout) state-dict keys.

Each module kind has one table `our suffix -> (torch suffix, transform)`. A `Section` places a table at a prefix on
both sides and says which torch layer indices the stacked leading axis of our parameter holds (scanned layers keep
all layers of one kind in one array). `otter_rules(cfg)` expands the sections into one `Rule` per parameter; both
directions of conversion and the strict key/shape check are driven by that single list.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from otter_jax.models.config import OtterConfig


# ------------------------------------------------------------------------------------------------ transforms
class Transform:
    """How one torch tensor becomes one (unstacked) slice of our parameter, and back. Both ways are exact."""

    def to_ours(self, t: np.ndarray) -> np.ndarray:
        return t

    def to_theirs(self, a: np.ndarray) -> np.ndarray:
        return a

    def their_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(our_shape)


class Linear(Transform):
    """torch Linear weight [out, in] <-> kernel [in, out]."""

    def to_ours(self, t):
        return t.T

    def to_theirs(self, a):
        return a.T

    def their_shape(self, s):
        return tuple(reversed(s))


@dataclasses.dataclass(frozen=True)
class FusedLinear(Transform):
    """torch [parts * inner, in] (e.g. to_kv, Wqkv) <-> kernel [in, parts, inner]: parts never share a shard."""

    parts: int

    def to_ours(self, t):
        return t.T.reshape(t.shape[1], self.parts, -1)

    def to_theirs(self, a):
        return a.reshape(a.shape[0], -1).T

    def their_shape(self, s):
        return (s[1] * s[2], s[0])


@dataclasses.dataclass(frozen=True)
class PatchConv(Transform):
    """torch Conv2d weight [D, C, p, p] <-> matmul kernel [C*p*p, D] over (channel, row, col)-flattened patches."""

    channels: int
    patch: int

    def to_ours(self, t):
        return t.reshape(t.shape[0], -1).T

    def to_theirs(self, a):
        return a.T.reshape(a.shape[1], self.channels, self.patch, self.patch)

    def their_shape(self, s):
        return (s[1], self.channels, self.patch, self.patch)


SAME, LINEAR = Transform(), Linear()
KV, QKV = FusedLinear(2), FusedLinear(3)

# ------------------------------------------------------------------------------------------------ tables
Table = dict[str, tuple[str, Transform]]


def _norm(ours: str, theirs: str, bias: bool = True) -> Table:
    t = {f"{ours}.scale": (f"{theirs}.weight", SAME)}
    if bias:
        t[f"{ours}.bias"] = (f"{theirs}.bias", SAME)
    return t


def _linear(ours: str, theirs: str, bias: bool = False, transform: Transform = LINEAR) -> Table:
    t = {f"{ours}.kernel": (f"{theirs}.weight", transform)}
    if bias:
        t[f"{ours}.bias"] = (f"{theirs}.bias", SAME)
    return t


def _merge(*tables: Table) -> Table:
    out: Table = {}
    for t in tables:
        out.update(t)
    return out


def feed_forward_table(ours: str, theirs: str) -> Table:
    """Flamingo FF: ours norm/fc1/fc2 <-> torch Sequential indices 0/1/3 (2 is the GELU)."""
    return _merge(_norm(f"{ours}.norm", f"{theirs}.0"), _linear(f"{ours}.fc1", f"{theirs}.1"),
                  _linear(f"{ours}.fc2", f"{theirs}.3"))


CLIP_LAYER: Table = _merge(
    *(_linear(f"self_attn.{p}", f"self_attn.{p}", bias=True) for p in ("q_proj", "k_proj", "v_proj", "out_proj")),
    _norm("layer_norm1", "layer_norm1"), _norm("layer_norm2", "layer_norm2"),
    _linear("fc1", "mlp.fc1", bias=True), _linear("fc2", "mlp.fc2", bias=True))

PERCEIVER_LAYER: Table = _merge(
    _norm("attn.norm_media", "norm_media"), _norm("attn.norm_latents", "norm_latents"),
    _linear("attn.to_q", "to_q"), _linear("attn.to_kv", "to_kv", transform=KV), _linear("attn.to_out", "to_out"),
    feed_forward_table("feed_forward", "feed_forward"))

GATED_XATTN: Table = _merge(
    {"attn_gate": ("attn_gate", SAME), "ff_gate": ("ff_gate", SAME)},
    _norm("attn.norm", "attn.norm"), _linear("attn.to_q", "attn.to_q"),
    _linear("attn.to_kv", "attn.to_kv", transform=KV), _linear("attn.to_out", "attn.to_out"),
    feed_forward_table("feed_forward", "feed_forward"))

LLAMA_LAYER: Table = _merge(
    _norm("input_layernorm", "input_layernorm", bias=False),
    _norm("post_attention_layernorm", "post_attention_layernorm", bias=False),
    *(_linear(f"self_attn.{p}", f"self_attn.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
    *(_linear(f"mlp.{p}", f"mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")))

MPT_LAYER: Table = _merge(
    _norm("norm_1", "norm_1", bias=False), _norm("norm_2", "norm_2", bias=False),
    _linear("attn.Wqkv", "attn.Wqkv", transform=QKV), _linear("attn.out_proj", "attn.out_proj"),
    _linear("ffn.up_proj", "ffn.up_proj"), _linear("ffn.down_proj", "ffn.down_proj"))

# Per text model: (decoder layer table, torch prefix of the layer list, top-level parameters).
TEXT_MODELS: dict[str, tuple[Table, str, Table]] = {
    "llama": (LLAMA_LAYER, "lang_encoder.model.layers", _merge(
        {"embed_tokens.embedding": ("lang_encoder.model.embed_tokens.weight", SAME)},
        _norm("norm", "lang_encoder.model.norm", bias=False),
        _linear("lm_head", "lang_encoder.lm_head"))),
    "mpt": (MPT_LAYER, "lang_encoder.transformer.blocks", _merge(
        {"embed_tokens.embedding": ("lang_encoder.transformer.wte.weight", SAME)},
        _norm("norm", "lang_encoder.transformer.norm_f", bias=False))),
}

# Buffers that some checkpoints carry and that we recompute (never parameters).
IGNORED_TORCH_SUFFIXES = (".rotary_emb.inv_freq",)


# ------------------------------------------------------------------------------------------------ rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """One of our parameters. `indices` is None for an unstacked parameter (one torch key, `theirs`), else the torch
    layer index held by each slice of our leading axis (`theirs` then has an `{i}` placeholder)."""

    ours: str
    theirs: str
    transform: Transform
    indices: tuple[int, ...] | None = None

    def torch_keys(self) -> list[str]:
        return [self.theirs] if self.indices is None else [self.theirs.format(i=i) for i in self.indices]


def _section(table: Table, ours_prefix: str, theirs_prefix: str, indices: Sequence[int] | None = None) -> list[Rule]:
    idx = None if indices is None else tuple(indices)
    return [Rule(f"{ours_prefix}{o}", f"{theirs_prefix}{t}", tf, idx) for o, (t, tf) in table.items()]


def otter_rules(cfg: OtterConfig) -> list[Rule]:
    """Every parameter of `Otter(cfg)` with its torch key(s) in the Otter HF layout."""
    v = cfg.vision
    vis = "vision_encoder.vision_model."
    rules = _section({
        "patch_embedding.kernel": ("embeddings.patch_embedding.weight", PatchConv(v.num_channels, v.patch_size)),
        "class_embedding": ("embeddings.class_embedding", SAME),
        "position_embedding": ("embeddings.position_embedding.weight", SAME),
        **_norm("pre_layrnorm", "pre_layrnorm"), **_norm("post_layernorm", "post_layernorm")},
        "vision_encoder.", vis)
    rules += _section(CLIP_LAYER, "vision_encoder.layers.", vis + "encoder.layers.{i}.", range(v.num_hidden_layers))

    top = {"latents": ("latents", SAME), **_norm("norm", "norm")}
    if cfg.max_num_frames:
        top["frame_embs"] = ("frame_embs", SAME)
    rules += _section(top, "perceiver.", "perceiver.")
    rules += _section(PERCEIVER_LAYER, "perceiver.layers.", "perceiver.layers.{i}.", range(cfg.perceiver_depth))

    layer_table, layers_prefix, text_top = TEXT_MODELS[cfg.text_model_type]
    if cfg.tied_embeddings:
        text_top = {k: v for k, v in text_top.items() if not k.startswith("lm_head.")}
    rules += _section(text_top, "", "")
    n, groups = cfg.cross_attn_every_n_layers, cfg.num_groups
    for j in range(n):
        rules += _section(layer_table, f"groups.layers.{j}.", layers_prefix + ".{i}.decoder_layer.",
                          [g * n + j for g in range(groups)])
    rules += _section(GATED_XATTN, "groups.gated_cross_attn.", layers_prefix + ".{i}.gated_cross_attn_layer.",
                      [g * n + n - 1 for g in range(groups)])
    for t in range(cfg.num_tail_layers):
        rules += _section(layer_table, f"tail.{t}.", f"{layers_prefix}.{groups * n + t}.decoder_layer.")
    return rules
