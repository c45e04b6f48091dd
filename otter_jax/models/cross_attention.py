"""Gated cross-attention from text to perceiver latents, with Flamingo's "immediate media" mask.

A text token at text_time j (the number of `<image>` tokens up to and including it) sees only the latents of media
j. Tokens before any image (text_time 0) get a zero attention output; masked logits are filled with
-finfo(float32).max, so a token whose text_time exceeds the number of media attends uniformly to all latents, as the
reference does. During cached generation the caller passes text_time continued from the prompt.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.models import layers as L
from otter_jax.models.config import OtterConfig, Policy

XATTN_FILL = -float(jnp.finfo(jnp.float32).max)


def text_time(input_ids: jax.Array, media_token_id: int, offset: jax.Array | int = 0,
              segment_ids: jax.Array | None = None) -> jax.Array:
    """Cumulative count of `<image>` tokens (the token counts itself), plus `offset` media seen before.

    Packed rows (`segment_ids`): the count runs over the row, as the row's media are its episodes' media in order,
    but a token whose own episode has shown no `<image>` yet gets 0 (no media), not the previous episode's last."""
    is_media = (input_ids == media_token_id).astype(jnp.int32)
    count = jnp.cumsum(is_media, axis=-1, dtype=jnp.int32)
    if segment_ids is not None:
        starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                                  segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
        before = jax.lax.cummax(jnp.where(starts, count - is_media, 0), axis=1)  # media of earlier episodes
        count = jnp.where(count - before == 0, 0, count)
    return count + jnp.asarray(offset, jnp.int32)[..., None]


class MaskedCrossAttention(nnx.Module):
    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int, policy: Policy, rngs: nnx.Rngs):
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.norm = L.layer_norm(dim, 1e-5, policy, rngs)
        self.to_q = L.dense(dim, inner, ("embed", "heads"), policy, rngs)
        self.to_kv = L.dense(dim_visual, (2, inner), ("embed", None, "heads"), policy, rngs)
        self.to_out = L.dense(inner, dim, ("heads", "embed"), policy, rngs)

    def project_media(self, media: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values of the media latents, [B, T*n, H, Dh] each (fixed for a request: decoding reuses them)."""
        b, t, n, _ = media.shape
        kv = self.to_kv(media.reshape(b, t * n, -1).astype(self.to_q.kernel.dtype))
        return tuple(kv[:, :, i].reshape(b, t * n, self.heads, self.dim_head) for i in (0, 1))

    def __call__(self, x: jax.Array, media: jax.Array, text_time: jax.Array,
                 media_kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """x [B, L, d], media [B, T, n, dv], text_time [B, L] -> [B, L, d]."""
        b, l, _ = x.shape
        _, t, n, _ = media.shape
        h, dh = self.heads, self.dim_head
        q = (self.to_q(self.norm(x)) * dh ** -0.5).reshape(b, l, h, dh)
        k, v = self.project_media(media) if media_kv is None else media_kv
        k, v = k.astype(x.dtype), v.astype(x.dtype)
        logits = jnp.einsum("blhd,bshd->bhls", q, k, preferred_element_type=jnp.float32)
        media_time = jnp.repeat(jnp.arange(1, t + 1, dtype=jnp.int32), n)
        visible = text_time[:, None, :, None] == media_time[None, None, None, :]
        probs = jax.nn.softmax(jnp.where(visible, logits, XATTN_FILL), axis=-1)
        probs = jnp.where((text_time == 0)[:, None, :, None], 0.0, probs).astype(v.dtype)
        out = jnp.einsum("bhls,bshd->blhd", probs, v).reshape(b, l, h * dh)
        return self.to_out(out)


class GatedCrossAttentionBlock(nnx.Module):
    """x + tanh(attn_gate) * xattn(x) then x + tanh(ff_gate) * FF(x); gates start at 0 so a fresh block is inert."""

    def __init__(self, cfg: OtterConfig, policy: Policy, rngs: nnx.Rngs):
        dim = cfg.text.hidden_size
        self.attn = MaskedCrossAttention(dim, cfg.vis_dim, cfg.xattn_heads, cfg.xattn_dim_head, policy, rngs)
        self.attn_gate = L.param((1,), (None,), policy, rngs, nnx.initializers.zeros_init())
        self.feed_forward = L.FeedForward(dim, cfg.xattn_ff_mult, policy, rngs)
        self.ff_gate = L.param((1,), (None,), policy, rngs, nnx.initializers.zeros_init())

    def __call__(self, x: jax.Array, media: jax.Array, text_time: jax.Array, media_kv=None) -> jax.Array:
        x = self.attn(x, media, text_time, media_kv) * jnp.tanh(self.attn_gate[...]).astype(x.dtype) + x
        return self.feed_forward(x) * jnp.tanh(self.ff_gate[...]).astype(x.dtype) + x
