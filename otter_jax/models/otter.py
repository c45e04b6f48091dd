"""The Otter composite: CLIP encoder -> perceiver -> language model with gated cross-attention blocks.

The decoder is organised as `num_groups` identical groups of `cross_attn_every_n_layers` decoder layers, with the
gated cross-attention block before the last layer of each group (upstream placement: before layer i iff
(i + 1) % n == 0). Groups are stacked and scanned, so compile time is independent of depth; the few layers after the
last group (when n does not divide the depth) have no block and run unscanned.
"""
from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from otter_jax.models import layers as L
from otter_jax.models import llama, mpt
from otter_jax.models.config import OtterConfig, Policy
from otter_jax.models.cross_attention import GatedCrossAttentionBlock, text_time as compute_text_time
from otter_jax.models.perceiver import PerceiverResampler
from otter_jax.models.vision import CLIPVisionEncoder

ARCHITECTURES: dict[str, ModuleType] = {"llama": llama, "mpt": mpt}
IGNORE_INDEX = -100


@struct.dataclass
class OtterOutput:
    logits: jax.Array  # [B, L, V] float32
    loss: jax.Array | None = None
    text_time: jax.Array | None = None  # [B, L]
    # Only with output_intermediates=True:
    vision_last_hidden_state: jax.Array | None = None  # [B*T*F, 1 + patches, vis_dim], CLS first
    perceiver_out: jax.Array | None = None  # [B, T, latents, vis_dim]
    hidden_states: jax.Array | None = None  # [n_layers + 1, B, L, d]: inputs of each layer, then the final norm
    xattn_outputs: jax.Array | None = None  # [num_groups, B, L, d]: outputs of the gated blocks, in layer order


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over labels != -100 (upstream rule)."""
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32),
                                                         jnp.where(valid, targets, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)


class DecodeCache(NamedTuple):
    """Keys/values of every decoder layer. Scanned layout: `groups[j]` holds layer j of every group
    ([G, B, S, KV, D] arrays). Unrolled layout (decoding over `unstacked_groups()`): `groups[g][j]` is layer j of
    group g ([B, S, KV, D]). `tail[t]` is the t-th layer after the groups ([B, S, KV, D])."""

    groups: tuple
    tail: tuple[L.KVCache, ...]


class DecoderGroup(nnx.Module):
    def __init__(self, cfg: OtterConfig, arch: ModuleType, policy: Policy, rngs: nnx.Rngs):
        self.layers = nnx.List([arch.DecoderLayer(cfg.text, policy, rngs) for _ in range(cfg.cross_attn_every_n_layers)])
        self.gated_cross_attn = GatedCrossAttentionBlock(cfg, policy, rngs)

    def __call__(self, x, media, text_time, ctx, collect: bool, kv: tuple[L.KVCache, ...] | None = None,
                 media_kv=None):
        inputs, xattn_out, new_kv = [], None, []
        for j, layer in enumerate(self.layers):
            if collect:
                inputs.append(x)
            if j == len(self.layers) - 1:
                x = xattn_out = self.gated_cross_attn(x, media, text_time, media_kv)
            x, layer_kv = layer(x, ctx, None if kv is None else kv[j])
            new_kv.append(layer_kv)
        return x, ((jnp.stack(inputs), xattn_out) if collect else None, None if kv is None else tuple(new_kv))


class Otter(nnx.Module):
    def __init__(self, cfg: OtterConfig, policy: Policy = Policy(), *, rngs: nnx.Rngs):
        self.cfg, self.policy = cfg, policy
        arch = ARCHITECTURES[cfg.text_model_type]
        text = cfg.text
        # Parameters carry logical axis names; placement on a mesh is done explicitly (otter_jax.sharding), so the
        # model can also be built with no mesh at all.
        with nnx.use_eager_sharding(False):
            self.vision_encoder = CLIPVisionEncoder(cfg.vision, policy, rngs)
            self.perceiver = PerceiverResampler(cfg, policy, rngs)
            self.embed_tokens = nnx.Embed(
                text.vocab_size, text.hidden_size, rngs=rngs, **L.dtypes(policy),
                embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))
            self.groups = L.create_stacked(lambda r: DecoderGroup(cfg, arch, policy, r), cfg.num_groups, rngs,
                                             policy.scan_layers)
            self.tail = nnx.List([arch.DecoderLayer(text, policy, rngs) for _ in range(cfg.num_tail_layers)])
            self.norm = arch.final_norm(text, policy, rngs)
            self.lm_head = (None if cfg.tied_embeddings else
                            L.dense(text.hidden_size, text.vocab_size, ("embed", "vocab"), policy, rngs))

    # ------------------------------------------------------------------------------------------------ pieces
    def encode_vision(self, vision_x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """vision_x [B, T, F, C, H, W] -> (CLIP last hidden state [B*T*F, 1+v, D], perceiver latents [B, T, n, D])."""
        b, t, f = vision_x.shape[:3]
        hidden = self.vision_encoder(vision_x.reshape((b * t * f,) + vision_x.shape[3:]))
        patches = hidden[:, 1:].reshape(b, t, f, hidden.shape[1] - 1, hidden.shape[2])
        return hidden, self.perceiver(patches)

    def decode(self, input_ids: jax.Array, media: jax.Array, mask: jax.Array, positions: jax.Array,
               text_time: jax.Array, collect: bool = False, cache: DecodeCache | None = None,
               cache_index: jax.Array | None = None, last_only: bool = False,
               groups: list[DecoderGroup] | None = None, media_kv: list | None = None
               ) -> tuple[jax.Array, Any, DecodeCache | None]:
        """Run the language model on token ids with the given media latents.

        mask: bool [B, Lq, Lk] (Lk = cache length with a cache); positions: [B, Lq] (RoPE positions for LLaMA,
        sequence slots for MPT); with `cache`, the new keys/values are written at slot `cache_index`;
        `last_only` computes logits at the last position only (a prefill needs no others); `groups` (from
        `unstacked_groups()`) runs the groups one after another instead of scanning (with the unrolled cache layout),
        and may come with each group's precomputed media keys/values (`media_kv`, from `project_media`).
        Returns (float32 logits, intermediates or None, updated cache or None)."""
        arch = ARCHITECTURES[self.cfg.text_model_type]
        ctx = arch.attention_context(self.cfg.text, mask, positions, cache_index)
        x = self.embed_tokens(input_ids)
        if groups is not None:
            group_kv = []
            for g, group in enumerate(groups):
                x, (_, kv) = group(x, media, text_time, ctx, False, None if cache is None else cache.groups[g],
                                   None if media_kv is None else media_kv[g])
                group_kv.append(kv)
            ys = (None, tuple(group_kv))
        elif cache is None:
            x, ys = L.scan(self.groups, x, lambda g, h: g(h, media, text_time, ctx, collect), self.policy.remat)
        else:
            x, ys = L.scan(self.groups, x, lambda g, h, kv: g(h, media, text_time, ctx, collect, kv),
                           self.policy.remat, xs=cache.groups)
        collected, group_kv = ys
        tail_inputs, tail_kv = [], []
        for t, layer in enumerate(self.tail):
            tail_inputs.append(x)
            x, kv = layer(x, ctx, None if cache is None else cache.tail[t])
            tail_kv.append(kv)
        new_cache = None if cache is None else DecodeCache(group_kv, tuple(tail_kv))
        x = self.norm(x[:, -1:] if last_only else x)
        logits = (self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)).astype(jnp.float32)
        if not collect:
            return logits, None, new_cache
        group_inputs, xattn_out = collected  # [G, n, B, L, d], [G, B, L, d]
        hidden = [group_inputs.reshape((-1,) + group_inputs.shape[2:])]
        hidden += [h[None] for h in tail_inputs] + [x[None]]
        return logits, (jnp.concatenate(hidden, axis=0), xattn_out), new_cache

    def unstacked_groups(self) -> list[DecoderGroup]:
        """One module per decoder group, holding that group's slice of the stacked parameters.

        Scanning reads each layer's weights through a dynamic slice of the stacked arrays, which XLA:CPU copies
        before every matmul; a decode step is bound by weight reads, so generation slices once and runs the groups
        unrolled (compile time then grows with depth, for generation only)."""
        if isinstance(self.groups, nnx.List):  # already unrolled (Policy.scan_layers=False)
            return list(self.groups)
        graphdef, state = nnx.split(self.groups)
        return [nnx.merge(graphdef, jax.tree.map(lambda a, g=g: a[g], state)) for g in range(self.cfg.num_groups)]

    def init_cache(self, batch: int, length: int, dtype: Any = None, unrolled: bool = False) -> DecodeCache:
        """An empty (zero) cache for `batch` rows of up to `length` tokens (layout: see DecodeCache)."""
        text = self.cfg.text
        kv_heads = text.num_key_value_heads if self.cfg.text_model_type == "llama" else text.n_heads
        dtype = jnp.dtype(dtype or self.policy.dtype)

        def kv(*lead):
            shape = lead + (batch, length, kv_heads, text.dim_head)
            return L.KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

        n, g = self.cfg.cross_attn_every_n_layers, self.cfg.num_groups
        groups = (tuple(tuple(kv() for _ in range(n)) for _ in range(g)) if unrolled
                  else tuple(kv(g) for _ in range(n)))
        return DecodeCache(groups, tuple(kv() for _ in range(self.cfg.num_tail_layers)))

    def generation_positions(self, attention_mask: jax.Array) -> jax.Array:
        """Query positions for (left-)padded prompts, as the reference's `generate` derives them."""
        return ARCHITECTURES[self.cfg.text_model_type].generation_positions(attention_mask)

    # ------------------------------------------------------------------------------------------------ forward
    def __call__(self, vision_x, input_ids, attention_mask=None, labels=None, *, text_time=None,
                 output_intermediates: bool = False) -> OtterOutput:
        """Forward pass as the reference computes it (positions 0..L-1, causal + key-padding mask)."""
        vision_x = jnp.asarray(vision_x, self.policy.dtype)
        input_ids = jnp.asarray(input_ids, jnp.int32)
        b, l = input_ids.shape
        attention_mask = jnp.ones((b, l), bool) if attention_mask is None else jnp.asarray(attention_mask) != 0
        if text_time is None:
            text_time = compute_text_time(input_ids, self.media_token_id)
        vis_hidden, media = self.encode_vision(vision_x)
        mask = jnp.tril(jnp.ones((l, l), bool))[None] & attention_mask[:, None, :]
        positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        logits, inter, _ = self.decode(input_ids, media, mask, positions, text_time, collect=output_intermediates)
        loss = None if labels is None else causal_lm_loss(logits, jnp.asarray(labels, jnp.int32))
        if not output_intermediates:
            return OtterOutput(logits=logits, loss=loss, text_time=text_time)
        return OtterOutput(logits=logits, loss=loss, text_time=text_time, vision_last_hidden_state=vis_hidden,
                           perceiver_out=media, hidden_states=inter[0], xattn_outputs=inter[1])

    @property
    def media_token_id(self) -> int:
        if self.cfg.tokens is None:
            raise ValueError("the model config has no special token ids (OtterConfig.tokens); load the model with "
                             "its tokenizer, or pass text_time explicitly")
        return self.cfg.tokens.media

    def with_config(self, **changes) -> "Otter":
        """Same parameters, config fields replaced (e.g. tokens=...)."""
        self.cfg = dataclasses.replace(self.cfg, **changes)
        return self
