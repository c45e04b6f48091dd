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
