"""Beam search with a KV cache (HF semantics, early_stopping=False).

Each step scores num_beams x vocab continuations, keeps the best 2K candidates, moves those ending in EOS (among the
top K ranks) into a per-row pool of finished hypotheses scored sum_logprobs / generated_len ** length_penalty, and
continues with the best K that did not end. A row is done once it has K finished hypotheses and no live beam can
beat the worst of them; at the end live beams compete with the finished ones.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from otter_jax.generate import processors as P
from otter_jax.generate.search import DecodeCache, module_factory, prefill, reorder_cache, step
from otter_jax.models.otter import Otter
from otter_jax.models.jit import module_jit


class BeamState(NamedTuple):
    t: jax.Array
    logits: jax.Array  # [B*K, V]
    cache: DecodeCache
    seq: jax.Array  # [B*K, S] live beams
    logp: jax.Array  # [B, K] their summed log-probabilities
    fin_seq: jax.Array  # [B, K, S]
    fin_score: jax.Array  # [B, K]
    media_count: jax.Array  # [B*K]
    done: jax.Array  # [B]


@module_jit(static_argnames=("max_new", "num_beams", "no_repeat_ngram_size", "unroll"))
def beam_search(model: Otter, media, ids, mask, *, max_new: int, num_beams: int, length_penalty,
                no_repeat_ngram_size: int, eos, pad, unroll: bool = True):
    """Returns (best sequences [B, L+max_new], their scores [B], steps taken)."""
    b, l = ids.shape
    k = num_beams
    ids_k, mask_k, media_k = (jnp.repeat(a, k, axis=0) for a in (ids, mask, media))
    rebuild = module_factory(model, unroll)
    pre = prefill(rebuild(), media_k, ids_k, mask_k, max_new)
    s = l + max_new
    seq = jnp.concatenate([ids_k, jnp.full((b * k, max_new), pad, ids.dtype)], axis=1)
    vocab = pre.logits.shape[-1]
    media_id = model.media_token_id
    neg_inf = jnp.float32(-jnp.inf)

    def body(st: BeamState) -> BeamState:
        cur = l + st.t
        gen_len = (st.t + 1).astype(jnp.float32)
        logits = P.ban_repeated_ngrams(st.logits, st.seq, cur, no_repeat_ngram_size)
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, k, vocab)
        vals, idx = jax.lax.top_k((st.logp[:, :, None] + logp).reshape(b, k * vocab), 2 * k)
        rows = jnp.arange(b)[:, None] * k + idx // vocab  # [B, 2K] source beam rows
        tok = (idx % vocab).astype(ids.dtype)
        cand = st.seq[rows].at[:, :, cur].set(tok)  # [B, 2K, S]
        is_eos = tok == eos
        finished = is_eos & (jnp.arange(2 * k) < k)[None] & jnp.isfinite(vals) & ~st.done[:, None]
        pool_score = jnp.concatenate([st.fin_score, jnp.where(finished, vals / gen_len ** length_penalty, neg_inf)], 1)
        pool_seq = jnp.concatenate([st.fin_seq, cand], axis=1)
        fin_score, fi = jax.lax.top_k(pool_score, k)
        fin_seq = jnp.take_along_axis(pool_seq, fi[:, :, None], axis=1)
        live, ai = jax.lax.top_k(jnp.where(is_eos, neg_inf, vals), k)
        new_rows = jnp.take_along_axis(rows, ai, axis=1).reshape(-1)
        new_tok = jnp.take_along_axis(tok, ai, axis=1).reshape(-1)
        new_seq = jnp.take_along_axis(cand, ai[:, :, None], axis=1).reshape(b * k, s)
        cache = reorder_cache(st.cache, new_rows)
        count = st.media_count[new_rows] + (new_tok == media_id)
        done = st.done | ((fin_score[:, -1] > neg_inf) & (fin_score[:, -1] >= live[:, 0] / gen_len ** length_penalty))

        def advance(c):
            # Raw lax control flow needs the module rebuilt at its own trace level.
            return step(rebuild(), media_k, new_tok, cur, pre, c, count)

        next_logits, cache = jax.lax.cond(st.t + 1 < max_new, advance, lambda c: (st.logits, c), cache)
        return BeamState(st.t + 1, next_logits, cache, new_seq, live, fin_seq, fin_score, count, done)

    init = BeamState(jnp.int32(0), pre.logits, pre.cache, seq,
                     jnp.where(jnp.arange(k)[None] == 0, 0.0, neg_inf) * jnp.ones((b, 1)),
                     jnp.full((b, k, s), pad, ids.dtype), jnp.full((b, k), neg_inf), pre.media_count,
                     jnp.zeros((b,), bool))
    final = jax.lax.while_loop(lambda st: (st.t < max_new) & ~jnp.all(st.done), body, init)
    gen_len = jnp.maximum(final.t, 1).astype(jnp.float32)
    alive_score = jnp.where(final.done[:, None], neg_inf, final.logp / gen_len ** length_penalty)
    scores = jnp.concatenate([final.fin_score, alive_score], axis=1)
    seqs = jnp.concatenate([final.fin_seq, final.seq.reshape(b, k, s)], axis=1)
    best = jnp.argmax(scores, axis=1)
    return seqs[jnp.arange(b), best], scores[jnp.arange(b), best], final.t
