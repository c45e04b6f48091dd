"""The Otter composite: CLIP encoder -> perceiver -> language model with gated cross-attention blocks.

The decoder is organised as `num_groups` identical groups of `cross_attn_every_n_layers` decoder layers, with the
gated cross-attention block before the last layer of each group (upstream placement: before layer i iff
(i + 1) % n == 0). Groups are stacked and scanned, so compile time is independent of depth; the few layers after the
last group (when n does not divide the depth) have no block and run unscanned.
"""
from __future__ import annotations

import dataclasses
import math
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.ad_checkpoint import checkpoint_name
from flax import nnx, struct

from otter_jax import sharding as S
from otter_jax.models import layers as L
from otter_jax.models import llama, mpt
from otter_jax.models.config import IGNORE_INDEX, OtterConfig, Policy
from otter_jax.models.cross_attention import GatedCrossAttentionBlock, text_time as compute_text_time
from otter_jax.models.perceiver import PerceiverResampler
from otter_jax.models.vision import CLIPVisionEncoder

ARCHITECTURES: dict[str, ModuleType] = {"llama": llama, "mpt": mpt}


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


ACTIVATION = ("batch", None, None)  # logical axes of [B, L, d] activations at block boundaries


def shifted_targets(labels: jax.Array) -> jax.Array:
    """labels[:, t + 1] at position t (the last position predicts nothing): the target of every position."""
    return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)


