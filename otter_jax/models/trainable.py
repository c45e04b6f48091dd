"""Which parameters training updates. Upstream recipe: the perceiver, every gated cross-attention block and the
input embeddings (+ the untied output head); vision encoder and language model frozen, each optionally unfrozen."""
from __future__ import annotations

from flax import nnx

from otter_jax.models.layout import canonical_path

ALWAYS = ("perceiver.", "groups.gated_cross_attn.", "embed_tokens.", "lm_head.")
VISION = ("vision_encoder.",)
LANGUAGE = ("groups.layers.", "tail.", "norm.")


def is_trainable(path: str, train_lm: bool = False, train_vision: bool = False) -> bool:
    """`path` is a dotted parameter path of `Otter`, e.g. "groups.gated_cross_attn.attn_gate"."""
    prefixes = ALWAYS + (LANGUAGE if train_lm else ()) + (VISION if train_vision else ())
    return path.startswith(prefixes)


def trainable_filter(train_lm: bool = False, train_vision: bool = False) -> nnx.filterlib.Filter:
    """An nnx filter selecting the trainable parameters (for `nnx.DiffState`, `nnx.Optimizer(wrt=...)`)."""

    def keep(path, value) -> bool:
        return is_trainable(".".join(map(str, canonical_path(path))), train_lm, train_vision)

    return nnx.All(nnx.Param, keep)


def cast_frozen(model: nnx.Module, dtype: str, train_lm: bool = False, train_vision: bool = False) -> nnx.Module:
    """Store every parameter training does not update in `dtype` (e.g. bfloat16), in place; trainable ones keep
    theirs (the fp32 master). Works on abstract models (inside `nnx.eval_shape`) and on loaded ones."""
    import jax.numpy as jnp

    if not dtype:
        return model
    keep = trainable_filter(train_lm, train_vision)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if not keep(path, var):
            var.set_value(var.get_value().astype(jnp.dtype(dtype)))
    return model
