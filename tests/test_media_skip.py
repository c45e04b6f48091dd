"""Policy.media_budget: the whole-sequence forward pass encodes only the media the text refers to (a static batch of
k = ceil(budget * B) items), with logits, loss and gradients equal to encoding every slot (fp32, 1e-5), one episode
a row or packed, and also when a batch has more real media than k (the encode-everything branch).

To keep this file fast every batch has one shape (B=4 rows of 40 tokens, T=4 media slots of F=2 frames: the
frames axis is what a video clip uses, so clips and single images take the same path), so the two programs (with
and without the budget) compile once each, with XLA's cheaper CPU optimisation level (same computation)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from otter_jax.data.packing import pack_row
from otter_jax.models import Otter, Policy
from otter_jax.models.vision import CLIPVisionEncoder

from test_packing_model import episode, tiny

S, B, T, F, L = 28, 4, 4, 2, 40
BUDGET = 1.5  # k = 6 media of the 16 slots
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def small():
    """test_packing_model's tiny MPT Otter with one decoder layer (one gated block): compiles faster."""
    cfg = tiny("mpt")
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, n_layers=1))


def batch_of(rng, rows_media):
    """Rows of episodes (data.packing.pack_row), row r holding episodes with rows_media[r] media each, its media
    slots the episodes' media in order and zero slots after (as the loader lays them out)."""
    rows = []
    for media in rows_media:
        eps = []
        for n in media:
            e_ids, e_lab = episode(rng, 11, n)
            eps.append({"input_ids": e_ids, "labels": e_lab, "vision": rng.random((n, F, 3, S, S))})
        rows.append(pack_row(eps, L, (T, F, 3, S, S), pad_id=0, vision_dtype=np.float32))
    keys = ("vision_x", "input_ids", "attention_mask", "labels", "segment_ids", "positions")
    return {k: np.stack([r[k] for r in rows]) for k in keys}


def _loss(graphdef, state, batch):
    m = nnx.merge(graphdef, state)
    out = m(batch["vision_x"], batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
            segment_ids=batch["segment_ids"], positions=batch["positions"])
    return out.loss, out.logits


@pytest.fixture(scope="module")
def programs():
    """Spy on the vision encoder (a runtime callback: only the taken branch of the budget's cond reports the size of
    the batch it encodes), then the same tiny MPT Otter (random parameters, gates open) without and with
    the budget, and a runner
    batch -> ((loss, logits), grads wrt every parameter, vision tower included) for each, compiled once."""
    calls, original = [], CLIPVisionEncoder.__call__

    def spy(self, x):
        jax.debug.callback(lambda: calls.append(x.shape[0]))
        return original(self, x)

    mp = pytest.MonkeyPatch()
    mp.setattr(CLIPVisionEncoder, "__call__", spy)
    cfg = small()

    rng = np.random.default_rng(0)  # random parameters (initialising the model costs more than this file's tests)
    abstract = nnx.state(nnx.eval_shape(lambda: Otter(cfg, Policy(), rngs=nnx.Rngs(0))))
    state = jax.tree_util.tree_map_with_path(  # the gates open (tanh(2) = 0.96): cross-attention matters
        lambda path, a: jnp.asarray(np.full(a.shape, 2.0) if jax.tree_util.keystr(path).endswith("_gate'].value")
                                    else rng.normal(0, 0.3, a.shape), a.dtype), abstract)
    runners = []
    example = batch_of(np.random.default_rng(9), [[1]] * B)
    for budget in (0.0, BUDGET):
        graphdef = nnx.split(nnx.eval_shape(lambda: Otter(cfg, Policy(media_budget=budget), rngs=nnx.Rngs(0))))[0]
        fn = jax.value_and_grad(lambda st, b, g=graphdef: _loss(g, st, b), has_aux=True)
        runners.append(jax.jit(fn).lower(state, example).compile(FAST))
    mp.undo()  # traced already: the compiled programs keep their callbacks
    yield [lambda b, r=r: r(state, b) for r in runners], calls


def assert_same(programs, batch):
    (run_all, run_budget), calls = programs
    calls.clear()
    (loss0, logits0), grads0 = run_all(batch)
    (loss1, logits1), grads1 = run_budget(batch)
    jax.effects_barrier()
    np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), atol=1e-5)
    assert float(loss1) == pytest.approx(float(loss0), abs=1e-5)
    for a, b in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    return list(calls), float(loss0), grads0


