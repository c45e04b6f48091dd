"""The jitted train step on a (data=2, fsdp=2, tensor=2) mesh: what it updates, donation, accumulation."""
import jax
import numpy as np
import pytest
from flax import nnx

from train_helpers import tiny_config
from otter_jax import sharding as S
from otter_jax.models.trainable import is_trainable
from otter_jax.train import config as C, data, optim, state as ST, step as STEP


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    c = tiny_config(tmp_path_factory.mktemp("step"))  # the loop tests' config: the compiled step is shared
    mesh = S.make_mesh(**dict(c.mesh))
    rules = C.parse_rules(c.rules)
    _, tokens = data.tokenizer_and_tokens(c, c.model.text_config.vocab_size)
    cfg = C.model_config(c, tokens)
    it = data.SyntheticBatches(c, tokens, S.batch_sharding(mesh, rules, 2), cfg.text.vocab_size, seed=0)
    batches = [data.drop_bookkeeping(next(it)) for _ in range(2)]
    return c, mesh, rules, cfg, batches


def _host(state):
    return {".".join(map(str, p)): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(state)}


def _fresh(c, cfg, mesh, rules):
    from otter_jax.models.config import Policy

    return ST.create(cfg, Policy(), c, mesh, rules)


def test_step_updates_exactly_the_trainable_parameters(setup):
    c, mesh, rules, cfg, batches = setup
    ts = _fresh(c, cfg, mesh, rules)
    fn = STEP.jit_train_step(ts, mesh, rules, 1, optim.schedule(c.optim, c.train.steps))
    before = _host(ts.state[0])
    old_leaf = ts.state[0]["lm_head"]["kernel"].get_value()
    state, m1 = fn(ts.state, batches[0])
    assert old_leaf.is_deleted()  # the state was donated
    # Gates start at 0, so step 1 only reaches the gates and embeddings; step 2 reaches everything trainable.
    state, m2 = fn(state, batches[1])
    after = _host(state[0])
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    trainable = {k for k in before if is_trainable(k)}
    assert changed == trainable, (sorted(changed ^ trainable))
    assert any(k.startswith("vision_encoder.") for k in before) and any(k.startswith("groups.layers.") for k in before)
    assert int(jax.device_get(state[1]["step"].get_value())) == 2
    assert np.isfinite(float(m2["loss"])) and float(m2["grad_norm"]) > 0
    assert float(m1["lr"]) == pytest.approx(1e-2)
    # parameters keep their shardings through the step
    k = state[0]["groups"]["layers"][0]["mlp"]["up_proj"]["kernel"].get_value()
    assert k.sharding.spec == ts.shardings[0]["groups"]["layers"][0]["mlp"]["up_proj"]["kernel"].get_value().spec


def test_unrolled_layout_trains_the_same_parameter_set(setup):
    """Policy(scan_layers=False): one module per layer; the trainable set is the same (by canonical path)."""
    from otter_jax.models.config import Policy
    from otter_jax.models.layout import canonical_path

    c, mesh, rules, cfg, batches = setup
    ts = ST.create(cfg, Policy(scan_layers=False), c, mesh, rules)
    fn = STEP.jit_train_step(ts, mesh, rules, 1, optim.schedule(c.optim, c.train.steps))
    before = _host(ts.state[0])
    assert any(k.startswith("groups.1.layers.0.") for k in before)
    state, _ = fn(ts.state, batches[0])
    state, m = fn(state, batches[1])
    after = _host(state[0])
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    trainable = {k for k in before if is_trainable(".".join(map(str, canonical_path(tuple(
        int(x) if x.isdigit() else x for x in k.split("."))))))}
    assert changed == trainable and len(trainable) > 0, sorted(changed ^ trainable)
    assert np.isfinite(float(m["loss"]))


def test_accumulating_k_micro_batches_equals_one_big_batch(setup):
    c, mesh, rules, cfg, batches = setup
    k = 2  # 8 rows = 2 micro-batches of 4, each still split 4 ways over (data, fsdp)
    results = []
    for accum in (1, k):
        ts = _fresh(c, cfg, mesh, rules)
        fn = STEP.jit_train_step(ts, mesh, rules, accum, optim.schedule(c.optim, c.train.steps))
        state, m = fn(ts.state, batches[0])
        state, m = fn(state, batches[1])
        results.append((jax.device_get(m), _host(state[0])))
    (m1, p1), (mk, pk) = results
    assert abs(float(m1["loss"]) - float(mk["loss"])) <= 1e-5
    assert abs(float(m1["grad_norm"]) - float(mk["grad_norm"])) <= 1e-5 * max(1.0, float(m1["grad_norm"]))
    worst = max(float(np.abs(p1[n] - pk[n]).max()) for n in p1)
    assert worst <= 1e-5, worst
