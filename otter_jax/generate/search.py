"""Jitted decoding with a KV cache: one prefill over the prompt, then a `lax.while_loop` of single-token steps.

Generated tokens keep attending to the last image of their row: their text_time continues from the prompt's media
count (the reference's cached path recomputes it from the new token alone and so zeroes the cross-attention).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.generate import processors as P
from otter_jax.models.otter import DecodeCache, Otter
from otter_jax.models.jit import module_jit


class Prefilled(NamedTuple):
    logits: jax.Array  # [B, V] at the last prompt position
    cache: DecodeCache
    slot_valid: jax.Array  # bool [B, S]: prompt mask, then True for every generated slot
    positions: jax.Array  # [B, S] query position of every slot
    media_count: jax.Array  # [B] <image> tokens seen so far
    media_kv: list | None  # per group: the gated block's media keys/values (unrolled decoding), computed once


class Decoder(NamedTuple):
    """The model and, when decoding unrolled, its per-group modules (see `Otter.unstacked_groups`)."""

    model: Otter
    groups: list | None


def module_factory(model: Otter, unroll: bool):
    """A function that rebuilds the Decoder from arrays. Modules cannot cross into raw `lax` control flow (their
    variables belong to the outer trace), so loop bodies build fresh modules from the closed-over arrays; the
    per-group slices are taken once, here, outside the loop."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    parts = []
    if unroll:
        for group in model.unstacked_groups():
            g_def, g_state = nnx.split(group)
            parts.append((g_def, *jax.tree.flatten(g_state)))

    def rebuild() -> Decoder:
        groups = [nnx.merge(d, jax.tree.unflatten(td, lv)) for d, lv, td in parts] if unroll else None
        return Decoder(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), groups)

    return rebuild


def prefill(dec: Decoder, media: jax.Array, ids: jax.Array, mask: jax.Array, max_new: int) -> Prefilled:
    model = dec.model
    b, l = ids.shape
    s = l + max_new
    slot_valid = jnp.concatenate([mask.astype(bool), jnp.ones((b, max_new), bool)], axis=1)
    positions = model.generation_positions(slot_valid.astype(jnp.int32))
    causal = jnp.arange(s)[None, :] <= jnp.arange(l)[:, None]  # [L, S]
    text_time = jnp.cumsum(ids == model.media_token_id, axis=1, dtype=jnp.int32)
    media_kv = None if dec.groups is None else [g.gated_cross_attn.attn.project_media(media) for g in dec.groups]
    logits, _, cache = model.decode(ids, media, causal[None] & slot_valid[:, None, :], positions[:, :l], text_time,
                                    cache=model.init_cache(b, s, unrolled=dec.groups is not None),
                                    cache_index=jnp.int32(0), last_only=True, groups=dec.groups,
                                    media_kv=media_kv)
    return Prefilled(logits[:, -1], cache, slot_valid, positions, text_time[:, -1], media_kv)


def step(dec: Decoder, media: jax.Array, token: jax.Array, slot: jax.Array, pre: Prefilled, cache: DecodeCache,
         media_count: jax.Array) -> tuple[jax.Array, DecodeCache]:
    """Feed one token per row at sequence slot `slot`; returns the next logits [B, V] and the cache."""
    s = pre.slot_valid.shape[1]
    mask = (jnp.arange(s)[None, None, :] <= slot) & pre.slot_valid[:, None, :]
    positions = jax.lax.dynamic_slice_in_dim(pre.positions, slot, 1, axis=1)
    logits, _, cache = dec.model.decode(token[:, None], media, mask, positions, media_count[:, None], cache=cache,
                                        cache_index=slot, groups=dec.groups, media_kv=pre.media_kv)
    return logits[:, 0], cache


class SampleState(NamedTuple):
    t: jax.Array
    logits: jax.Array
    cache: DecodeCache
    seq: jax.Array  # [B, S]
    scores: jax.Array  # [B, max_new, V]
    done: jax.Array  # [B]
    media_count: jax.Array


@module_jit(static_argnames=("max_new", "do_sample", "top_k", "no_repeat_ngram_size", "unroll", "output_scores"))
def sample(model: Otter, media, ids, mask, *, max_new: int, do_sample: bool, temperature, top_k: int, top_p,
           seed, no_repeat_ngram_size: int, eos, pad, unroll: bool = True, output_scores: bool = True):
    """Greedy or sampled decoding. Returns (sequences [B, L+max_new], scores [B, max_new, V], steps taken); without
    `output_scores` the scores are [B, 0, V]: no buffer of every step's logits is kept (at a 50k vocabulary and
    256 new tokens that is 51 MB per row)."""
    b, l = ids.shape
    rebuild = module_factory(model, unroll)
    pre = prefill(rebuild(), media, ids, mask, max_new)
    seq = jnp.concatenate([ids, jnp.full((b, max_new), pad, ids.dtype)], axis=1)
    vocab = pre.logits.shape[-1]
    media_id = model.media_token_id
    key = jax.random.key(seed)

    def body(st: SampleState) -> SampleState:
        scores = P.ban_repeated_ngrams(st.logits, st.seq, l + st.t, no_repeat_ngram_size)
        if do_sample:
            scores = P.warp(scores, temperature, top_k, top_p)
            token = jax.random.categorical(jax.random.fold_in(key, st.t), scores, axis=-1)
        else:
            token = jnp.argmax(scores, axis=-1)
        token = jnp.where(st.done, pad, token).astype(ids.dtype)
        seq = jax.lax.dynamic_update_slice_in_dim(st.seq, token[:, None], l + st.t, axis=1)
        done = st.done | (token == eos)
        count = st.media_count + (token == media_id)

        def advance(c):
            # Raw lax control flow needs the module rebuilt at its own trace level.
            return step(rebuild(), media, token, l + st.t, pre, c, count)

        logits, cache = jax.lax.cond(st.t + 1 < max_new, advance, lambda c: (st.logits, c), st.cache)
        kept = st.scores.at[:, st.t].set(scores.astype(jnp.float32)) if output_scores else st.scores
        return SampleState(st.t + 1, logits, cache, seq, kept, done, count)

    init = SampleState(jnp.int32(0), pre.logits, pre.cache, seq,
                       jnp.zeros((b, max_new if output_scores else 0, vocab), jnp.float32),
                       jnp.zeros((b,), bool), pre.media_count)
    final = jax.lax.while_loop(lambda st: (st.t < max_new) & ~jnp.all(st.done), body, init)
    return final.seq, final.scores, final.t


def reorder_cache(cache: DecodeCache, rows: jax.Array) -> DecodeCache:
    """Select batch rows of every cached array (beam reordering); scanned-layout group caches ([G, B, S, KV, D])
    carry a leading layer axis, all others are batch-major."""
    return jax.tree.map(lambda a: a[:, rows] if a.ndim == 5 else a[rows], cache)
