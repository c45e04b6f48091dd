"""Step-wise decoding: the prefill and the decode step of `search.sample`, as separately jitted calls.

`sample` runs every step inside one `lax.while_loop`, so nothing comes back before the last token. A server needs
each token as it is made (streaming, stop strings, per-request token limits) and must be able to run another batch
between two steps, so here the host drives the loop. The model work is the same `prefill` / `step` as `sample`'s,
and a greedy row picks `argmax` of the same logits, so greedy tokens equal `generate`'s.

Sampling parameters are per row (temperature, top_p, a seed each), so requests with different settings share a
batch; a sampled row draws from `fold_in(key(seed), t)`, so its tokens do not depend on the other rows.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from otter_jax.generate import processors as P
from otter_jax.generate.search import Prefilled, module_factory, prefill, step
from otter_jax.models.otter import DecodeCache
from otter_jax.models.jit import module_jit


class RowParams(NamedTuple):
    sample: jax.Array  # bool [B]: sample (else greedy)
    temperature: jax.Array  # float32 [B] (ignored by greedy rows)
    top_p: jax.Array  # float32 [B]
    seed: jax.Array  # uint32 [B]


class StepState(NamedTuple):
    t: jax.Array  # steps taken
    logits: jax.Array  # [B, V] logits for the next token
    cache: DecodeCache
    media_count: jax.Array  # [B]


@module_jit(static_argnames=("max_new", "unroll"))
def start(model, media, ids, mask, *, max_new: int, unroll: bool = True) -> tuple[Prefilled, StepState]:
    """Prefill left-padded prompts [B, L] into a cache of L + max_new slots."""
    pre = prefill(module_factory(model, unroll)(), media, ids, mask, max_new)
    state = StepState(jnp.int32(0), pre.logits, pre.cache, pre.media_count)
    return pre._replace(cache=None), state  # the cache lives in the state only


def choose(logits: jax.Array, params: RowParams, t: jax.Array) -> jax.Array:
    """Greedy rows: argmax; sampled rows: HF's temperature then top-p, drawn with the row's own key."""
    greedy = jnp.argmax(logits, axis=-1)
    temp = jnp.where(params.sample, params.temperature, 1.0)[:, None]
    warped = P.warp(logits, temp, 0, params.top_p[:, None])
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), t))(params.seed)
    drawn = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, warped)
    return jnp.where(params.sample, drawn, greedy).astype(jnp.int32)


@module_jit(static_argnames=("prompt_len", "unroll"))
def advance(model, media, pre: Prefilled, state: StepState, params: RowParams, *, prompt_len: int,
            unroll: bool = True) -> tuple[jax.Array, StepState]:
    """Pick one token per row from `state.logits` and feed it: returns the tokens [B] and the next state.

    The caller stops after at most `max_new` calls (the cache has that many slots after the prompt)."""
    token = choose(state.logits, params, state.t)
    count = state.media_count + (token == model.media_token_id)
    logits, cache = step(module_factory(model, unroll)(), media, token, prompt_len + state.t, pre, state.cache,
                         count)
    return token, StepState(state.t + 1, logits, cache, count)
