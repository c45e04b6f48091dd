"""The train state (model + optimizer as one nnx.State), created directly in its shards.

Why one state: the jitted step takes and returns it whole, so it can be donated (updated in place) and saved/restored
as one pytree; its shardings come from the parameters' logical axis names (the optimizer moments inherit them).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from otter_jax import sharding as S
from otter_jax.models import Otter
from otter_jax.models.config import OtterConfig, Policy
from otter_jax.models.trainable import cast_frozen
from otter_jax.train.optim import make_optimizer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    graphdef: nnx.GraphDef
    state: nnx.State  # (model, optimizer) state; concrete arrays, sharded
    shardings: nnx.State  # NamedSharding per variable
    cfg: OtterConfig

    def merge(self) -> tuple[Otter, nnx.Optimizer]:
        return nnx.merge(self.graphdef, self.state)

    def abstract(self) -> nnx.State:
        """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.state,
                            self.shardings)


def builder(cfg: OtterConfig, policy: Policy, c: ml_collections.ConfigDict) -> Callable[[], tuple]:
    """A function building (model, optimizer) with random weights, for eval_shape or a sharded jit."""
    def make():
        model = cast_frozen(Otter(cfg, policy, rngs=nnx.Rngs(c.train.seed)), policy.frozen_param_dtype,
                            c.train.train_lm, c.train.train_vision)
        return model, make_optimizer(model, c.optim, c.train.steps, c.train.train_lm, c.train.train_vision)

    return make


def abstract_state(cfg: OtterConfig, policy: Policy, c: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State]:
    """Shapes only (nothing allocated): for `plan` and restore targets."""
    return nnx.split(nnx.eval_shape(builder(cfg, policy, c)))


def create(cfg: OtterConfig, policy: Policy, c: ml_collections.ConfigDict, mesh: Mesh, rules: S.Rules
           ) -> TrainState:
    """Random init (or `c.train.init_from` weights) with every array born in its shards."""
    make = builder(cfg, policy, c)
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = S.state_shardings(abstract, mesh, rules)
    if c.train.init_from:
        model, cfg = load_weights(c.train.init_from, cfg, policy, mesh, rules)
        cast_frozen(model, policy.frozen_param_dtype, c.train.train_lm, c.train.train_vision)
        opt = make_optimizer(model, c.optim, c.train.steps, c.train.train_lm, c.train.train_vision)
        state = jax.device_put(nnx.state((model, opt)), shardings)
        graphdef = nnx.graphdef((model, opt))
    else:
        pure_shardings = nnx.to_pure_dict(shardings)

        @functools.partial(jax.jit, out_shardings=pure_shardings)
        def init():
            return nnx.to_pure_dict(nnx.state(make()))

        with jax.set_mesh(mesh):
            values = init()
        state = abstract
        nnx.replace_by_pure_dict(state, values)
    return TrainState(graphdef, state, shardings, cfg)


def load_weights(path: str, cfg: OtterConfig, policy: Policy, mesh: Mesh, rules: S.Rules
                 ) -> tuple[Otter, OtterConfig]:
    """Pretrained weights: an otter-jax checkpoint (`otter-jax convert`) or an HF-layout PyTorch Otter folder."""
    from etils import epath

    from otter_jax import checkpoint, convert

    if not epath.Path(path).is_dir():  # local or gs://
        raise FileNotFoundError(f"config.train.init_from={path!r}: no such directory")
    # otter-jax models; a training checkpoint also goes there, to be refused naming `convert --from-checkpoint`
    if (epath.Path(path) / checkpoint.META_FILE).exists() or checkpoint.training_checkpoint_step(path) is not None:
        model, loaded = checkpoint.load_model(path, policy, mesh, rules)
    else:
        model, loaded = convert.load_torch_checkpoint(path, policy, mesh, rules)
    if loaded.to_hf_dict() != cfg.to_hf_dict() and cfg.hf_dict is not None:
        log.warning("config.model differs from %s/config.json; training the checkpoint's architecture", path)
    tokens = cfg.tokens or loaded.tokens
    if loaded.tokens is not None and cfg.tokens is not None and loaded.tokens != cfg.tokens:
        raise ValueError(f"{path}: special token ids {loaded.tokens} differ from the tokenizer's {cfg.tokens}")
    loaded = dataclasses.replace(loaded, tokens=tokens)
    return model.with_config(tokens=tokens), loaded
