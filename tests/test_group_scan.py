"""Policy.scan_group_layers (the layers before each gated block under one lax.scan, for a shorter compile) and
Policy.offload_layer_inputs (the layer inputs remat keeps, held in host memory) compute what the inlined layers
compute: logits and parameter gradients within 1e-5 (fp32), with the parameter layout unchanged."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from otter_jax.models import Otter, Policy
from otter_jax.models import layers as L
from test_packing_model import MEDIA, model_with_live_gates, tiny


def deep(text_type):
    """One group of four layers (three scanned layers, the gated block, the fourth layer) and a tail layer."""
    cfg = tiny(text_type)
    text = dataclasses.replace(cfg.text, **({"num_hidden_layers": 5} if text_type == "llama" else {"n_layers": 5}))
    return dataclasses.replace(cfg, text=text, cross_attn_every_n_layers=4)


def test_scanned_group_layers_equal_inlined():
    """The language model alone (random media latents), LLaMA under per-layer remat: logits and every parameter's
    gradient."""
    cfg = deep("llama")
    assert cfg.num_groups == 1 and cfg.num_tail_layers == 1
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 59, size=(2, 24)).astype(np.int32)
    ids[:, [2, 11]] = MEDIA
    media = jnp.asarray(rng.normal(size=(2, 2, 4, 32)), jnp.float32)
    text_time = jnp.cumsum(ids == MEDIA, axis=1)
    vis = L.Visibility.causal(jnp.ones((2, 24), jnp.int32))
    positions = jnp.broadcast_to(jnp.arange(24), (2, 24))

    m = model_with_live_gates(cfg, Policy(remat="nothing_saveable"))

    def run(scan, offload=False):
        m.groups.scan_inner = scan  # the switch Policy.scan_group_layers sets, on the same weights
        m.policy = dataclasses.replace(m.policy, offload_layer_inputs=offload)
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def loss(p):
            logits = nnx.merge(graphdef, p, rest).decode(ids, media, vis, positions, text_time)[0]
            return jnp.sum(jnp.sin(logits)), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return logits, nnx.to_flat_state(grads)

    ref_logits, ref_grads = run(False)
    for switches in ({"scan": True}, {"scan": False, "offload": True}):
        logits, grads = run(**switches)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5, err_msg=str(switches))
        assert [p for p, _ in grads] == [p for p, _ in ref_grads]  # same parameters, same paths and shapes
        for (path, g), (_, r) in zip(grads, ref_grads):
            np.testing.assert_allclose(np.asarray(g.get_value()), np.asarray(r.get_value()), atol=1e-5,
                                       err_msg=f"{switches} {'.'.join(map(str, path))}")


def test_scanned_group_program_has_one_layer_body():
    """The point of the switch: the lowered step holds fewer decoder-layer copies (counted by their RMSNorm
    rsqrt ops)."""
    cfg = deep("llama")
    ids = np.ones((1, 16), np.int32)
    vision_x = np.zeros((1, 1, 1, 3, 28, 28), np.float32)

    def count(scan):
        m = Otter(cfg, Policy(scan_group_layers=scan), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(m)
        text = jax.jit(lambda s: nnx.merge(graphdef, s)(vision_x, ids).logits).lower(state).as_text()
        return text.count("rsqrt")

    assert count(True) < count(False) - 1
