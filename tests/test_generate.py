"""Generation with the KV cache: golden parity with the reference's correct (cache-off) path, sampling, beam search,
n-gram blocking, stopping and padding, and sharded generation."""
import functools

import jax
import numpy as np
import pytest

from golden_helpers import GOLDEN_FIXTURES, golden_case, golden_dir
from otter_jax import convert, generate
from otter_jax import sharding as S

# These tests read the scores, which generation keeps only when asked (output_scores).
generate_with_scores = functools.partial(generate.generate, output_scores=True)


@pytest.mark.parametrize("name", GOLDEN_FIXTURES)
def test_greedy_with_cache_matches_reference_without_cache(golden_model, name):
    model, _ = golden_model(name)
    inputs, ref = golden_case(name, "generate")
    out = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=8, num_beams=1, do_sample=False)
    np.testing.assert_array_equal(out.sequences, ref["sequences_use_cache_false"])
    assert out.scores.dtype == np.float32 and out.scores.shape == ref["scores_use_cache_false"].shape
    assert np.abs(out.scores - ref["scores_use_cache_false"]).max() <= 1e-4
    # ... and not the reference's cached path, whose new tokens lose their image.
    assert np.abs(out.scores - ref["scores_use_cache_true"]).max() > 1e-2


def test_scanned_decoding_equals_unrolled(golden_model):
    """Decoding over the scanned stacked layers (unroll_layers=False) gives the same result as the default."""
    name = "otter_mpt_tiny"
    model, _ = golden_model(name)
    inputs, ref = golden_case(name, "generate")
    out = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=8, unroll_layers=False)
    np.testing.assert_array_equal(out.sequences, ref["sequences_use_cache_false"])
    assert np.abs(out.scores - ref["scores_use_cache_false"]).max() <= 1e-4
    beams = [generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               max_new_tokens=3, num_beams=2, unroll_layers=u) for u in (False, True)]
    np.testing.assert_array_equal(beams[0].sequences, beams[1].sequences)


def _full_logits(model, inputs, seq):
    """Logits [B, S, V] of a plain forward pass over prompt + generated tokens (no cache), positions and masks
    as in generation."""
    pad = seq.shape[1] - inputs["input_ids"].shape[1]
    mask = np.concatenate([inputs["attention_mask"], np.ones((seq.shape[0], pad), np.int64)], 1)
    positions = np.asarray(model.generation_positions(mask))
    import jax.numpy as jnp
    _, media = model.encode_vision(jnp.asarray(inputs["vision_x"]))
    causal = np.tril(np.ones((seq.shape[1],) * 2, bool))[None] & mask[:, None, :].astype(bool)
    tt = np.cumsum(seq == model.media_token_id, axis=1)
    logits, _, _ = model.decode(jnp.asarray(seq), media, causal, jnp.asarray(positions), jnp.asarray(tt))
    return np.asarray(logits)


def test_sampling_is_seeded_and_respects_top_k(golden_model):
    name = "otter_llama_tiny"
    model, _ = golden_model(name)
    inputs, _ = golden_case(name, "generate")
    kw = dict(attention_mask=inputs["attention_mask"], max_new_tokens=6, do_sample=True, temperature=1.5, top_k=5,
              eos_token_id=-1)
    a = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], seed=1, **kw)
    b = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], seed=1, **kw)
    c = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], seed=2, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert not np.array_equal(a.sequences, c.sequences)
    l = inputs["input_ids"].shape[1]
    logits = _full_logits(model, inputs, a.sequences)[:, l - 1:-1]
    new = a.sequences[:, l:]
    ranks = (logits > np.take_along_axis(logits, new[..., None], -1)).sum(-1)
    assert ranks.max() < 5  # every sampled token is among the 5 most likely
    # Scores are the warped logits: exactly 5 finite entries per step, equal to logits / temperature there.
    assert (np.isfinite(a.scores).sum(-1) == 5).all()
    kept = np.isfinite(a.scores)
    np.testing.assert_allclose(a.scores[kept], (logits / 1.5)[kept], atol=1e-4)


def test_sampling_with_top_p_near_zero_is_greedy(golden_model):
    name = "otter_mpt_tiny"
    model, _ = golden_model(name)
    inputs, ref = golden_case(name, "generate")
    out = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=8, do_sample=True, top_p=1e-6, seed=3)
    np.testing.assert_array_equal(out.sequences, ref["sequences_use_cache_false"])


def test_stopping_pads_finished_rows(golden_model):
    name = "otter_llama_tiny"
    model, _ = golden_model(name)
    inputs, ref = golden_case(name, "generate")
    greedy = ref["sequences_use_cache_false"]
    l = inputs["input_ids"].shape[1]
    eos = int(greedy[0, l + 1])  # row 0 stops at its second new token
    assert eos not in greedy[1, l:l + 3]
    out = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=3, eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(out.sequences[0, l:], [greedy[0, l], eos, 0])
    np.testing.assert_array_equal(out.sequences[1, l:], greedy[1, l:l + 3])
    # Everything finished early: the output is cut at the last step taken.
    both = generate_with_scores(model, inputs["vision_x"][:1], inputs["input_ids"][:1],
                             attention_mask=inputs["attention_mask"][:1], max_new_tokens=5, eos_token_id=eos)
    assert both.sequences.shape == (1, l + 2) and both.scores.shape[1] == 2


