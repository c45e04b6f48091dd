"""MPT decoder layer (MPT-7B choices): fused Wqkv, ALiBi, bias-free LayerNorms, exact-GELU MLP."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from otter_jax.models import layers as L
from otter_jax.models.config import MptConfig, Policy


class AttentionContext(NamedTuple):
    mask: jax.Array | L.Visibility  # bool [B, Lq, Lk] (cached decoding), or per-token visibility (whole sequences)
    bias: jax.Array | None  # float32 [B, H, Lq, Lk] ALiBi with a dense mask; None with a Visibility (built per block)
    slopes: jax.Array | None = None  # [H] ALiBi slopes, with a Visibility
    cache_index: jax.Array | None = None


def alibi_slopes(n_heads: int, bias_max: int = 8) -> np.ndarray:
    """MPT's slopes: geometric for the next power of two, then (for other head counts) the odd-indexed slopes
    followed by the even-indexed ones, truncated to n_heads."""
    n_pow2 = 2 ** math.ceil(math.log2(n_heads))
    slopes = 1.0 / np.power(2.0, np.arange(1, n_pow2 + 1, dtype=np.float32) * (bias_max / n_pow2))
    if n_pow2 != n_heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes.astype(np.float32)


def attention_context(cfg: MptConfig, mask: jax.Array | L.Visibility, positions: jax.Array,
                      cache_index: jax.Array | None = None) -> AttentionContext:
    """ALiBi as slope * (key_pos - query_pos): MPT's `slope * (j - (L-1))` shifted per query row, which the softmax
    ignores, and the form that still holds when keys come from a cache. Positions are sequence slots (padding
    included, as MPT counts them); with a cache the keys are the cache slots 0..Lk-1. With a `Visibility` (whole
    sequences) the distances come from its slots, block by block, inside the attention."""
    slopes = jnp.asarray(alibi_slopes(cfg.n_heads, cfg.alibi_bias_max))
    if isinstance(mask, L.Visibility):
        return AttentionContext(mask, None, slopes, cache_index)
    key_positions = positions if cache_index is None else jnp.arange(mask.shape[-1], dtype=positions.dtype)[None]
    rel = (key_positions[:, None, :] - positions[:, :, None]).astype(jnp.float32)
    return AttentionContext(mask, slopes[None, :, None, None] * rel[:, None], None, cache_index)


def generation_positions(attention_mask: jax.Array) -> jax.Array:
    """ALiBi distances count every slot, padding included."""
    return jnp.broadcast_to(jnp.arange(attention_mask.shape[-1], dtype=jnp.int32), attention_mask.shape)


class MptAttention(nnx.Module):
    def __init__(self, cfg: MptConfig, policy: Policy, rngs: nnx.Rngs):
        d = cfg.d_model
        self.heads, self.dim_head = cfg.n_heads, cfg.dim_head
        self.Wqkv = L.dense(d, (3, d), ("embed", None, "heads"), policy, rngs)
        self.out_proj = L.dense(d, d, ("heads", "embed"), policy, rngs)
        self.impl, self.chunk = policy.attention, policy.attention_chunk

    def __call__(self, x: jax.Array, ctx: AttentionContext, kv: L.KVCache | None = None):
        b, l, d = x.shape
        qkv = self.Wqkv(x)  # [B, L, 3, d]
        q, k, v = (qkv[:, :, i].reshape(b, l, self.heads, self.dim_head) for i in range(3))
        k, v, kv = L.update_cache(kv, k, v, ctx.cache_index)
        if isinstance(ctx.mask, L.Visibility):
            out = L.self_attention(q, k, v, ctx.mask, scale=self.dim_head ** -0.5, slopes=ctx.slopes,
                                   impl=self.impl, chunk=self.chunk)
        else:
            out = L.attend(q, k, v, scale=self.dim_head ** -0.5, mask=ctx.mask, bias=ctx.bias)
        return self.out_proj(out.reshape(b, l, d)), kv


class MptMLP(nnx.Module):
    def __init__(self, cfg: MptConfig, policy: Policy, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_model * cfg.expansion_ratio
        self.up_proj = L.dense(d, f, ("embed", "mlp"), policy, rngs)
        self.down_proj = L.dense(f, d, ("mlp", "embed"), policy, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(L.gelu_exact(self.up_proj(x)))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: MptConfig, policy: Policy, rngs: nnx.Rngs):
        self.norm_1 = L.layer_norm(cfg.d_model, cfg.layer_norm_eps, policy, rngs, use_bias=False)
        self.attn = MptAttention(cfg, policy, rngs)
        self.norm_2 = L.layer_norm(cfg.d_model, cfg.layer_norm_eps, policy, rngs, use_bias=False)
        self.ffn = MptMLP(cfg, policy, rngs)

    def __call__(self, x: jax.Array, ctx: AttentionContext, kv: L.KVCache | None = None):
        h, kv = self.attn(self.norm_1(x), ctx, kv)
        x = x + h
        return x + self.ffn(self.norm_2(x)), kv


def final_norm(cfg: MptConfig, policy: Policy, rngs: nnx.Rngs) -> nnx.Module:
    return L.layer_norm(cfg.d_model, cfg.layer_norm_eps, policy, rngs, use_bias=False)
