"""Declarative maps between our parameter paths and the original Otter (HF layout) state-dict keys.

Each module kind has one table `our suffix -> (torch suffix, transform)`. A `Section` places a table at a prefix on
both sides and says which torch layer indices the stacked leading axis of our parameter holds (scanned layers keep
all layers of one kind in one array). `otter_rules(cfg)` expands the sections into one `Rule` per parameter; both
directions of conversion and the strict key/shape check are driven by that single list.

The same tables, placed at other prefixes, describe OpenFlamingo's `Flamingo.state_dict()` (open_clip vision tower,
`perceiver.layers.{i}.0/1`, `ff.*`), a plain HF LM directory and an HF CLIP vision directory
(`openflamingo_rules`, `hf_lm_rules`, `hf_clip_vision_rules`, `open_clip_vision_rules`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from otter_jax.models.config import OtterConfig, VisionConfig


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

# Per text model: (decoder layer table, prefix of the layer list, top-level parameters), relative to the LM.
TEXT_MODELS: dict[str, tuple[Table, str, Table]] = {
    "llama": (LLAMA_LAYER, "model.layers", _merge(
        {"embed_tokens.embedding": ("model.embed_tokens.weight", SAME)},
        _norm("norm", "model.norm", bias=False),
        _linear("lm_head", "lm_head"))),
    "mpt": (MPT_LAYER, "transformer.blocks", _merge(
        {"embed_tokens.embedding": ("transformer.wte.weight", SAME)},
        _norm("norm", "transformer.norm_f", bias=False))),
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


def hf_clip_vision_rules(v: VisionConfig, prefix: str, proj_prefix: str) -> list[Rule]:
    """HF `CLIPVisionModel` naming under `prefix` (e.g. "vision_encoder.vision_model."); the optional projection is
    `{proj_prefix}visual_projection.weight`, where `CLIPVisionModelWithProjection` / `CLIPModel` keep it."""
    rules = _section({
        "patch_embedding.kernel": ("embeddings.patch_embedding.weight", PatchConv(v.num_channels, v.patch_size)),
        "class_embedding": ("embeddings.class_embedding", SAME),
        "position_embedding": ("embeddings.position_embedding.weight", SAME),
        **_norm("pre_layrnorm", "pre_layrnorm"), **_norm("post_layernorm", "post_layernorm")},
        "vision_encoder.", prefix)
    rules += _section(CLIP_LAYER, "vision_encoder.layers.", prefix + "encoder.layers.{i}.", range(v.num_hidden_layers))
    if v.proj_dim:
        rules += _section(_linear("visual_projection", "visual_projection"), "vision_encoder.", proj_prefix)
    return rules


def perceiver_rules(cfg: OtterConfig, layer_table: Table, prefix: str = "perceiver.") -> list[Rule]:
    top = {"latents": ("latents", SAME), **_norm("norm", "norm")}
    if cfg.max_num_frames:
        top["frame_embs"] = ("frame_embs", SAME)
    return (_section(top, "perceiver.", prefix)
            + _section(layer_table, "perceiver.layers.", prefix + "layers.{i}.", range(cfg.perceiver_depth)))


def text_rules(cfg: OtterConfig, prefix: str, xattn_table: Table | None) -> list[Rule]:
    """The language model under `prefix`. With `xattn_table`, decoder layers are wrapped as in Otter/OpenFlamingo
    (`{layers}.{i}.decoder_layer.*` + `{layers}.{i}.gated_cross_attn_layer.*`); without, it is the plain HF LM
    (`{layers}.{i}.*`) and the gated blocks are not covered."""
    layer_table, layers, top = TEXT_MODELS[cfg.text_model_type]
    if cfg.tied_embeddings:
        top = {k: v for k, v in top.items() if not k.startswith("lm_head.")}
    rules = _section(top, "", prefix)
    wrap = ".decoder_layer." if xattn_table is not None else "."
    n, groups = cfg.cross_attn_every_n_layers, cfg.num_groups
    for j in range(n):
        rules += _section(layer_table, f"groups.layers.{j}.", prefix + layers + ".{i}" + wrap,
                          [g * n + j for g in range(groups)])
    if xattn_table is not None:
        rules += _section(xattn_table, "groups.gated_cross_attn.", prefix + layers + ".{i}.gated_cross_attn_layer.",
                          [g * n + n - 1 for g in range(groups)])
    for t in range(cfg.num_tail_layers):
        rules += _section(layer_table, f"tail.{t}.", f"{prefix}{layers}.{groups * n + t}{wrap}")
    return rules


def otter_rules(cfg: OtterConfig) -> list[Rule]:
    """Every parameter of `Otter(cfg)` with its torch key(s) in the Otter HF layout."""
    return (hf_clip_vision_rules(cfg.vision, "vision_encoder.vision_model.", "vision_encoder.")
            + perceiver_rules(cfg, PERCEIVER_LAYER) + text_rules(cfg, "lang_encoder.", GATED_XATTN))


# ------------------------------------------------------------------------------------------------ OpenFlamingo
@dataclasses.dataclass(frozen=True)
class RowPart(Transform):
    """Row block `part` of `parts` equal blocks of a fused torch tensor (open_clip's `in_proj_weight` [3W, W] and
    `in_proj_bias` [3W], rows q, k, v) <-> one of our separate q/k/v parameters. Export concatenates the blocks."""

    part: int
    parts: int
    inner: Transform = SAME

    def to_ours(self, t):
        n = t.shape[0] // self.parts
        return self.inner.to_ours(t[self.part * n:(self.part + 1) * n])

    def to_theirs(self, a):
        return self.inner.to_theirs(a)

    def their_shape(self, s):
        s = self.inner.their_shape(s)
        return (s[0] * self.parts,) + tuple(s[1:])


def _in_proj(ours: str, part: int) -> Table:
    return {f"self_attn.{ours}.kernel": ("attn.in_proj_weight", RowPart(part, 3, LINEAR)),
            f"self_attn.{ours}.bias": ("attn.in_proj_bias", RowPart(part, 3, SAME))}


# open_clip `VisionTransformer` resblock <-> our HF-CLIP-shaped layer.
OPEN_CLIP_LAYER: Table = _merge(
    _in_proj("q_proj", 0), _in_proj("k_proj", 1), _in_proj("v_proj", 2),
    _linear("self_attn.out_proj", "attn.out_proj", bias=True),
    _norm("layer_norm1", "ln_1"), _norm("layer_norm2", "ln_2"),
    _linear("fc1", "mlp.c_fc", bias=True), _linear("fc2", "mlp.c_proj", bias=True))

# OpenFlamingo's perceiver layer is ModuleList([PerceiverAttention, FeedForward Sequential]): `.0.*` and `.1.{0,1,3}`.
OF_PERCEIVER_LAYER: Table = _merge(
    _norm("attn.norm_media", "0.norm_media"), _norm("attn.norm_latents", "0.norm_latents"),
    _linear("attn.to_q", "0.to_q"), _linear("attn.to_kv", "0.to_kv", transform=KV), _linear("attn.to_out", "0.to_out"),
    feed_forward_table("feed_forward", "1"))

OF_GATED_XATTN: Table = {o: (t.replace("feed_forward.", "ff.", 1), tf) for o, (t, tf) in GATED_XATTN.items()}


def open_clip_vision_rules(v: VisionConfig, prefix: str) -> list[Rule]:
    """open_clip `VisionTransformer` naming under `prefix`; `proj` [W, E] multiplies from the right (= our kernel)."""
    rules = _section({
        "patch_embedding.kernel": ("conv1.weight", PatchConv(v.num_channels, v.patch_size)),
        "class_embedding": ("class_embedding", SAME),
        "position_embedding": ("positional_embedding", SAME),
        **_norm("pre_layrnorm", "ln_pre"), **_norm("post_layernorm", "ln_post")},
        "vision_encoder.", prefix)
    if v.proj_dim:
        rules += _section({"visual_projection.kernel": ("proj", SAME)}, "vision_encoder.", prefix)
    return rules + _section(OPEN_CLIP_LAYER, "vision_encoder.layers.", prefix + "transformer.resblocks.{i}.",
                            range(v.num_hidden_layers))


def openflamingo_rules(cfg: OtterConfig) -> list[Rule]:
    """Every parameter of `Otter(cfg)` with its canonical key(s) in OpenFlamingo's `Flamingo.state_dict()`."""
    return (open_clip_vision_rules(cfg.vision, "vision_encoder.") + perceiver_rules(cfg, OF_PERCEIVER_LAYER)
            + text_rules(cfg, "lang_encoder.", OF_GATED_XATTN))


