"""CLIP ViT vision encoder (HF `CLIPVisionModel` computation), layers stacked and scanned.

Output is the last hidden state *before* `post_layernorm`, CLS included (Otter drops it): that is what Otter feeds
the perceiver. `post_layernorm` (and the optional `visual_projection`, CLIP's pooled-embedding head) are kept as parameters so
checkpoints round-trip, but they are never applied.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.models import layers as L
from otter_jax.models.config import Policy, VisionConfig


class CLIPAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: Policy, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, L.dense(d, d, ("embed", "heads"), policy, rngs, use_bias=True))
        self.out_proj = L.dense(d, d, ("heads", "embed"), policy, rngs, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = (p(x).reshape(b, n, h, d // h) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = L.attend(q, k, v, scale=(d // h) ** -0.5)
        return self.out_proj(out.reshape(b, n, d))


class CLIPLayer(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: Policy, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.layer_norm1 = L.layer_norm(d, cfg.layer_norm_eps, policy, rngs)
        self.self_attn = CLIPAttention(cfg, policy, rngs)
        self.layer_norm2 = L.layer_norm(d, cfg.layer_norm_eps, policy, rngs)
        self.fc1 = L.dense(d, cfg.intermediate_size, ("embed", "mlp"), policy, rngs, use_bias=True)
        self.fc2 = L.dense(cfg.intermediate_size, d, ("mlp", "embed"), policy, rngs, use_bias=True)
        self.act = L.ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class CLIPVisionEncoder(nnx.Module):
    def __init__(self, cfg: VisionConfig, policy: Policy, rngs: nnx.Rngs):
        if cfg.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"vision_config.hidden_act={cfg.hidden_act!r}: only quick_gelu and gelu are supported")
        self.cfg, self.policy = cfg, policy
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
        # The patch convolution (stride = kernel = patch) as a matmul over flattened (channel, row, col) patches.
        self.patch_embedding = L.dense(c * p * p, d, (None, "embed"), policy, rngs)
        self.class_embedding = L.param((d,), ("embed",), policy, rngs, nnx.initializers.normal(0.02))
        self.position_embedding = L.param((cfg.num_patches + 1, d), (None, "embed"), policy, rngs,
                                          nnx.initializers.normal(0.02))
        self.pre_layrnorm = L.layer_norm(d, cfg.layer_norm_eps, policy, rngs)
        self.layers = L.create_stacked(lambda r: CLIPLayer(cfg, policy, r), cfg.num_hidden_layers, rngs,
                                         policy.scan_layers)
        self.post_layernorm = L.layer_norm(d, cfg.layer_norm_eps, policy, rngs)
        self.visual_projection = (L.dense(d, cfg.proj_dim, ("embed", None), policy, rngs) if cfg.proj_dim else None)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels [N, C, H, W] (normalised) -> last hidden state [N, 1 + num_patches, D] (CLS first)."""
        cfg = self.cfg
        n, c, hgt, wid = pixels.shape
        p = cfg.patch_size
        if hgt != cfg.image_size or wid != cfg.image_size:
            raise ValueError(f"images are {hgt}x{wid}; the vision encoder expects {cfg.image_size}x{cfg.image_size}")
        patches = pixels.reshape(n, c, hgt // p, p, wid // p, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(n, (hgt // p) * (wid // p), c * p * p).astype(self.policy.dtype)
        x = self.patch_embedding(patches)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(x.dtype)
        x = self.pre_layrnorm(x)
        x, _ = L.scan(self.layers, x, lambda layer, h: (layer(h), None), self.policy.remat)
        return x
