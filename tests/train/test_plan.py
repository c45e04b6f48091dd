"""`otter-jax plan` numbers for the tiny config on the (2, 2, 2) mesh: counts, sharded bytes, compiled memory."""
import math

from flax import nnx

from train_helpers import tiny_config
from otter_jax.models import Otter, Policy
from otter_jax.models.trainable import is_trainable
from otter_jax.train import config as C
from otter_jax.train.plan import plan, report


def test_plan_counts_and_memory(tmp_path):
    c = tiny_config(tmp_path, data=dict(max_media=2))  # the synthetic batch layout: the compiled step is shared
    p = plan(c)
    model = nnx.eval_shape(lambda: Otter(C.model_config(c), Policy(), rngs=nnx.Rngs(0)))
    shapes = {".".join(map(str, k)): v.get_value().shape for k, v in nnx.to_flat_state(nnx.state(model))}
    assert p["params_total"] == sum(math.prod(s) for s in shapes.values())
    trainable = sum(math.prod(s) for k, s in shapes.items() if is_trainable(k))
    assert p["params_trainable"] == trainable and 0 < trainable < p["params_total"]
    assert 8 * trainable < p["optimizer_bytes"] <= 8 * trainable + 16  # AdamW mu + nu (float32) + step counters
    assert p["param_bytes"] / 8 < p["per_device_param_bytes"] < p["param_bytes"]  # sharded, some replication
    m = p["compiled_memory_per_device"]
    state_bytes = p["per_device_param_bytes"] + p["per_device_optimizer_bytes"]
    assert state_bytes <= m["argument_size_in_bytes"] <= state_bytes + 64 * 1024  # + this device's batch rows
    assert m["alias_size_in_bytes"] >= 0.9 * state_bytes  # the donated state is updated in place
    assert "per device" in report(p)
