"""LLaMA decoder layer (HF `LlamaDecoderLayer` computation): RMSNorm, RoPE (rotate-half layout), GQA, SwiGLU."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.models import layers as L
from otter_jax.models.config import LlamaConfig, Policy


class AttentionContext(NamedTuple):
    """Per-forward inputs every layer shares; computed once outside the layer scan."""

    # bool [B, Lq, Lk], True = may attend (Lk = cache length when decoding with a cache); or, for whole sequences,
    # per-token visibility (layers.Visibility) that the attention turns into masks block by block
    mask: jax.Array | L.Visibility
    cos: jax.Array  # [B, Lq, dim_head], at the queries' positions
    sin: jax.Array
    cache_index: jax.Array | None = None  # where the queries' keys/values are written into the cache


def rope_tables(positions: jax.Array, dim_head: int, theta: float) -> tuple[jax.Array, jax.Array]:
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim_head, 2, dtype=jnp.float32) / dim_head))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, H, D]; HF's rotate-half convention, so HF q/k weights need no permutation."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def attention_context(cfg: LlamaConfig, mask: jax.Array, positions: jax.Array,
                      cache_index: jax.Array | None = None) -> AttentionContext:
    """`positions` are the queries' RoPE positions (keys are rotated before they are cached)."""
    cos, sin = rope_tables(positions, cfg.dim_head, cfg.rope_theta)
    return AttentionContext(mask, cos, sin, cache_index)


def generation_positions(attention_mask: jax.Array) -> jax.Array:
    """HF's positions for (left-)padded prompts: count of real tokens before each one; pads get 1."""
    pos = jnp.cumsum(attention_mask, axis=-1) - 1
    return jnp.where(attention_mask == 0, 1, pos)


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, policy: Policy, rngs: nnx.Rngs):
        d, h, kv, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_head
        self.heads, self.kv_heads, self.dim_head = h, kv, dh
        self.q_proj = L.dense(d, h * dh, ("embed", "heads"), policy, rngs)
        self.k_proj = L.dense(d, kv * dh, ("embed", "kv_heads"), policy, rngs)
        self.v_proj = L.dense(d, kv * dh, ("embed", "kv_heads"), policy, rngs)
        self.o_proj = L.dense(h * dh, d, ("heads", "embed"), policy, rngs)
        self.impl, self.chunk = policy.attention, policy.attention_chunk

    def __call__(self, x: jax.Array, ctx: AttentionContext, kv: L.KVCache | None = None):
        b, l, _ = x.shape
        q = apply_rope(self.q_proj(x).reshape(b, l, self.heads, self.dim_head), ctx.cos, ctx.sin)
        k = apply_rope(self.k_proj(x).reshape(b, l, self.kv_heads, self.dim_head), ctx.cos, ctx.sin)
        v = self.v_proj(x).reshape(b, l, self.kv_heads, self.dim_head)
        k, v, kv = L.update_cache(kv, k, v, ctx.cache_index)
        if isinstance(ctx.mask, L.Visibility):
            out = L.self_attention(q, k, v, ctx.mask, scale=self.dim_head ** -0.5, impl=self.impl, chunk=self.chunk)
        else:
            out = L.attend(q, k, v, scale=self.dim_head ** -0.5, mask=ctx.mask)
        return self.o_proj(out.reshape(b, l, -1)), kv


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, policy: Policy, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = L.dense(d, f, ("embed", "mlp"), policy, rngs)
        self.up_proj = L.dense(d, f, ("embed", "mlp"), policy, rngs)
        self.down_proj = L.dense(f, d, ("mlp", "embed"), policy, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, policy: Policy, rngs: nnx.Rngs):
        self.input_layernorm = L.rms_norm(cfg.hidden_size, cfg.rms_norm_eps, policy, rngs)
        self.self_attn = LlamaAttention(cfg, policy, rngs)
        self.post_attention_layernorm = L.rms_norm(cfg.hidden_size, cfg.rms_norm_eps, policy, rngs)
        self.mlp = LlamaMLP(cfg, policy, rngs)

    def __call__(self, x: jax.Array, ctx: AttentionContext, kv: L.KVCache | None = None):
        h, kv = self.self_attn(self.input_layernorm(x), ctx, kv)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def final_norm(cfg: LlamaConfig, policy: Policy, rngs: nnx.Rngs) -> nnx.Module:
    return L.rms_norm(cfg.hidden_size, cfg.rms_norm_eps, policy, rngs)
