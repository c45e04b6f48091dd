"""AdamW as upstream trains Otter: warmup + constant/linear/cosine decay, global-norm clipping, and weight decay on
the gated cross-attention weight matrices only (not their gates, norms or biases; not the perceiver or embeddings).
"""
from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx

from otter_jax.models.layout import canonical_path
from otter_jax.models.trainable import trainable_filter

DECAYED_PREFIX = "groups.gated_cross_attn."


def is_decayed(path: str) -> bool:
    """`path` is a dotted parameter path ("groups.gated_cross_attn.attn.to_q.kernel")."""
    return path.startswith(DECAYED_PREFIX) and path.endswith(".kernel")


def warmup_steps(o: ml_collections.ConfigDict, total_steps: int) -> int:
    return int(o.warmup_steps) if o.warmup_steps >= 0 else int(round(o.warmup_ratio * total_steps))


def schedule(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then constant, linear or cosine decay to `lr * end_lr_ratio` at total_steps."""
    warm = min(warmup_steps(o, total_steps), total_steps)
    end = o.lr * o.end_lr_ratio
    decay_steps = max(total_steps - warm, 1)
    if o.schedule == "constant":
        after = optax.constant_schedule(o.lr)
    elif o.schedule == "linear":
        after = optax.linear_schedule(o.lr, end, decay_steps)
    elif o.schedule == "cosine":
        after = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.end_lr_ratio)
    else:
        raise ValueError(f"config.optim.schedule={o.schedule!r}: use constant, linear or cosine")
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warm), after], [warm])


def decay_mask(params: nnx.State) -> nnx.State:
    """A bool per parameter of `params` (pure arrays, as `nnx.as_pure(nnx.state(model, wrt))` gives)."""
    def one(path, _):
        return is_decayed(".".join(map(str, canonical_path(tuple(getattr(k, "key", getattr(k, "idx", k))
                                                                      for k in path)))))

    return jax.tree_util.tree_map_with_path(one, params)


def make_tx(o: ml_collections.ConfigDict, total_steps: int, params: nnx.State) -> optax.GradientTransformation:
    tx = optax.adamw(schedule(o, total_steps), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=decay_mask(params))
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), tx) if o.clip_norm > 0 else tx


def make_optimizer(model: nnx.Module, o: ml_collections.ConfigDict, total_steps: int, train_lm: bool = False,
                   train_vision: bool = False) -> nnx.Optimizer:
    wrt = trainable_filter(train_lm, train_vision)
    params = nnx.as_pure(nnx.state(model, wrt))
    return nnx.Optimizer(model, make_tx(o, total_steps, params), wrt=wrt)