def test_one_episode_a_row_equal_and_encodes_k_items(programs):
    rng = np.random.default_rng(0)
    batch = batch_of(rng, [[0], [1], [3], [2]])  # 6 real media of 16 slots
    calls, loss0, grads0 = assert_same(programs, batch)
    assert calls == [B * T * F, 6 * F]  # every slot without the budget, k items with it
    # What the model does with a padded slot's latents: nothing. Noise in the padded slots changes nothing.
    noisy = dict(batch, vision_x=batch["vision_x"].copy())
    noisy["vision_x"][0] = rng.random(noisy["vision_x"][0].shape)
    noisy["vision_x"][1, 1:] = rng.random(noisy["vision_x"][1, 1:].shape)
    (loss_n, _), grads_n = programs[0][0](noisy)
    assert float(loss_n) == pytest.approx(loss0, abs=1e-6)
    for a, b in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads_n)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    noisy["vision_x"][1, 0] = rng.random(noisy["vision_x"][1, 0].shape)  # a real slot: the media do matter
    (_, logits0), _ = programs[0][0](batch)
    assert float(jnp.max(jnp.abs(programs[0][0](noisy)[0][1] - logits0))) > 1e-3


def test_packed_rows_equal(programs):
    batch = batch_of(np.random.default_rng(1), [[2, 0, 1], [1], [0, 2], [0, 0]])  # 3, 1, 2, 0 real media
    calls, _, _ = assert_same(programs, batch)
    assert calls == [B * T * F, 6 * F]


def test_overflow_encodes_everything_and_is_equal(programs):
    batch = batch_of(np.random.default_rng(2), [[3], [1, 1], [4], [0, 2]])  # 11 real media > k = 6
    calls, _, _ = assert_same(programs, batch)
    assert calls == [B * T * F, B * T * F]


def test_program_holds_a_k_item_vision_batch():
    """Unpacked rows (no segment ids): the traced forward pass has a vision input of k images (the compact branch)
    beside the B*T one (the overflow branch); without the budget only the latter."""
    batch = batch_of(np.random.default_rng(3), [[0], [1], [3], [2]])
    cfg = small()

    def text(budget):
        g, state = nnx.split(nnx.eval_shape(lambda: Otter(cfg, Policy(media_budget=budget), rngs=nnx.Rngs(0))))

        def f(st, b):
            return nnx.merge(g, st)(b["vision_x"], b["input_ids"], attention_mask=b["attention_mask"]).logits
        return jax.jit(f).lower(state, batch).as_text()

    patches = f"x4x{3 * 14 * 14}xf32>"  # the patch-embedding input [images, patches, c * p * p]
    k_rows, all_rows = f"tensor<{3 * F}{patches}", f"tensor<{B * T * F}{patches}"
    with_budget, without = text(0.75), text(0.0)  # k = 3
    assert k_rows in with_budget and all_rows in with_budget
    assert k_rows not in without and all_rows in without


def test_intermediates_and_generation_encode_every_slot():
    g, state = nnx.split(nnx.eval_shape(lambda: Otter(small(), Policy(media_budget=0.5), rngs=nnx.Rngs(0))))
    batch = batch_of(np.random.default_rng(4), [[0], [1], [0], [0]])
    out = jax.eval_shape(lambda st: nnx.merge(g, st)(batch["vision_x"], batch["input_ids"],
                                                     output_intermediates=True), state)
    assert out.vision_last_hidden_state.shape[0] == B * T * F  # what the golden parity tests compare
    assert out.perceiver_out.shape[:2] == (B, T)



def test_count_media():
    """What MFU counts as vision work: each row's `<image>` tokens, at most T (tests/train/test_flops.py: the
    reporter's FLOPs per real media item)."""
    from otter_jax.train.step import count_media

    batch = batch_of(np.random.default_rng(5), [[2, 0, 1], [1], [0, 2], [0, 0]])
    ids, media = jnp.asarray(batch["input_ids"]), tiny("mpt").tokens.media
    assert int(count_media(ids, T, media)) == 6 and int(count_media(ids, 2, media)) == 2 + 1 + 2
    assert int(count_media(ids, T, None)) == B * T
