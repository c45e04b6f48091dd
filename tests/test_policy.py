"""dtype and rematerialisation policies: same model, same numbers (remat) or close numbers (bf16)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from golden_helpers import golden_case, golden_dir
from otter_jax import convert
from otter_jax.models import Policy
from otter_jax.models.trainable import trainable_filter


def _loss_and_grads(model, inputs):
    def loss_fn(m):
        return m(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 labels=inputs["labels"]).loss

    return nnx.jit(lambda m: nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable_filter()))(m))(model)


def test_remat_changes_nothing_numerically():
    name = "otter_llama_tiny"
    inputs, ref = golden_case(name, "image")
    plain, _ = convert.load_torch_checkpoint(str(golden_dir(name)))
    remat, _ = convert.load_torch_checkpoint(str(golden_dir(name)), policy=Policy(remat="full"))
    loss_a, grads_a = _loss_and_grads(plain, inputs)
    loss_b, grads_b = _loss_and_grads(remat, inputs)
    assert abs(float(loss_a) - float(ref["loss"])) <= 1e-5
    assert float(loss_a) == pytest.approx(float(loss_b), abs=1e-6)
    leaves_a, leaves_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # Only trainable parameters get gradients; the gate gradients are non-zero (the path is live).
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(grads_a)}
    assert any(p.startswith("groups.gated_cross_attn.attn_gate") for p in paths)
    assert not any(p.startswith(("vision_encoder.", "groups.layers.")) for p in paths)
    assert float(jnp.abs(grads_a["groups"]["gated_cross_attn"]["attn_gate"][...]).max()) > 0


def test_bfloat16_parameters_and_compute():
    name = "otter_mpt_tiny"
    inputs, ref = golden_case(name, "image")
    model, _ = convert.load_torch_checkpoint(str(golden_dir(name)), policy=Policy(dtype="bfloat16",
                                                                                    param_dtype="bfloat16"))
    assert model.groups.layers[0].attn.Wqkv.kernel[...].dtype == jnp.bfloat16
    out = model(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                labels=inputs["labels"])
    assert out.logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(out.logits)).all()
    # bf16 keeps ~3 significant digits: the loss agrees to ~1%, the argmax almost everywhere.
    assert float(out.loss) == pytest.approx(float(ref["loss"]), rel=2e-2)
    agree = (np.asarray(out.logits).argmax(-1) == ref["logits"].argmax(-1)).mean()
    assert agree > 0.9
