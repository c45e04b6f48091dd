"""The loss and the jitted train/eval steps: explicit in/out shardings, donated state, gradient accumulation.

The loss is the mean next-token cross-entropy over ALL answer tokens of the global batch (upstream rule, per token,
not per micro-batch): each micro-batch contributes its token-summed loss divided by the global token count, so
k accumulated micro-batches give the same loss and gradients as one k-times-larger batch.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from otter_jax import sharding as S
from otter_jax.data.images import normalize_on_device
from otter_jax.models.otter import IGNORE_INDEX, causal_lm_loss, chunked_lm_loss_sum
from otter_jax.models.trainable import trainable_filter
from otter_jax.train.state import TrainState

MODEL_INPUTS = ("vision_x", "input_ids", "attention_mask", "labels")
PACKED_INPUTS = ("segment_ids", "positions")  # present when the loader packs several episodes per row
Batch = dict[str, jax.Array]


def model_inputs(batch: Batch) -> Batch:
    return {k: batch[k] for k in MODEL_INPUTS + PACKED_INPUTS if k in batch}


def count_targets(labels: jax.Array) -> jax.Array:
    """Supervised tokens: labels[:, 1:] that are not ignored (the loss predicts token t+1 from position t)."""
    return jnp.sum(labels[:, 1:] != IGNORE_INDEX)


def count_media(input_ids: jax.Array, slots: int, media_token_id: int | None) -> jax.Array:
    """Real media items of a batch: each row's `<image>` tokens (one per item, packed rows included), at most its
    `slots`; every slot when the model has no media token id. What MFU counts as vision work (not padded slots)."""
    if media_token_id is None:
        return jnp.asarray(input_ids.shape[0] * slots, jnp.int32)
    return jnp.sum(jnp.minimum(jnp.sum(input_ids == media_token_id, axis=1), slots))


def loss_sum(model: nnx.Module, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(summed cross-entropy over the batch's answer tokens, their count). uint8 pixels are normalised here."""
    vision_x = batch["vision_x"]
    dtype = jnp.dtype(model.policy.dtype)
    vision_x = normalize_on_device(vision_x, dtype) if vision_x.dtype == jnp.uint8 else vision_x.astype(dtype)
    packed = {k: batch[k] for k in PACKED_INPUTS if k in batch}
    n = count_targets(batch["labels"])
    if model.policy.loss_chunk:
        hidden = model.final_hidden(vision_x, batch["input_ids"], batch["attention_mask"], **packed)
        return chunked_lm_loss_sum(hidden, model.head_kernel(), batch["labels"], model.policy.loss_chunk), n
    out = model(vision_x, batch["input_ids"], attention_mask=batch["attention_mask"], **packed)
    return causal_lm_loss(out.logits, batch["labels"]) * n, n


def split_micro_batches(batch: Batch, k: int, sharding: NamedSharding | None) -> Batch:
    """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i, i+k, i+2k, ...: every device keeps its own rows
    (the batch axis stays sharded the same way), so accumulation moves no data between devices."""
    def one(x):
        x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
        return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(one, batch)


def train_step_fn(graphdef: nnx.GraphDef, grad_accum: int, schedule: Callable, train_lm: bool, train_vision: bool,
                  micro_sharding: NamedSharding | None = None, mesh: Mesh | None = None,
                  rules: S.Rules = S.DEFAULT_RULES) -> Callable:
    """The pure step (state, batch) -> (state, metrics), before jit; `micro_sharding` places [k, B/k, ...]; with
    a `mesh`, activations are pinned to it at block boundaries (`sharding.constrain`)."""
    wrt = trainable_filter(train_lm, train_vision)

    def step(state: nnx.State, batch: Batch):
        if mesh is None or not nnx.merge(graphdef, state)[0].policy.shard_activations:
            return _step(state, batch)
        with S.activation_sharding(mesh, rules):
            return _step(state, batch)

    def _step(state: nnx.State, batch: Batch):
        model, opt = nnx.merge(graphdef, state)
        batch = model_inputs(batch)
        mgraph, params, rest = nnx.split(model, wrt, ...)
        denom = jnp.maximum(count_targets(batch["labels"]), 1).astype(jnp.float32)

        def loss_fn(p, mb):
            ce, _ = loss_sum(nnx.merge(mgraph, p, rest, copy=True), mb)
            return ce / denom

        grad_fn = jax.value_and_grad(loss_fn)
        if grad_accum == 1:
            loss, grads = grad_fn(params, batch)
        else:
            def body(carry, mb):
                loss_i, grads_i = grad_fn(params, mb)
                return (carry[0] + loss_i, jax.tree.map(jnp.add, carry[1], grads_i)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                            split_micro_batches(batch, grad_accum, micro_sharding))
        lr = schedule(opt.step[...])
        opt.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": jnp.asarray(lr, jnp.float32),
                   "tokens": jnp.sum(batch["attention_mask"] != 0), "targets": count_targets(batch["labels"]),
                   "media": count_media(batch["input_ids"], batch["vision_x"].shape[1],
                                        model.cfg.tokens.media if model.cfg.tokens else None)}
        return nnx.state((model, opt)), metrics

    return step


def micro_batch_sharding(mesh: Mesh, rules: S.Rules) -> NamedSharding:
    """Stacked micro-batches [k, B/k, ...]: axis 1 split like the batch axis."""
    return NamedSharding(mesh, P(None, S.batch_sharding(mesh, rules, 2).spec[0]))


def jit_train_step(ts: TrainState, mesh: Mesh, rules: S.Rules, grad_accum: int, schedule: Callable,
                   train_lm: bool = False, train_vision: bool = False) -> Callable:
    """jit of the step with the state's shardings in and out, the batch split over the data axes, the state donated."""
    fn = train_step_fn(ts.graphdef, grad_accum, schedule, train_lm, train_vision,
                       micro_batch_sharding(mesh, rules), mesh, rules)
    return jax.jit(fn, in_shardings=(ts.shardings, S.batch_sharding(mesh, rules, 2)),
                   out_shardings=(ts.shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


def jit_eval_step(ts: TrainState, mesh: Mesh, rules: S.Rules) -> Callable:
    """(state, batch) -> (summed loss, answer-token count) for the validation loss."""
    def step(state, batch):
        model, _ = nnx.merge(ts.graphdef, state)
        if not model.policy.shard_activations:
            return loss_sum(model, model_inputs(batch))
        with S.activation_sharding(mesh, rules):
            return loss_sum(model, model_inputs(batch))

    return jax.jit(step, in_shardings=(ts.shardings, S.batch_sharding(mesh, rules, 2)),
                   out_shardings=NamedSharding(mesh, P()))
