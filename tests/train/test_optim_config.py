"""Optimizer pieces and config handling (no compilation): weight-decay mask, schedules, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train_helpers import tiny_config
from otter_jax.models import Otter, Policy
from otter_jax.models.trainable import trainable_filter
from otter_jax.train import config as C, optim


def _trainable_params(tmp_path):
    c = tiny_config(tmp_path)
    model = nnx.eval_shape(lambda: Otter(C.model_config(c), Policy(), rngs=nnx.Rngs(0)))
    return c, nnx.as_pure(nnx.state(model, trainable_filter()))


def test_weight_decay_only_on_gated_cross_attention_kernels(tmp_path):
    c, params = _trainable_params(tmp_path)
    mask = {".".join(str(k.key) for k in path): bool(m)
            for path, m in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    decayed = sorted(k for k, m in mask.items() if m)
    assert decayed == ["groups.gated_cross_attn.attn.to_kv.kernel", "groups.gated_cross_attn.attn.to_out.kernel",
                       "groups.gated_cross_attn.attn.to_q.kernel", "groups.gated_cross_attn.feed_forward.fc1.kernel",
                       "groups.gated_cross_attn.feed_forward.fc2.kernel"]
    for name in ("groups.gated_cross_attn.attn_gate", "groups.gated_cross_attn.ff_gate",
                 "groups.gated_cross_attn.attn.norm.scale", "groups.gated_cross_attn.feed_forward.norm.bias",
                 "perceiver.layers.attn.to_q.kernel", "embed_tokens.embedding", "lm_head.kernel"):
        assert mask[name] is False, name

    # Behaviour, not just the mask: with zero gradients only the decayed weights move, each by -lr * wd * w.
    values = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), params)
    c.optim.update(warmup_steps=0, schedule="constant", lr=0.1, weight_decay=0.2)
    tx = optim.make_tx(c.optim, 10, values)
    # One jitted program (op by op, every leaf shape compiled its own small kernels: ~25 s of CPU); the values and
    # the checks below are host numpy, so they compile nothing.
    updates = jax.jit(lambda v: tx.update(jax.tree.map(jnp.zeros_like, v), tx.init(v), v)[0])(values)
    moved = {".".join(str(k.key) for k in path): float(np.abs(np.asarray(u)).max())
             for path, u in jax.tree_util.tree_leaves_with_path(updates)}
    for name, m in mask.items():
        assert moved[name] == pytest.approx(0.1 * 0.2 * 0.5 if m else 0.0, rel=1e-6), name


def test_schedules_warmup_and_decay(tmp_path):
    o = tiny_config(tmp_path).optim
    o.update(lr=1.0, warmup_steps=10, end_lr_ratio=0.1)
    for kind, mid in (("constant", 1.0), ("linear", 0.55), ("cosine", 0.55)):
        o.schedule = kind
        s = optim.schedule(o, 110)
        assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
        assert float(s(60)) == pytest.approx(mid, abs=1e-6), kind
        assert float(s(110)) == pytest.approx(1.0 if kind == "constant" else 0.1, abs=1e-6), kind
    o.update(warmup_steps=-1, warmup_ratio=0.05)
    assert optim.warmup_steps(o, 200) == 10
    clip = optim.make_tx(o, 100, {"w": jnp.ones(3)})  # global-norm clipping at 1.0 comes first
    assert isinstance(clip, optax.GradientTransformation)
    upd, _ = optax.clip_by_global_norm(o.clip_norm).update({"w": jnp.full(4, 10.0)}, None)
    assert float(optax.tree.norm(upd)) == pytest.approx(1.0)


def test_config_overrides_and_errors(tmp_path):
    c = C.load("configs/demo.py:" + str(tmp_path), ["--config.train.steps=7", "--config.optim.lr", "0.5",
                                                     "--config.model.text_config.num_hidden_layers=2"])
    assert c.train.steps == 7 and c.optim.lr == 0.5 and c.model.text_config.num_hidden_layers == 2
    assert c.workdir == f"{tmp_path}/train"
    with pytest.raises(C.TrainConfigError, match=r"config\.train\.stpes does not exist"):
        C.load("configs/demo.py", ["--config.train.stpes=7"])
    with pytest.raises(C.TrainConfigError, match="steps"):
        C.load("configs/demo.py", ["--config.train.steps=many"])
    with pytest.raises(C.TrainConfigError, match=r"config\.optim\.schedule='exp'"):
        C.load("configs/demo.py", ["--config.optim.schedule=exp"])
    with pytest.raises(C.TrainConfigError, match=r"config\.train\.global_batch_size"):
        C.load("configs/demo.py", ["--config.train.grad_accum=3"])
    with pytest.raises(FileNotFoundError, match="configs/nope.py"):
        C.load("configs/nope.py")
    assert C.parse_rules("batch=data+fsdp,embed=fsdp,vocab=") == (("batch", ("data", "fsdp")), ("embed", "fsdp"),
                                                                   ("vocab", None))
    with pytest.raises(C.TrainConfigError, match="config.rules"):
        C.parse_rules("embed=model")
    # the released-shape experiment files (model/policy/mesh only) get every trainer key from the defaults
    big = C.load("configs/otter_image_mpt7b.py", ["--config.train.steps=3"])
    assert big.policy.dtype == "bfloat16" and big.optim.weight_decay == 0.1 and big.train.steps == 3
    assert np.isclose(big.optim.clip_norm, 1.0)
