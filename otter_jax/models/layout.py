"""Two layouts of the same weights (Policy.scan_layers): stacked (scanned) and unrolled (one module per layer).

Stacked is the canonical layout: checkpoints, conversion key maps and parameter paths in configs use it. The
unrolled layout exists because XLA:CPU copies each layer's weights out of a stacked array before every matmul;
models are built, loaded and saved in either layout, and the arrays are converted here (slice or stack), so a
checkpoint never depends on the layout it was trained in.
Paths: stacked `groups.layers.0.self_attn.q_proj.kernel` [G, ...] is unrolled `groups.<g>.layers.0.self_attn...`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.models.otter import Otter

STACKED = (("vision_encoder", "layers"), ("perceiver", "layers"), ("groups",))  # module paths of repeated layers


def canonical_path(path: tuple) -> tuple:
    """A parameter path of either layout -> its stacked-layout path (the layer index after a stack is dropped)."""
    for prefix in STACKED:
        n = len(prefix)
        if tuple(path[:n]) == prefix and len(path) > n and isinstance(path[n], int):
            return tuple(path[:n]) + tuple(path[n + 1:])
    return tuple(path)


def _at(tree: dict, prefix: tuple) -> dict | None:
    for key in prefix:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _put(tree: dict, prefix: tuple, value: Any) -> dict:
    """A copy of the nested dict `tree` with `value` at `prefix`."""
    out = dict(tree)
    out[prefix[0]] = value if len(prefix) == 1 else _put(tree[prefix[0]], prefix[1:], value)
    return out


def unstack(params: dict) -> dict:
    """Stacked pure-dict parameters -> unrolled ({i: layer i's arrays} at every stack)."""
    for prefix in STACKED:
        node = _at(params, prefix)
        if node is not None:
            n = jax.tree.leaves(node)[0].shape[0]
            params = _put(params, prefix, {i: jax.tree.map(lambda a, i=i: a[i], node) for i in range(n)})
    return params


def stack(params: dict) -> dict:
    """Unrolled pure-dict parameters -> stacked (each layer's arrays stacked on a new leading axis)."""
    for prefix in STACKED:
        node = _at(params, prefix)
        if node is not None:
            layers = [node[i] for i in sorted(node)]
            params = _put(params, prefix, jax.tree.map(lambda *a: jnp.stack(a), *layers))
    return params


def relayout(model: Otter, scan_layers: bool) -> Otter:
    """The same model in the other layout (a new module; arrays are sliced or stacked, nothing else changes)."""
    if model.policy.scan_layers == scan_layers:
        return model
    policy = dataclasses.replace(model.policy, scan_layers=scan_layers)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Otter(model.cfg, policy, rngs=nnx.Rngs(0))))
    params = nnx.to_pure_dict(nnx.state(model))
    nnx.replace_by_pure_dict(state, stack(params) if scan_layers else unstack(params))
    return nnx.merge(graphdef, state)