@pytest.mark.parametrize("n", [1, 2])
def test_no_repeat_ngram(golden_model, n):
    name = "otter_mpt_tiny"
    model, _ = golden_model(name)
    inputs, _ = golden_case(name, "generate")
    out = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=10, no_repeat_ngram_size=n, eos_token_id=-1)
    for row in out.sequences:
        grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
        new_grams = grams[inputs["input_ids"].shape[1] - n + 1:]
        for j, g in enumerate(new_grams):
            assert g not in grams[:len(grams) - len(new_grams) + j], (n, g)


def _reference_beam(model, inputs, k, steps, length_penalty):
    """Beam search by brute force with cache-free forward passes (no EOS): keep the K best prefixes each step."""
    b, l = inputs["input_ids"].shape
    best = []
    for row in range(b):
        one = {key: v[row:row + 1] for key, v in inputs.items()}
        beams = [(0.0, one["input_ids"][0])]
        for _ in range(steps):
            cands = []
            for score, seq in beams:
                logits = _full_logits(model, one, seq[None])[0, -1]
                logp = logits - np.logaddexp.reduce(logits)
                cands += [(score + logp[t], np.append(seq, t)) for t in np.argsort(-logp)[:k]]
            beams = sorted(cands, key=lambda c: -c[0])[:k]
        best.append((beams[0][0] / steps ** length_penalty, beams[0][1]))
    return best


def test_beam_search_matches_brute_force(golden_model):
    name = "otter_llama_gqa_tiny"
    model, _ = golden_model(name)
    inputs, _ = golden_case(name, "generate")
    out = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=4, num_beams=3, length_penalty=0.7, eos_token_id=-1)
    ref = _reference_beam(model, inputs, k=3, steps=4, length_penalty=0.7)
    for row, (score, seq) in enumerate(ref):
        np.testing.assert_array_equal(out.sequences[row], seq)
        assert out.sequences_scores[row] == pytest.approx(score, abs=1e-4)


def test_beam_search_collects_finished_hypotheses(golden_model):
    """With EOS = the token greedy picks first, the finished one-token hypothesis competes with longer beams."""
    name = "otter_llama_tiny"
    model, _ = golden_model(name)
    inputs, ref = golden_case(name, "generate")
    l = inputs["input_ids"].shape[1]
    eos = int(ref["sequences_use_cache_false"][0, l])
    out = generate_with_scores(model, inputs["vision_x"][:1], inputs["input_ids"][:1],
                            attention_mask=inputs["attention_mask"][:1], max_new_tokens=4, num_beams=2,
                            eos_token_id=eos, pad_token_id=0)
    logits = _full_logits(model, {k: v[:1] for k, v in inputs.items()}, ref["sequences_use_cache_false"][:1, :l + 1])
    eos_logp = float(logits[0, l - 1, eos] - np.logaddexp.reduce(logits[0, l - 1]))
    if out.sequences[0, l] == eos:  # the finished hypothesis won: score = its log-prob / 1 ** lp
        assert out.sequences_scores[0] == pytest.approx(eos_logp, abs=1e-4)
        assert (out.sequences[0, l + 1:] == 0).all()
    else:  # a longer beam won, so it must beat the finished one
        assert out.sequences_scores[0] > eos_logp


def test_sharded_generation_equals_single_device(golden_model):
    name = "otter_mpt_tiny"
    model, _ = golden_model(name)
    inputs, _ = golden_case(name, "generate")
    inputs = {k: np.concatenate([v, v]) for k, v in inputs.items()}  # batch 4 over data x fsdp
    single = generate_with_scores(model, inputs["vision_x"], inputs["input_ids"],
                               attention_mask=inputs["attention_mask"], max_new_tokens=4)
    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = convert.load_torch_checkpoint(str(golden_dir(name)), mesh=mesh)
    out = generate_with_scores(sharded, inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            max_new_tokens=4, mesh=mesh)
    assert len(jax.devices()) == 8
    np.testing.assert_array_equal(out.sequences, single.sequences)
    assert np.abs(out.scores - single.scores).max() <= 1e-5


def test_prompt_bucket_changes_no_output_and_no_scores_buffer(golden_model):
    """Prompts padded to a 64-token bucket decode the same tokens as unpadded ones; no scores unless asked."""
    from golden_helpers import golden_case

    model, _ = golden_model("otter_mpt_tiny")
    inputs, _ = golden_case("otter_mpt_tiny", "image")
    kw = dict(attention_mask=inputs["attention_mask"], max_new_tokens=5)
    exact = generate.generate(model, inputs["vision_x"], inputs["input_ids"], prompt_bucket=0, output_scores=True, **kw)
    bucketed = generate.generate(model, inputs["vision_x"], inputs["input_ids"], output_scores=True, **kw)
    assert inputs["input_ids"].shape[1] % 64  # the bucket really pads
    np.testing.assert_array_equal(bucketed.sequences, exact.sequences)
    assert np.abs(bucketed.scores - exact.scores).max() <= 1e-4
    assert generate.generate(model, inputs["vision_x"], inputs["input_ids"], **kw).scores is None
