"""Step-wise decoding: the prefill and the decode step of `search.sample`, as separately jitted calls.

`sample` runs every step inside one `lax.while_loop`, so nothing comes back before the last token. A server needs
each token as it is made (streaming, stop strings, per-request token limits) and must be able to run another batch
between two steps, so here the host drives the loop. The model work is the same `prefill` / `step` as `sample`'s,
and a greedy row picks `argmax` of the same logits, so greedy tokens equal `generate`'s.

Rows can join a running batch (`join`): a new prompt is prefilled on its own, left-padded to the batch's prompt
length, and its cache is shifted by the steps the batch has taken, so its last prompt token sits just before the
batch's next write slot. Positions and masks move with it, so the row computes what it would compute alone.

Sampling parameters are per row (temperature, top_p, a seed each), so requests with different settings share a
batch; a sampled row's step k (counted from when it joined) draws with `fold_in(key(seed), k)`, so its tokens
depend neither on the other rows nor on when it joined.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.generate import processors as P
from otter_jax.generate.search import Prefilled, module_factory, prefill, step
from otter_jax.models.otter import DecodeCache


class RowParams(NamedTuple):
    sample: jax.Array  # bool [B]: sample (else greedy)
    temperature: jax.Array  # float32 [B] (ignored by greedy rows)
    top_p: jax.Array  # float32 [B]
    seed: jax.Array  # uint32 [B]
    start: jax.Array  # int32 [B]: the batch step at which the row joined (its draws count from there)


class StepState(NamedTuple):
    t: jax.Array  # steps taken
    logits: jax.Array  # [B, V] logits for the next token
    cache: DecodeCache
    media_count: jax.Array  # [B]


class Bound:
    """The model split into arrays once, for callers that decode step by step. `module_jit` splits the module on
    every call, and `nnx.split` walks every variable: 24 ms per call on the 0.5M-parameter test model, several
    times a decode step. Here each call passes a flat list of arrays to functions jitted once, around the static
    graph (so it is not hashed per call either)."""

    def __init__(self, model):
        graphdef, state = nnx.split(model)
        self.leaves, treedef = jax.tree.flatten(state)

        def merged(fn):
            return lambda leaves, *a, **k: fn(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *a, **k)

        self._encode = jax.jit(merged(lambda m, vx: m.encode_vision(vx.astype(m.policy.dtype))[1]))
        self._start = jax.jit(merged(start), static_argnames=("max_new", "unroll"))
        self._advance = jax.jit(merged(advance), static_argnames=("prompt_len", "unroll"))

    def encode(self, vision_x):
        """[B, T, F, 3, H, W] -> media latents [B, T, n, D], as `generate.encode_media`."""
        return self._encode(self.leaves, vision_x)

    def start(self, media, ids, mask, *, max_new: int, unroll: bool = True):
        return self._start(self.leaves, media, ids, mask, max_new=max_new, unroll=unroll)

    def advance(self, media, pre, state, params, *, prompt_len: int, unroll: bool = True):
        return self._advance(self.leaves, media, pre, state, params, prompt_len=prompt_len, unroll=unroll)


def start(model, media, ids, mask, *, max_new: int, unroll: bool = True) -> tuple[Prefilled, StepState]:
    """Prefill left-padded prompts [B, L] into a cache of L + max_new slots (call through `Bound`, jitted)."""
    pre = prefill(module_factory(model, unroll)(), media, ids, mask, max_new)
    state = StepState(jnp.int32(0), pre.logits, pre.cache, pre.media_count)
    return pre._replace(cache=None), state  # the cache lives in the state only


def choose(logits: jax.Array, params: RowParams, t: jax.Array) -> jax.Array:
    """Greedy rows: argmax; sampled rows: HF's temperature then top-p, drawn with the row's own key."""
    greedy = jnp.argmax(logits, axis=-1)
    temp = jnp.where(params.sample, params.temperature, 1.0)[:, None]
    warped = P.warp(logits, temp, 0, params.top_p[:, None])
    keys = jax.vmap(lambda s, t0: jax.random.fold_in(jax.random.key(s), t - t0))(params.seed, params.start)
    drawn = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, warped)
    return jnp.where(params.sample, drawn, greedy).astype(jnp.int32)


def advance(model, media, pre: Prefilled, state: StepState, params: RowParams, *, prompt_len: int,
            unroll: bool = True) -> tuple[jax.Array, StepState]:
    """Pick one token per row from `state.logits` and feed it: returns the tokens [B] and the next state
    (call through `Bound`, jitted).

    The caller stops after at most `max_new` calls (the cache has that many slots after the prompt)."""
    token = choose(state.logits, params, state.t)
    count = state.media_count + (token == model.media_token_id)
    logits, cache = step(module_factory(model, unroll)(), media, token, prompt_len + state.t, pre, state.cache,
                         count)
    return token, StepState(state.t + 1, logits, cache, count)


@jax.jit
def join(pre: Prefilled, state: StepState, media, params: RowParams, new_pre: Prefilled, new_state: StepState,
         new_media, new_params: RowParams, dst: jax.Array):
    """Put rows of a fresh prefill (same prompt length, media slots and cache size) into a running batch at rows
    `dst` ([B'], an index >= B drops that row). The fresh rows' slots are rolled right by the batch's step count:
    their prompt then ends at the batch's next write slot; the slots rolled round to the front are masked off."""
    t = state.t
    s = pre.slot_valid.shape[1]

    def put(big, small):
        return big.at[dst].set(small, mode="drop")

    def shifted(x):  # [B', S, ...] -> rolled along the slot axis
        return jnp.roll(x, t, axis=1)

    valid = shifted(new_pre.slot_valid) & (jnp.arange(s) >= t)[None]
    pre = pre._replace(logits=put(pre.logits, new_pre.logits), slot_valid=put(pre.slot_valid, valid),
                       positions=put(pre.positions, shifted(new_pre.positions)),
                       media_count=put(pre.media_count, new_pre.media_count),
                       media_kv=jax.tree.map(put, pre.media_kv, new_pre.media_kv))
    cache = jax.tree.map(lambda a, b: put(a, shifted(b)), state.cache, new_state.cache)
    state = StepState(t, put(state.logits, new_state.logits), cache, put(state.media_count, new_state.media_count))
    return pre, state, put(media, new_media), jax.tree.map(put, params, new_params)
