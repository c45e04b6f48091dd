"""Packed rows (several episodes per row, segment ids, restarting positions) give every episode the same logits
and loss as running it alone (tolerance 1e-5, fp32), for LLaMA (RoPE) and MPT (ALiBi); the chunked loss equals the
whole-logits loss."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from otter_jax.models import Otter, Policy, presets
from otter_jax.models.config import OtterConfig, SpecialTokens
from otter_jax.models.otter import IGNORE_INDEX, causal_lm_loss, chunked_lm_loss_sum

V, MEDIA, EOC = 64, 61, 60


def tiny(text_type: str) -> OtterConfig:
    if text_type == "llama":
        text = {"model_type": "llama", "vocab_size": V, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    else:
        text = {"model_type": "mpt", "vocab_size": V, "d_model": 32, "n_heads": 4, "n_layers": 2,
                "expansion_ratio": 2, "attn_config": {"alibi": True, "alibi_bias_max": 8}}
    d = presets.otter(text, cross_attn_every_n_layers=1)
    d["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28)
    d.update(vis_dim=32, perceiver_depth=1, perceiver_heads=2, perceiver_dim_head=8, perceiver_num_latents=4,
             xattn_heads=2, xattn_dim_head=8)
    return dataclasses.replace(OtterConfig.from_hf_dict(d), tokens=SpecialTokens(media=MEDIA, endofchunk=EOC))


def model_with_live_gates(cfg, policy=Policy()):
    m = Otter(cfg, policy, rngs=nnx.Rngs(0))
    for gate in (m.groups.gated_cross_attn.attn_gate, m.groups.gated_cross_attn.ff_gate):
        gate.set_value(jnp.full(gate.get_value().shape, 0.7, gate.get_value().dtype))  # cross-attention matters
    return m


def episode(rng, length, n_media):
    ids = rng.integers(1, 59, size=length)
    for i, at in enumerate(np.linspace(0, length - 4, n_media).astype(int)):
        ids[at] = MEDIA
    labels = np.where(rng.random(length) < 0.5, ids, IGNORE_INDEX)
    labels[0] = IGNORE_INDEX
    return ids, labels


@pytest.mark.parametrize("text_type", ["llama", "mpt"])
def test_packed_episodes_equal_separate(text_type):
    cfg = tiny(text_type)
    m = model_with_live_gates(cfg)
    rng = np.random.default_rng(0)
    eps = [episode(rng, 13, 2), episode(rng, 9, 1), episode(rng, 7, 0)]
    imgs = [rng.random((n, 1, 3, 28, 28)).astype(np.float32) for n in (2, 1, 0)]
    L, T = 32, 3
    # Separately: each episode alone in a row (its own media first, zero padding after).
    sep_logits, sep_loss = [], []
    for (ids, labels), img in zip(eps, imgs):
        row = np.zeros((1, L), np.int32); row[0, :len(ids)] = ids
        lab = np.full((1, L), IGNORE_INDEX, np.int32); lab[0, :len(ids)] = labels
        vx = np.zeros((1, T, 1, 3, 28, 28), np.float32); vx[0, :len(img)] = img
        mask = (np.arange(L) < len(ids))[None].astype(np.int32)
        out = m(vx, row, attention_mask=mask, labels=lab)
        sep_logits.append(np.asarray(out.logits)[0, :len(ids)])
        sep_loss.append(float(out.loss) * int((lab[:, 1:] != IGNORE_INDEX).sum()))
    # Packed: the three episodes in one row, their media in order, positions restarting.
    ids = np.zeros((1, L), np.int32); lab = np.full((1, L), IGNORE_INDEX, np.int32)
    seg = np.zeros((1, L), np.int32); pos = np.zeros((1, L), np.int32)
    at = 0
    for s, (e_ids, e_lab) in enumerate(eps, start=1):
        n = len(e_ids)
        ids[0, at:at + n], lab[0, at:at + n], seg[0, at:at + n], pos[0, at:at + n] = e_ids, e_lab, s, np.arange(n)
        at += n
    vx = np.zeros((1, T, 1, 3, 28, 28), np.float32)
    vx[0, :3] = np.concatenate([imgs[0], imgs[1]])
    out = m(vx, ids, attention_mask=(seg > 0).astype(np.int32), segment_ids=seg, positions=pos)
    logits = np.asarray(out.logits)[0]
    at = 0
    for s, (e_ids, e_lab) in enumerate(eps):
        n = len(e_ids)
        np.testing.assert_allclose(logits[at:at + n], sep_logits[s], atol=1e-5)
        e_logits = jnp.asarray(logits[at:at + n])[None]
        per_episode = float(causal_lm_loss(e_logits, jnp.asarray(e_lab)[None])) * int((e_lab[1:] != IGNORE_INDEX).sum())
        assert per_episode == pytest.approx(sep_loss[s], abs=1e-5)
        at += n


def test_text_time_restarts_per_episode():
    from otter_jax.models.cross_attention import text_time

    ids = jnp.asarray([[MEDIA, 5, 5, 7, MEDIA, 5, 8, 9, MEDIA, MEDIA, 5, 0]])
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 0]])
    # Episode 2 starts with no media of its own (0), then sees row media 2; episode 3 sees media 3 then 4;
    # padding sees none.
    assert text_time(ids, MEDIA, segment_ids=seg).tolist() == [[1, 1, 1, 0, 2, 2, 0, 0, 3, 4, 4, 0]]


@pytest.mark.parametrize("text_type", ["llama", "mpt"])
def test_chunked_loss_equals_full_logits_loss(text_type):
    cfg = tiny(text_type)
    m = model_with_live_gates(cfg)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 59, size=(2, 32)).astype(np.int32); ids[:, 2] = MEDIA
    labels = np.where(rng.random((2, 32)) < 0.5, ids, IGNORE_INDEX).astype(np.int32)
    vx = rng.random((2, 1, 1, 3, 28, 28)).astype(np.float32)
    mask = np.ones_like(ids); mask[1, 25:] = 0
    out = m(vx, ids, attention_mask=mask, labels=labels)
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())

    def full(model):
        return model(vx, ids, attention_mask=mask, labels=labels).loss * n

    def chunked(model):
        return chunked_lm_loss_sum(model.final_hidden(vx, ids, mask), model.head_kernel(), jnp.asarray(labels), 8)

    assert float(chunked(m)) == pytest.approx(float(out.loss) * n, abs=1e-4)
    g_full = nnx.grad(full)(m)
    g_chunk = nnx.grad(chunked)(m)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_chunked_attention_model_equals_dense():
    cfg = tiny("mpt")
    rng = np.random.default_rng(2)
    ids = rng.integers(1, 59, size=(2, 32)).astype(np.int32); ids[:, 3] = MEDIA
    vx = rng.random((2, 1, 1, 3, 28, 28)).astype(np.float32)
    ref = model_with_live_gates(cfg)(vx, ids).logits
    out = model_with_live_gates(cfg, Policy(attention="chunked", attention_chunk=8, remat="nothing_saveable"))(vx, ids).logits
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
