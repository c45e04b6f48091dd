"""Ahead-of-time generation plans: compile the prefill and one KV-cached decode step for a mesh of any devices
(`otter-jax plan --generate`), bf16 weights, to read their per-device memory before serving on a slice."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax import sharding as S
from otter_jax.generate.search import module_factory, prefill, step
from otter_jax.models import Otter
from otter_jax.models.config import Policy

PROMPT, NEW = 1024, 256  # a long in-context prompt and a long answer


def compile_generation(planner, batch: int, prompt: int = PROMPT, max_new: int = NEW) -> dict:
    """{"prefill": {...}, "decode_step": {...}}: per-device bytes of each compiled program (bf16 weights)."""
    from otter_jax.train.plan import memory

    policy = Policy(dtype="bfloat16", param_dtype="bfloat16", scan_layers=True)
    mesh, rules = planner.mesh, planner.rules
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Otter(planner.cfg, policy, rngs=nnx.Rngs(0))))
    shardings = S.state_shardings(state, mesh, rules)
    abstract = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                            nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
    bsh = lambda nd: S.batch_sharding(mesh, rules, nd)  # noqa: E731
    cfg = planner.cfg
    media = jax.ShapeDtypeStruct((batch, planner.T, cfg.perceiver_num_latents, cfg.vis_dim), jnp.bfloat16,
                                 sharding=bsh(4))
    ids = jax.ShapeDtypeStruct((batch, prompt), jnp.int32, sharding=bsh(2))

    def model_of(pure):
        st = nnx.clone(state)
        nnx.replace_by_pure_dict(st, pure)
        return nnx.merge(graphdef, st)

    def do_prefill(pure, media, ids, mask):
        with S.activation_sharding(mesh, rules):
            return prefill(module_factory(model_of(pure), unroll=False)(), media, ids, mask, max_new)

    out = {}
    t0 = time.perf_counter()
    pre_fn = jax.jit(do_prefill)
    compiled = pre_fn.lower(abstract, media, ids, ids).compile()
    out["prefill"] = {"peak_bytes": (memory(compiled) or {}).get("peak_estimate_bytes"),
                      "compile_seconds": round(time.perf_counter() - t0, 1)}
    pre = jax.eval_shape(do_prefill, abstract, media, ids, ids)

    def do_step(pure, media, token, slot, pre):
        with S.activation_sharding(mesh, rules):
            return step(module_factory(model_of(pure), unroll=False)(), media, token, slot, pre, pre.cache,
                        pre.media_count)

    t0 = time.perf_counter()
    token = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bsh(1))
    pre_in = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), pre)
    compiled = jax.jit(do_step).lower(abstract, media, token, jax.ShapeDtypeStruct((), jnp.int32), pre_in).compile()
    out["decode_step"] = {"peak_bytes": (memory(compiled) or {}).get("peak_estimate_bytes"),
                          "compile_seconds": round(time.perf_counter() - t0, 1)}
    out["shape"] = {"batch": batch, "prompt": prompt, "max_new": max_new}
    return out
