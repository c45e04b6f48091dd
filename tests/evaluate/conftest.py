"""Shared fixtures: one tiny random Otter (LLaMA) with the demo tokenizer saved as an otter-jax checkpoint, and the
tiny evaluation sets, both built once per session so compiled functions are shared across tests."""
import dataclasses

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from flax import nnx

    from otter_jax.checkpoint import save_model
    from otter_jax.data.demo import TOKENIZER_DIR
    from otter_jax.data.tokenizer import load_tokenizer, special_ids
    from otter_jax.models import Otter, OtterConfig, Policy, SpecialTokens
    from otter_jax.models.presets import otter

    sp = special_ids(load_tokenizer(TOKENIZER_DIR))
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "hidden_act": "quick_gelu"}
    text = {"model_type": "llama", "vocab_size": 608, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "bos_token_id": sp.bos,
            "eos_token_id": sp.eos}
    d = {**otter(text, cross_attn_every_n_layers=1), "vision_config": vision, "vis_dim": 32, "perceiver_depth": 1,
         "perceiver_heads": 2, "perceiver_dim_head": 8, "perceiver_num_latents": 4, "xattn_heads": 2,
         "xattn_dim_head": 8}
    cfg = dataclasses.replace(OtterConfig.from_hf_dict(d), tokens=SpecialTokens(
        media=sp.media, endofchunk=sp.endofchunk, answer=sp.answer, pad=sp.pad, bos=sp.bos, eos=sp.eos))
    model = Otter(cfg, Policy(), rngs=nnx.Rngs(0))
    # Open the gates a little so the images change the text (at init they are exactly zero).
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if "gate" in str(path[-1]):
            var.set_value(var.get_value() + 0.5)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(model, cfg, str(out), tokenizer_dir=str(TOKENIZER_DIR))
    return str(out)


@pytest.fixture(scope="session")
def tiny_sets(tmp_path_factory):
    from otter_jax.evaluate.tiny_sets import write_tiny_sets

    return str(write_tiny_sets(tmp_path_factory.mktemp("sets")))


@pytest.fixture(scope="session")
def loaded(tiny_checkpoint):
    """(model, tokenizer) loaded the way the evaluator loads them."""
    import ml_collections

    from otter_jax.evaluate.config import defaults
    from otter_jax.evaluate.runner import load_model

    c = defaults()
    c.checkpoint = tiny_checkpoint
    return load_model(ml_collections.ConfigDict(c))