def chunked_lm_loss_sum(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, chunk: int) -> jax.Array:
    """Summed next-token cross-entropy from final hidden states [B, L, d] and the output kernel [d, V], `chunk`
    positions at a time: each block's [B, chunk, V] float32 logits are made, reduced and rematerialised in the
    backward pass, so the whole [B, L, V] never exists. Same value as `causal_lm_loss * count` (fp32 rounding)."""
    b, l, d = hidden.shape
    if l % chunk:
        raise ValueError(f"Policy.loss_chunk={chunk} does not divide the sequence length {l}")
    n = l // chunk
    targets = shifted_targets(labels).reshape(b, n, chunk).swapaxes(0, 1)
    blocks = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)

    @jax.checkpoint
    def one(total, xs):
        h, t = xs
        logits = jnp.einsum("bcd,dv->bcv", h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
        logits = S.constrain(logits, ("batch", None, "vocab"))
        valid = t != IGNORE_INDEX
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, t, 0))
        return total + jnp.sum(jnp.where(valid, ce, 0.0)), None

    total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), (blocks, targets))
    return total


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over labels != -100 (upstream rule)."""
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32),
                                                         jnp.where(valid, targets, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)


def _encode_vision(encoder: CLIPVisionEncoder, perceiver: PerceiverResampler, vision_x: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    b, t, f = vision_x.shape[:3]
    hidden = encoder(S.constrain(vision_x.reshape((b * t * f,) + vision_x.shape[3:]), ("batch", None, None, None)))
    hidden = S.constrain(hidden, ACTIVATION)
    patches = hidden[:, 1:].reshape(b, t, f, hidden.shape[1] - 1, hidden.shape[2])
    return hidden, S.constrain(perceiver(patches), ("batch", None, None, None))


class DecodeCache(NamedTuple):
    """Keys/values of every decoder layer. Scanned layout: `groups[j]` holds layer j of every group
    ([G, B, S, KV, D] arrays). Unrolled layout (decoding over `unstacked_groups()`): `groups[g][j]` is layer j of
    group g ([B, S, KV, D]). `tail[t]` is the t-th layer after the groups ([B, S, KV, D])."""

    groups: tuple
    tail: tuple[L.KVCache, ...]


def _run_layer(layer, x, ctx, kv):
    return layer(x, ctx, kv)


def _run_block(block, x, media, text_time, media_kv):
    return block(x, media, text_time, media_kv)


class DecoderGroup(nnx.Module):
    """`cross_attn_every_n_layers` decoder layers with the gated block before the last. Under a remat policy each
    layer and the block are rematerialised on their own (their inputs saved: ~L*d per sequence each), so the
    backward pass holds one layer's internals at a time; decoding with a cache never remats."""

    def __init__(self, cfg: OtterConfig, arch: ModuleType, policy: Policy, rngs: nnx.Rngs):
        self.layers = nnx.List([arch.DecoderLayer(cfg.text, policy, rngs) for _ in range(cfg.cross_attn_every_n_layers)])
        self.gated_cross_attn = GatedCrossAttentionBlock(cfg, policy, rngs)
        self.remat = policy.remat
        # XLA:TPU cannot offload the residuals of a scan nested in the group scan: offloading keeps layers inlined
        self.scan_inner = policy.scan_group_layers and not policy.offload_layer_inputs

    def __call__(self, x, media, text_time, ctx, collect: bool, kv: tuple[L.KVCache, ...] | None = None,
                 media_kv=None):
        remat = self.remat if kv is None else "none"
        run_layer, run_block = L.checkpointed(_run_layer, remat), L.checkpointed(_run_block, remat)
        name = (lambda h: checkpoint_name(h, L.LAYER_INPUT)) if kv is None else (lambda h: h)
        if self.scan_inner and kv is None and not collect and len(self.layers) > 2:
            x = self._scan_leading_layers(x, ctx, run_layer)
            x = S.constrain(run_block(self.gated_cross_attn, name(x), media, text_time, media_kv), ACTIVATION)
            x, _ = run_layer(self.layers[-1], name(x), ctx, None)
            return S.constrain(x, ACTIVATION), (None, None)
        inputs, xattn_out, new_kv = [], None, []
        for j, layer in enumerate(self.layers):
            if collect:
                inputs.append(x)
            if j == len(self.layers) - 1:
                x = xattn_out = S.constrain(run_block(self.gated_cross_attn, name(x), media, text_time, media_kv),
                                            ACTIVATION)
            x, layer_kv = run_layer(layer, name(x), ctx, None if kv is None else kv[j])
            x = S.constrain(x, ACTIVATION)
            new_kv.append(layer_kv)
        return x, ((jnp.stack(inputs), xattn_out) if collect else None, None if kv is None else tuple(new_kv))

    def _scan_leading_layers(self, x, ctx, run_layer):
        """The layers before the gated block under one `lax.scan` (Policy.scan_group_layers): their weights are
        stacked inside the step (a per-chip copy of a few MB under FSDP), so the compiled program holds one layer
        body instead of n - 1 inlined copies. Checkpoints keep one entry per layer; the arithmetic is unchanged."""
        graphdef, first = nnx.split(self.layers[0])
        rest = [nnx.state(layer) for layer in self.layers[1:-1]]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), first, *rest)

        def body(h, state):
            h, _ = run_layer(nnx.merge(graphdef, state), checkpoint_name(h, L.LAYER_INPUT), ctx, None)
            return S.constrain(h, ACTIVATION), None

        return jax.lax.scan(body, x, stacked)[0]


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
            self.embed_tokens = L.embed(text.vocab_size, text.hidden_size, policy, rngs)
            self.groups = L.create_stacked(lambda r: DecoderGroup(cfg, arch, policy, r), cfg.num_groups, rngs,
                                             policy.scan_layers)
            self.tail = nnx.List([arch.DecoderLayer(text, policy, rngs) for _ in range(cfg.num_tail_layers)])
            self.norm = arch.final_norm(text, policy, rngs)
            self.lm_head = (None if cfg.tied_embeddings else
                            L.dense(text.hidden_size, text.vocab_size, ("embed", "vocab"), policy, rngs))

    # ------------------------------------------------------------------------------------------------ pieces
    def encode_vision(self, vision_x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """vision_x [B, T, F, C, H, W] -> (CLIP last hidden state [B*T*F, 1+v, D], perceiver latents [B, T, n, D])."""
        return _encode_vision(self.vision_encoder, self.perceiver, vision_x)

    def encode_media(self, vision_x: jax.Array, text_time: jax.Array) -> jax.Array:
        """Perceiver latents [B, T, n, D] of the media the text refers to; the other slots' latents are zero.

        Row b uses slots 0..m_b-1, m_b = min(max(text_time[b]), T): a token at text_time j attends to slot j only,
        and one past T to every slot (the reference's rule), so no token reads a slot beyond m_b. (The loader gives
        each media item exactly one `<image>` token, packed rows hold their episodes' media in order, so m_b is the
        row's real media.) With `Policy.media_budget` > 0 those slots are gathered into a static batch of
        k = ceil(budget * rows) items per batch shard (rows = B / shards; the shards: the batch axes of the
        enclosing `sharding.activation_sharding`, 1 without one), encoded, and scattered back; a batch where some
        shard has more than k real media takes the `encode_vision` path instead (`nnx.cond`: same result, no
        saving). Every gathered item comes from its own shard's rows, so compaction moves no pixels between chips."""
        b, t, f = vision_x.shape[:3]
        shards = S.batch_shards(b)
        rows = b // shards
        k = math.ceil(rows * self.policy.media_budget)
        if self.policy.media_budget <= 0 or k >= rows * t:
            return self.encode_vision(vision_x)[1]
        used = jnp.clip(jnp.max(text_time, axis=1), 0, t)
        real = S.constrain((jnp.arange(t)[None, :] < used[:, None]).reshape(shards, rows * t), ("batch", None))

        def compact(encoder, perceiver, vx):
            idx = jax.vmap(lambda r: jnp.nonzero(r, size=k, fill_value=rows * t)[0])(real)  # [shards, k]
            items = S.constrain(vx.reshape((shards, rows * t) + vx.shape[2:]), ("batch",) + (None,) * 6)
            picked = jax.vmap(lambda x, i: jnp.take(x, i, axis=0, mode="fill", fill_value=0))(items, idx)
            picked = S.constrain(picked, ("batch",) + (None,) * 6).reshape((shards * k, 1) + vx.shape[2:])
            latents = _encode_vision(encoder, perceiver, picked)[1]  # [shards * k, 1, n, D]
            latents = latents.reshape((shards, k) + latents.shape[2:])
            out = jax.vmap(lambda i, z: jnp.zeros((rows * t,) + z.shape[1:], z.dtype).at[i].set(z, mode="drop"))(
                idx, latents)
            return S.constrain(out.reshape((b, t) + out.shape[2:]), ("batch", None, None, None))

        return nnx.cond(jnp.all(jnp.sum(real, axis=1) <= k), compact, lambda e, p, vx: _encode_vision(e, p, vx)[1],
                        self.vision_encoder, self.perceiver, vision_x)

    def decode(self, input_ids: jax.Array, media: jax.Array, mask: jax.Array, positions: jax.Array,
               text_time: jax.Array, collect: bool = False, cache: DecodeCache | None = None,
               cache_index: jax.Array | None = None, last_only: bool = False,
               groups: list[DecoderGroup] | None = None, media_kv: list | None = None, head: bool = True
               ) -> tuple[jax.Array, Any, DecodeCache | None]:
        """Run the language model on token ids with the given media latents.

        mask: bool [B, Lq, Lk] (Lk = cache length with a cache); positions: [B, Lq] (RoPE positions for LLaMA,
        sequence slots for MPT); with `cache`, the new keys/values are written at slot `cache_index`;
        `last_only` computes logits at the last position only (a prefill needs no others); `groups` (from
        `unstacked_groups()`) runs the groups one after another instead of scanning (with the unrolled cache layout),
        and may come with each group's precomputed media keys/values (`media_kv`, from `project_media`).
        `mask` may also be a `layers.Visibility` (whole sequences: masks are then built block by block).
        `head=False` returns the final-norm hidden states instead of logits (for `chunked_lm_loss_sum`).
        Returns (float32 logits, intermediates or None, updated cache or None)."""
        arch = ARCHITECTURES[self.cfg.text_model_type]
        ctx = arch.attention_context(self.cfg.text, mask, positions, cache_index)
        x = S.constrain(self.embed_tokens(input_ids), ACTIVATION)
        if groups is not None:
            group_kv = []
            for g, group in enumerate(groups):
                x, (_, kv) = group(x, media, text_time, ctx, False, None if cache is None else cache.groups[g],
                                   None if media_kv is None else media_kv[g])
                group_kv.append(kv)
            ys = (None, tuple(group_kv))
        elif cache is None:  # remat is applied per layer inside each group (DecoderGroup)
            x, ys = L.scan(self.groups, x, lambda g, h: g(h, media, text_time, ctx, collect),
                           "offload_layer_inputs" if self.policy.offload_layer_inputs and not collect else "none")
        else:
            x, ys = L.scan(self.groups, x, lambda g, h, kv: g(h, media, text_time, ctx, collect, kv),
                           xs=cache.groups)
        collected, group_kv = ys
        tail_inputs, tail_kv = [], []
        run_layer = L.checkpointed(_run_layer, self.policy.remat if cache is None else "none")
        for t, layer in enumerate(self.tail):
            tail_inputs.append(x)
            x, kv = run_layer(layer, x, ctx, None if cache is None else cache.tail[t])
            x = S.constrain(x, ACTIVATION)
            tail_kv.append(kv)
        new_cache = None if cache is None else DecodeCache(group_kv, tuple(tail_kv))
        x = S.constrain(self.norm(x[:, -1:] if last_only else x), ACTIVATION)
        if not head:
            return x, None, new_cache
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
    def head_kernel(self) -> jax.Array:
        """The output projection as a [d, V] matrix (the tied input embedding, transposed, for MPT)."""
        return self.embed_tokens.embedding[...].T if self.lm_head is None else self.lm_head.kernel[...]

    def _inputs(self, vision_x, input_ids, attention_mask, text_time, segment_ids, positions, all_media=False):
        """Media latents, per-token visibility, positions and text_time of a whole-sequence forward pass.

        Unpacked rows: segment = attention_mask, positions 0..L-1 (the reference). Packed rows (`segment_ids`,
        1, 2, ... per episode, 0 on padding, and `positions` restarting per episode): each episode sees only its
        own tokens, and its text_time counts only its own `<image>` tokens, as the media of a row are the packed
        episodes' media in order. Under `Policy.media_budget` only the media the text refers to are encoded
        (`encode_media`; the CLIP hidden state is then None), unless `all_media`."""
        vision_x = jnp.asarray(vision_x, self.policy.dtype)
        input_ids = jnp.asarray(input_ids, jnp.int32)
        b, l = input_ids.shape
        attention_mask = jnp.ones((b, l), bool) if attention_mask is None else jnp.asarray(attention_mask) != 0
        segments = attention_mask.astype(jnp.int32) if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
        if text_time is None:
            text_time = compute_text_time(input_ids, self.media_token_id, segment_ids=segment_ids)
        if all_media or self.policy.media_budget <= 0:
            vis_hidden, media = self.encode_vision(vision_x)
        else:
            vis_hidden, media = None, self.encode_media(vision_x, text_time)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        return input_ids, vis_hidden, media, L.Visibility.causal(segments), jnp.asarray(positions, jnp.int32), \
            text_time

    def final_hidden(self, vision_x, input_ids, attention_mask=None, *, segment_ids=None, positions=None
                     ) -> jax.Array:
        """Final-norm hidden states [B, L, d] (what the output head reads): training's chunked loss starts here."""
        ids, _, media, vis, positions, text_time = self._inputs(vision_x, input_ids, attention_mask, None,
                                                                segment_ids, positions)
        return self.decode(ids, media, vis, positions, text_time, head=False)[0]

    # ------------------------------------------------------------------------------------------------ forward
    def __call__(self, vision_x, input_ids, attention_mask=None, labels=None, *, text_time=None,
                 segment_ids=None, positions=None, output_intermediates: bool = False) -> OtterOutput:
        """Forward pass as the reference computes it (positions 0..L-1, causal + key-padding mask); packed rows
        with `segment_ids` / `positions` (see `_inputs`)."""
        ids, vis_hidden, media, vis, positions, text_time = self._inputs(
            vision_x, input_ids, attention_mask, text_time, segment_ids, positions, output_intermediates)
        logits, inter, _ = self.decode(ids, media, vis, positions, text_time, collect=output_intermediates)
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
