"""Perceiver resampler: a fixed number of latents per media item, read from all of its frames' patch tokens.

Input [B, T, F, v, D] -> output [B, T, num_latents, D]. Frames are folded into the token axis after the optional
per-frame embedding, so a video clip becomes one media item.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.models import layers as L
from otter_jax.models.config import OtterConfig, Policy


class PerceiverAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, policy: Policy, rngs: nnx.Rngs):
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.norm_media = L.layer_norm(dim, 1e-5, policy, rngs)
        self.norm_latents = L.layer_norm(dim, 1e-5, policy, rngs)
        self.to_q = L.dense(dim, inner, ("embed", "heads"), policy, rngs)
        self.to_kv = L.dense(dim, (2, inner), ("embed", None, "heads"), policy, rngs)
        self.to_out = L.dense(inner, dim, ("heads", "embed"), policy, rngs)

    def __call__(self, media: jax.Array, latents: jax.Array) -> jax.Array:
        """media [N, m, D], latents [N, n, D] -> [N, n, D]; keys are the media tokens followed by the latents."""
        xm, xl = self.norm_media(media), self.norm_latents(latents)
        n, nl, _ = latents.shape
        h, dh = self.heads, self.dim_head
        q = (self.to_q(xl) * dh ** -0.5).reshape(n, nl, h, dh)
        kv = self.to_kv(jnp.concatenate([xm, xl], axis=1))  # [N, m + n, 2, inner]
        k, v = (kv[:, :, i].reshape(n, -1, h, dh) for i in (0, 1))
        out = L.attend(q, k, v, scale=1.0)
        return self.to_out(out.reshape(n, nl, h * dh))


class PerceiverLayer(nnx.Module):
    def __init__(self, cfg: OtterConfig, policy: Policy, rngs: nnx.Rngs):
        self.attn = PerceiverAttention(cfg.vis_dim, cfg.perceiver_heads, cfg.perceiver_dim_head, policy, rngs)
        self.feed_forward = L.FeedForward(cfg.vis_dim, cfg.perceiver_ff_mult, policy, rngs)

    def __call__(self, media: jax.Array, latents: jax.Array) -> jax.Array:
        latents = self.attn(media, latents) + latents
        return self.feed_forward(latents) + latents


class PerceiverResampler(nnx.Module):
    def __init__(self, cfg: OtterConfig, policy: Policy, rngs: nnx.Rngs):
        d = cfg.vis_dim
        self.policy = policy
        self.latents = L.param((cfg.perceiver_num_latents, d), (None, "embed"), policy, rngs)
        self.frame_embs = (L.param((cfg.max_num_frames, d), (None, "embed"), policy, rngs)
                           if cfg.max_num_frames else None)
        self.layers = L.create_stacked(lambda r: PerceiverLayer(cfg, policy, r), cfg.perceiver_depth, rngs,
                                         policy.scan_layers)
        self.norm = L.layer_norm(d, 1e-5, policy, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, f, v, d = x.shape
        if self.frame_embs is not None:
            if f > self.frame_embs.shape[0]:
                raise ValueError(f"{f} frames per media item but max_num_frames={self.frame_embs.shape[0]}")
            x = x + self.frame_embs[...][:f].astype(x.dtype)[None, None, :, None, :]
        media = x.reshape(b * t, f * v, d)
        latents = jnp.broadcast_to(self.latents[...].astype(x.dtype), (b * t,) + self.latents.shape)
        latents, _ = L.scan(self.layers, latents, lambda layer, z: (layer(media, z), None), self.policy.remat)
        return self.norm(latents).reshape(b, t, -1, d)
