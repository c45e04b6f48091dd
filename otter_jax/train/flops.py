"""Model FLOPs of one train step, counted from the config and the batch shape, and device peak FLOP/s, for MFU.

Why analytic: XLA's cost analysis counts a scanned layer once, not once per iteration, and includes
rematerialisation; MFU is defined on the model's own FLOPs (a matmul of m x k by k x n = 2mkn). Backward costs follow
what is trained: a trainable part costs 3x its forward (input and weight gradients), a frozen part that gradients
must flow through (the LM under the cross-attention blocks and the embeddings) 2x, and the frozen vision tower 1x
(nothing upstream of it learns).
"""
from __future__ import annotations

import dataclasses

from otter_jax.models.config import LlamaConfig, OtterConfig

# Dense per-chip peaks (FLOP/s) for bf16 matmuls; float32 on GPUs runs at the TF32 rate (half). Public spec sheets.
PEAK_BF16 = (
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("TPU v3", 123e12), ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("L4", 121e12), ("A10G", 70e12), ("L40S", 362e12), ("B200", 2250e12),
)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    vision: float
    perceiver: float
    language: float  # decoder layers
    head: float  # projection to the vocabulary (trainable: lm_head, or the tied input embedding)
    cross_attention: float

    @property
    def total(self) -> float:
        return self.vision + self.perceiver + self.language + self.head + self.cross_attention


def forward_flops(cfg: OtterConfig, batch: int, seq_len: int, media: int, frames: int) -> StepFlops:
    """Forward FLOPs for `batch` samples of `seq_len` tokens with `media` items of `frames` frames each."""
    v = cfg.vision
    n_img = batch * media * frames
    tok_v = v.num_patches + 1
    vision_layer = 2 * tok_v * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size) \
        + 4 * tok_v ** 2 * v.hidden_size
    patch_embed = 2 * v.num_patches * v.num_channels * v.patch_size ** 2 * v.hidden_size
    vision = n_img * (v.num_hidden_layers * vision_layer + patch_embed)

    d, n_lat = cfg.vis_dim, cfg.perceiver_num_latents
    inner = cfg.perceiver_heads * cfg.perceiver_dim_head
    n_x = frames * v.num_patches
    per_layer = (2 * n_lat * d * inner + 2 * (n_x + n_lat) * d * 2 * inner + 4 * n_lat * (n_x + n_lat) * inner
                 + 2 * n_lat * inner * d + 4 * n_lat * d * cfg.perceiver_ff_mult * d)
    perceiver = batch * media * cfg.perceiver_depth * per_layer

    t = cfg.text
    h = t.hidden_size
    if isinstance(t, LlamaConfig):
        dh = t.dim_head
        layer_params = h * dh * (2 * t.num_attention_heads + 2 * t.num_key_value_heads) + 3 * h * t.intermediate_size
        att_width = t.num_attention_heads * dh
    else:
        layer_params = 4 * h * h + 2 * h * t.expansion_ratio * h
        att_width = h
    tokens = batch * seq_len
    language = cfg.num_layers * (2 * tokens * layer_params + 4 * batch * seq_len ** 2 * att_width)
    head = 2 * tokens * h * t.vocab_size

    xi = cfg.xattn_heads * cfg.xattn_dim_head
    n_media_tok = media * n_lat
    block = (2 * tokens * (2 * h * xi + 2 * h * cfg.xattn_ff_mult * h)  # to_q, to_out, feed-forward
             + 2 * batch * n_media_tok * d * 2 * xi  # to_kv on the media latents
             + 4 * tokens * n_media_tok * xi)  # scores and weighted sum
    cross = cfg.num_groups * block
    return StepFlops(float(vision), float(perceiver), float(language), float(head), float(cross))


def train_flops_parts(cfg: OtterConfig, batch: int, seq_len: int, media: int, frames: int, train_lm: bool = False,
                      train_vision: bool = False) -> tuple[float, float]:
    """(media part: vision + perceiver, text part: decoder + cross-attention + head) of one train step's FLOPs.
    The text part is what padding inflates: metrics scale it by the real tokens of each batch."""
    f = forward_flops(cfg, batch, seq_len, media, frames)
    return ((3 if train_vision else 1) * f.vision + 3 * f.perceiver,
            3 * f.cross_attention + 3 * f.head + (3 if train_lm else 2) * f.language)


def train_flops(cfg: OtterConfig, batch: int, seq_len: int, media: int, frames: int, train_lm: bool = False,
                train_vision: bool = False) -> float:
    return sum(train_flops_parts(cfg, batch, seq_len, media, frames, train_lm, train_vision))


def device_peak_flops(device, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of one device, or None when unknown (e.g. CPUs)."""
    kind = getattr(device, "device_kind", "") or ""
    for name, peak in PEAK_BF16:
        if name.lower() in kind.lower():
            gpu = getattr(device, "platform", "") == "gpu"
            return peak / 2 if gpu and dtype == "float32" else peak
    return None
