"""Logit processing for decoding, in HF's order: processors (no-repeat n-grams) then sampling warpers
(temperature, top-k, top-p). Every function works on a whole batch inside jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def ban_repeated_ngrams(logits: jax.Array, seq: jax.Array, cur_len: jax.Array, n: int) -> jax.Array:
    """Forbid any token that would complete an n-gram already present in seq[:, :cur_len] (HF semantics).

    seq: [B, S] token buffer; cur_len: number of valid tokens (same for every row)."""
    if n <= 0:
        return logits
    b, s = seq.shape
    if n == 1:
        seen = jnp.arange(s)[None, :] < cur_len
        banned = jnp.zeros_like(logits, bool).at[jnp.arange(b)[:, None], seq].max(seen)
        return jnp.where(banned, NEG_INF, logits)
    starts = jnp.arange(s - n + 1)
    prefix = jax.lax.dynamic_slice_in_dim(seq, jnp.maximum(cur_len - (n - 1), 0), n - 1, axis=1)  # [B, n-1]
    windows = jnp.stack([seq[:, i:s - n + 1 + i] for i in range(n - 1)], axis=-1)  # [B, P, n-1]
    match = jnp.all(windows == prefix[:, None, :], axis=-1) & (starts + n - 1 < cur_len)[None] & (cur_len >= n - 1)
    following = seq[:, n - 1:]  # token after each window
    banned = jnp.zeros_like(logits, bool).at[jnp.arange(b)[:, None], following].max(match)
    return jnp.where(banned, NEG_INF, logits)


def warp(logits: jax.Array, temperature: jax.Array | float, top_k: int, top_p: jax.Array | float) -> jax.Array:
    """Temperature, then keep the top_k largest (0 = all), then the smallest set with probability >= top_p."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    keep_sorted = (before < top_p) | (jnp.arange(logits.shape[-1]) == 0)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, NEG_INF)
