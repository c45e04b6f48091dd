"""Whole-sequence attention implementations against the reference (dense) computation, fp32 on CPU.

Tolerance: 1e-5 absolute on outputs and gradients (fp32; the blocks change only the summation order)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otter_jax.models import layers as L
from otter_jax.models.mpt import alibi_slopes


def _inputs(b=2, l=64, h=4, kv=2, d=8, seed=0, packed=True):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, l, kv, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, l, kv, d)), jnp.float32)
    seg = np.ones((b, l), np.int32)
    if packed:  # row 0: three episodes then padding; row 1: one episode then padding
        seg[0, 20:45], seg[0, 45:58], seg[0, 58:] = 2, 3, 0
        seg[1:, 50:] = 0
    return q, k, v, L.Visibility.causal(jnp.asarray(seg))


def _dense(q, k, v, vis, slopes):
    bias = None if slopes is None else L.alibi_block(slopes, vis.q_slot, vis.k_slot)
    return L.attend(q, k, v, scale=0.3, mask=vis.dense(), bias=bias)


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_attention_impls_match_dense(impl, alibi):
    q, k, v, vis = _inputs()
    slopes = jnp.asarray(alibi_slopes(4)) if alibi else None
    ref = _dense(q, k, v, vis, slopes)
    out = L.self_attention(q, k, v, vis, scale=0.3, slopes=slopes, impl=impl, chunk=16)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_chunked_attention_gradients_match_dense():
    q, k, v, vis = _inputs(seed=1)
    slopes = jnp.asarray(alibi_slopes(4))

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    ref = jax.grad(loss(lambda q, k, v: _dense(q, k, v, vis, slopes)), argnums=(0, 1, 2))(q, k, v)
    out = jax.grad(loss(lambda q, k, v: L.self_attention(q, k, v, vis, scale=0.3, slopes=slopes, impl="chunked",
                                                         chunk=16)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_visibility_is_causal_per_episode():
    _, _, _, vis = _inputs(b=1, l=64)
    m = np.asarray(vis.dense())[0]
    assert m[30, 25] and not m[30, 15]  # episode 2 sees itself, not episode 1
    assert not m[25, 30]  # causal
    assert not m[40, 60]  # padding keys are never seen
    assert m[60, 30] and m[60, 10]  # a padding query sees every real earlier key (the reference's rule)


def test_chunked_attention_has_no_full_score_matrix():
    """The compiled chunked attention never holds [B, H, L, L] float32 (the dense one does)."""
    b, l, h = 1, 1024, 4
    q, k, v, vis = _inputs(b=b, l=l, h=h, kv=h, packed=False)
    full = b * h * l * l * 4

    def temp(impl):
        fn = jax.jit(jax.grad(lambda q: jnp.sum(L.self_attention(q, k, v, vis, scale=0.3, impl=impl, chunk=128))))
        return fn.lower(q).compile().memory_analysis().temp_size_in_bytes

    assert temp("dense") >= full
    assert temp("chunked") < full / 2


def _splash_inputs(seed=2):
    """d=128 and 256 tokens in blocks of 128: the TPU kernel's tile shapes. Row 0 packs three episodes, both rows
    end in padding; grouped heads (4 query heads on 2 key/value heads)."""
    rng = np.random.default_rng(seed)
    b, l, h, kv, d = 2, 256, 4, 2, 128
    q = jnp.asarray(rng.normal(size=(b, l, h, d)) * 0.2, jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, l, kv, d)) * 0.2, jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, l, kv, d)), jnp.float32)
    seg = np.zeros((b, l), np.int32)
    seg[0, :100], seg[0, 100:180], seg[0, 180:230] = 1, 2, 3
    seg[1, :200] = 1
    return q, k, v, L.Visibility.causal(jnp.asarray(seg)), seg != 0


def test_splash_kernel_matches_dense_on_real_tokens():
    """The Pallas kernel itself (interpret mode runs its program on CPU) against the reference attention: outputs
    and gradients at every real token. Padding queries differ by design (they see padding, not real keys) and
    carry no loss. Tolerance: 1e-5 absolute on outputs, 1e-5 relative to the largest gradient entry."""
    q, k, v, vis, real = _splash_inputs()
    scale = 128 ** -0.5

    def splash(q, k, v):
        return L.splash_attention(q, k, v, vis.q_segment, scale=scale, block=128, interpret=True)

    def dense(q, k, v):
        return L.attend(q, k, v, scale=scale, mask=vis.dense())

    np.testing.assert_allclose(np.asarray(splash(q, k, v))[real], np.asarray(dense(q, k, v))[real], atol=1e-5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(real[:, :, None, None], jnp.sin(fn(q, k, v)), 0.0))

    ref = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    out = jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(out, ref):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_splash_off_tpu_is_chunked_and_refuses_alibi():
    q, k, v, vis = _inputs()
    ref = _dense(q, k, v, vis, None)
    out = L.self_attention(q, k, v, vis, scale=0.3, impl="splash", chunk=16)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    with pytest.raises(ValueError, match="ALiBi"):
        L.self_attention(q, k, v, vis, scale=0.3, slopes=jnp.asarray(alibi_slopes(4)), impl="splash")


def test_splash_lowers_to_the_tpu_kernel_per_shard():
    """Traced for compile-only TPU devices under an FSDP mesh, impl "splash" becomes Mosaic custom calls inside a
    shard_map (forward and both backward kernels), not XLA attention."""
    pytest.importorskip("libtpu", reason="TPU lowering needs libtpu: pip install -e '.[aot]'")
    from jax.sharding import NamedSharding, PartitionSpec as P

    from otter_jax import sharding as S
    from otter_jax.train import topology

    mesh = S.make_mesh(data=1, fsdp=-1, tensor=1, devices=topology.devices("v5e:2x2"))
    q, k, v, vis, _ = _splash_inputs()

    def loss(q, k, v, seg):
        with S.activation_sharding(mesh):
            out = L.self_attention(q, k, v, L.Visibility.causal(seg), scale=0.1, impl="splash", chunk=128)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    def spec(x):
        return jax.ShapeDtypeStruct((4,) + x.shape[1:], jnp.bfloat16 if x.ndim == 4 else jnp.int32,
                                    sharding=NamedSharding(mesh, P(("data", "fsdp"))))

    with jax.set_mesh(mesh):
        text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*map(spec, (q, k, v, vis.q_segment))).as_text()
    assert "shard_map" in text or "sdy.manual_computation" in text
    assert text.count("tpu_custom_call") >= 3  # forward, dq, dkv
    for kind in ("fwd", "dq", "dkv"):
        assert f"splash_mha_{kind}_segmented" in text