def openflamingo_aliases(cfg: OtterConfig) -> dict[str, str]:
    """alias key -> canonical key for the tensors `Flamingo.state_dict()` lists twice (same module or tied weight):
    `old_decoder_blocks.{i}` = `<layers>.{i}.decoder_layer`, `gated_cross_attn_layers.{i}` =
    `<layers>.{i}.gated_cross_attn_layer`, and MPT's `lm_head.weight` = `transformer.wte.weight`."""
    _, layers, _ = TEXT_MODELS[cfg.text_model_type]
    wrapped = f"lang_encoder.{layers}."
    out = {}
    for rule in openflamingo_rules(cfg):
        for key in rule.torch_keys():
            if not key.startswith(wrapped):
                continue
            i, rest = key[len(wrapped):].split(".", 1)
            for inner, alias in (("decoder_layer.", "old_decoder_blocks"), ("gated_cross_attn_layer.",
                                                                             "gated_cross_attn_layers")):
                if rest.startswith(inner):
                    out[f"lang_encoder.{alias}.{i}.{rest[len(inner):]}"] = key
    if cfg.tied_embeddings:
        embed = TEXT_MODELS[cfg.text_model_type][2]["embed_tokens.embedding"][0]
        out["lang_encoder.lm_head.weight"] = f"lang_encoder.{embed}"
    return out


def hf_lm_rules(cfg: OtterConfig) -> list[Rule]:
    """The base language model as `save_pretrained` writes it (LlamaForCausalLM / MptForCausalLM naming)."""
    return text_rules(cfg, "", None)
