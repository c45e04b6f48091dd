"""Model configuration: typed dataclasses parsed from (and written back to) Otter's HF `config.json`.

One parser serves released checkpoints, the golden fixtures and our presets: a preset is just an HF-style dict.
Keys the upstream constructor hard-codes (`vis_dim`, `perceiver_*`, `xattn_*`) are read when present and fall back
to the upstream constants otherwise, so a released `config.json` loads unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

IGNORE_INDEX = -100  # label of a position the loss skips (torch's CrossEntropyLoss default, as upstream)

# Upstream constants (OtterForConditionalGeneration hard-codes these).
UPSTREAM_VIS_DIM = 1024
UPSTREAM_PERCEIVER = dict(depth=6, heads=8, dim_head=64, num_latents=64, ff_mult=4)
UPSTREAM_XATTN = dict(heads=8, dim_head=64, ff_mult=4)

SUPPORTED_TEXT_MODELS = ("llama", "mpt")


class ConfigError(ValueError):
    """A config that this implementation cannot build (names the offending key)."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # CLIP's image-embedding projection [hidden_size, proj_dim] (open_clip `proj`, HF `visual_projection`): kept so
    # OpenFlamingo / CLIP weights round-trip; Otter's forward never uses it. None = no projection (HF CLIPVisionModel).
    proj_dim: int | None = None

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    head_dim: int | None = None

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class MptConfig:
    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    expansion_ratio: int = 4
    alibi_bias_max: int = 8
    layer_norm_eps: float = 1e-5
    no_bias: bool = True

    tie_word_embeddings: bool = True  # MPT always ties its output embedding to `wte`

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def dim_head(self) -> int:
        return self.d_model // self.n_heads


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Token ids the model and the data pipeline agree on (the tokenizer's, not stored in upstream configs)."""

    media: int  # <image>
    endofchunk: int  # <|endofchunk|>
    answer: int | None = None  # <answer> (Otter's tokenizers; OpenFlamingo's have none)
    pad: int | None = None
    bos: int | None = None
    eos: int | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the model runs, as opposed to what it computes: dtypes, rematerialisation, layer scanning.

    `remat` names a `jax.checkpoint_policies` entry ("nothing_saveable", "dots_saveable", ...), "full" (= save
    nothing), or "none" (no rematerialisation); it applies to each decoder layer and gated block on its own (their
    inputs are what the backward pass keeps) and to each vision / perceiver layer.
    `scan_layers`: repeated layers (vision, perceiver, decoder groups) hold their parameters stacked on a leading
    axis and run under `jax.lax.scan` (compile time flat in depth; the layout of checkpoints and conversion). False
    keeps one module per layer and runs them one after another: XLA:CPU copies every layer's weights out of stacked
    arrays before each matmul, so CPU training is faster unstacked (`otter_jax.models.layout` converts between both).

    `frozen_param_dtype`: storage dtype of the parameters training does not update ("" = param_dtype); bfloat16
    halves a frozen 7B tower's memory and its FSDP all-gathers, while trainable parameters keep an fp32 master.
    `attention`: "dense" (the reference computation), "chunked" (blocks of `attention_chunk` queries, no
    [B, H, L, L] array), "fused" (`jax.nn.dot_product_attention`: cuDNN on GPU) or "splash" (the Pallas
    splash-attention kernel when compiling for TPU, "chunked" elsewhere; no ALiBi, so not MPT); see
    `layers.self_attention`.
    `scan_group_layers`: in training and scoring, the decoder layers before each group's gated block run under one
    `lax.scan` instead of inlined one after another: the compiled program holds one layer body instead of
    n - 1 copies (a shorter TPU compile at 7B); same arithmetic, same parameter layout.
    `offload_layer_inputs`: in training, the inputs of every decoder layer and gated block (what per-layer remat
    keeps for the backward pass: L x d per sequence each, 640 MiB per 2048-token sequence at 7B) are kept in
    host memory between the forward and the backward pass instead of HBM (TPU host offload; needs remat). It
    overrides `scan_group_layers` (XLA:TPU cannot offload the residuals of the nested scan).
    `loss_chunk`: > 0 computes the output head and cross-entropy `loss_chunk` positions at a time, rematerialised,
    so no [B, L, V] float32 logits exist in training (0 = whole logits, as the forward pass returns them).
    `shard_activations`: pin [B, L, d] activations to the batch axes at block boundaries in the jitted train/eval
    steps (`sharding.constrain`); off leaves their layout to XLA's propagation.
    `media_budget`: > 0 makes the whole-sequence forward pass (training, evaluation) encode only the media slots the
    text refers to, at most ceil(media_budget * rows) per batch (per batch shard under a mesh), gathered into one
    static-shape batch; padded slots get zero latents, which no token attends to. A batch with more real media
    than that encodes every slot (same result, no saving). 0 encodes every slot (generation always does).
    See `Otter.encode_media`.
    """

    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: str = "none"
    scan_layers: bool = True
    frozen_param_dtype: str = ""
    attention: str = "dense"
    attention_chunk: int = 512
    scan_group_layers: bool = False
    offload_layer_inputs: bool = False
    loss_chunk: int = 0
    shard_activations: bool = True
    media_budget: float = 0.0  # media items encoded per batch row on average (0 = every slot)


@dataclasses.dataclass(frozen=True)
class OtterConfig:
    """Everything that determines the parameter shapes and the forward computation."""

    vision: VisionConfig
    text: LlamaConfig | MptConfig
    text_model_type: str  # "llama" | "mpt"
    cross_attn_every_n_layers: int = 4
    vis_dim: int = UPSTREAM_VIS_DIM
    perceiver_depth: int = UPSTREAM_PERCEIVER["depth"]
    perceiver_heads: int = UPSTREAM_PERCEIVER["heads"]
    perceiver_dim_head: int = UPSTREAM_PERCEIVER["dim_head"]
    perceiver_num_latents: int = UPSTREAM_PERCEIVER["num_latents"]
    perceiver_ff_mult: int = UPSTREAM_PERCEIVER["ff_mult"]
    xattn_heads: int = UPSTREAM_XATTN["heads"]
    xattn_dim_head: int = UPSTREAM_XATTN["dim_head"]
    xattn_ff_mult: int = UPSTREAM_XATTN["ff_mult"]
    max_num_frames: int | None = None
    tokens: SpecialTokens | None = None
    # The HF dict this config came from; written back unchanged by the exporter so upstream code can reload it.
    hf_dict: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return self.text.num_hidden_layers

    @property
    def num_groups(self) -> int:
        """Scanned groups: each is `cross_attn_every_n_layers` decoder layers with one gated block before the last."""
        return self.num_layers // self.cross_attn_every_n_layers

    @property
    def num_tail_layers(self) -> int:
        """Decoder layers after the last group; by the placement rule none of them has a cross-attention block."""
        return self.num_layers % self.cross_attn_every_n_layers

    @property
    def xattn_layer_indices(self) -> list[int]:
        n = self.cross_attn_every_n_layers
        return [i for i in range(self.num_layers) if (i + 1) % n == 0]

    @property
    def tied_embeddings(self) -> bool:
        return self.text_model_type == "mpt" or bool(self.text.tie_word_embeddings)

    # ----------------------------------------------------------------------------------------- HF dict <-> config
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config") -> "OtterConfig":
        """Parse an Otter `config.json` dict. `source` names the file in error messages."""
        for key in ("vision_config", "text_config"):
            if key not in d:
                raise ConfigError(f"{source}: missing key {key!r} (not an Otter config)")
        vd, td = d["vision_config"], d["text_config"]
        vision = VisionConfig(**_pick(vd, VisionConfig, source, "vision_config"))
        mtype = td.get("model_type")
        if mtype == "llama":
            fields = _pick(td, LlamaConfig, source, "text_config")
            fields.setdefault("num_key_value_heads", td.get("num_attention_heads"))
            text: LlamaConfig | MptConfig = LlamaConfig(**fields)
            if text.hidden_act != "silu":
                raise ConfigError(f"{source}: text_config.hidden_act={text.hidden_act!r}; only 'silu' LLaMA is supported")
            if td.get("rope_scaling"):
                raise ConfigError(f"{source}: text_config.rope_scaling={td['rope_scaling']!r} is not supported")
        elif mtype == "mpt":
            attn = td.get("attn_config", {}) or {}
            if not attn.get("alibi", False):
                raise ConfigError(f"{source}: text_config.attn_config.alibi must be true (learned positions unsupported)")
            for key, want in (("qk_ln", False), ("clip_qkv", None), ("softmax_scale", None), ("prefix_lm", False)):
                if attn.get(key, want) != want:
                    raise ConfigError(f"{source}: text_config.attn_config.{key}={attn[key]!r} is not supported")
            if td.get("logit_scale") is not None:
                raise ConfigError(f"{source}: text_config.logit_scale={td['logit_scale']!r} is not supported")
            if not td.get("no_bias", True):
                raise ConfigError(f"{source}: text_config.no_bias=false (MPT with biases) is not supported")
            text = MptConfig(vocab_size=td["vocab_size"], d_model=td["d_model"], n_heads=td["n_heads"],
                             n_layers=td["n_layers"], expansion_ratio=td.get("expansion_ratio", 4),
                             alibi_bias_max=attn.get("alibi_bias_max", 8),
                             layer_norm_eps=td.get("layer_norm_eps", 1e-5))
        else:
            raise ConfigError(f"{source}: text_config.model_type={mtype!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_TEXT_MODELS)})")
        extra = {k: d[k] for k in ("cross_attn_every_n_layers", "vis_dim", "perceiver_depth", "perceiver_heads",
                                   "perceiver_dim_head", "perceiver_num_latents", "perceiver_ff_mult", "xattn_heads",
                                   "xattn_dim_head", "xattn_ff_mult", "max_num_frames") if d.get(k) is not None}
        cfg = cls(vision=vision, text=text, text_model_type=mtype, hf_dict=copy.deepcopy(d), **extra)
        if cfg.vis_dim != vision.hidden_size:
            raise ConfigError(f"{source}: vis_dim={cfg.vis_dim} differs from vision_config.hidden_size="
                              f"{vision.hidden_size}")
        if cfg.cross_attn_every_n_layers < 1:
            raise ConfigError(f"{source}: cross_attn_every_n_layers must be >= 1")
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF config dict: the original one when we have it, else a minimal Otter config built from fields."""
        if self.hf_dict is not None:
            return copy.deepcopy(self.hf_dict)
        vision = {"model_type": "clip_vision_model", **dataclasses.asdict(self.vision)}
        if self.text_model_type == "llama":
            text = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **dataclasses.asdict(self.text)}
            if text["head_dim"] is None:
                del text["head_dim"]
        else:
            t = self.text
            text = {"model_type": "mpt", "architectures": ["MPTForCausalLM"], "vocab_size": t.vocab_size,
                    "d_model": t.d_model, "n_heads": t.n_heads, "n_layers": t.n_layers,
                    "expansion_ratio": t.expansion_ratio, "no_bias": True, "norm_type": "low_precision_layernorm",
                    "layer_norm_eps": t.layer_norm_eps, "logit_scale": None, "tie_word_embeddings": True,
                    "attn_config": {"alibi": True, "alibi_bias_max": t.alibi_bias_max, "attn_impl": "torch"}}
        out = {"model_type": "otter", "vision_config": vision, "text_config": text,
               "cross_attn_every_n_layers": self.cross_attn_every_n_layers, "tie_word_embeddings": False,
               "only_attend_previous": True}
        for f in ("vis_dim", "perceiver_depth", "perceiver_heads", "perceiver_dim_head", "perceiver_num_latents",
                  "perceiver_ff_mult", "xattn_heads", "xattn_dim_head", "xattn_ff_mult", "max_num_frames"):
            out[f] = getattr(self, f)
        return out


def _pick(d: dict[str, Any], cls: type, source: str, section: str) -> dict[str, Any]:
    """The fields of `cls` present in `d`; a required field that is missing is an error naming the key."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in d and d[f.name] is not None:
            out[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.name != "num_key_value_heads":
            raise ConfigError(f"{source}: missing key {section}.{f.name}")
    return out
