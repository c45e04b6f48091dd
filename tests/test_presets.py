"""Full-size presets, checked without allocating (jax.eval_shape): shapes, parameter counts, per-device bytes.

Expected counts are derived here by hand from the architecture, independently of the model code:
  perceiver (D=1024, 6 layers, 8x64 heads, 64 latents, ff x4)  = 64*1024 + 6*10_491_904 + 2*1024 = 63_019_008
  gated block (d, D=1024, 8x64 heads, ff x4) = 2 + 2d + 512d + 1024*1024 + 512d + 2d + 8d^2
For OTTER-Video-LLaMA7B: 63_019_008 + 128*1024 (frame_embs) + 8 blocks (d=4096) + 2 * 32004*4096 (embeddings and
untied head) = 1_441_142_800 trainable, i.e. the "1.441B" of upstream training logs (1_441_011_728 without frames).
"""
import jax
import pytest
from flax import nnx

from otter_jax import config_files
from otter_jax import sharding as S
from otter_jax.convert.otter_hf import abstract_model
from otter_jax.models.trainable import is_trainable

PERCEIVER = 64 * 1024 + 6 * 10_491_904 + 2 * 1024
CLIP_L14 = (3 * 14 * 14 * 1024 + 1024 + 257 * 1024 + 4 * 1024  # patch, class, positions, pre/post LN
            + 24 * (4 * (1024 * 1024 + 1024) + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024))


def gated_block(d: int) -> int:
    return 2 + 2 * d + 512 * d + 1024 * 1024 + 512 * d + 2 * d + 8 * d * d


def counts(spec: str):
    c = config_files.load(spec)
    cfg = config_files.model_config(c, spec)
    model = abstract_model(cfg, config_files.policy(c))
    total = trainable = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        n = var.get_value().size
        total += n
        trainable += n * is_trainable(".".join(map(str, path)))
    return cfg, model, total, trainable


def test_otter_video_llama7b():
    cfg, model, total, trainable = counts("configs/otter_video_llama7b.py")
    assert cfg.xattn_layer_indices == [3, 7, 11, 15, 19, 23, 27, 31]
    assert trainable == PERCEIVER + 128 * 1024 + 8 * gated_block(4096) + 2 * 32004 * 4096 == 1_441_142_800
    llama_layers = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096)
    assert total == trainable + CLIP_L14 + llama_layers + 4096
    # Layers really are stacked: 8 groups of 4 decoder layers, one array per parameter kind.
    assert model.groups.layers[0].mlp.up_proj.kernel.shape == (8, 4096, 11008)
    # fsdp over 8 devices: every big matrix is split 8 ways, so a device holds ~1/8 of the fp32 parameters.
    mesh = S.make_mesh(data=1, fsdp=8, tensor=1)
    per_device = S.per_device_bytes(nnx.state(model), mesh)
    assert total * 4 / 8 <= per_device <= total * 4 / 8 * 1.01


def test_otter_image_mpt7b():
    cfg, model, total, trainable = counts("configs/otter_image_mpt7b.py")
    assert cfg.tied_embeddings and model.lm_head is None
    assert trainable == PERCEIVER + 8 * gated_block(4096) + 50432 * 4096
    mpt_layers = 32 * (3 * 4096 * 4096 + 4096 * 4096 + 2 * 4096 * 16384 + 2 * 4096)
    assert total == trainable + CLIP_L14 + mpt_layers + 4096
    assert 8.0e9 < total < 8.2e9  # MPT-7B (6.65B) + ViT-L (0.30B) + perceiver + 8 blocks (1.12B)


def test_openflamingo_3b_like_mpt1b():
    cfg, model, total, trainable = counts("configs/openflamingo_3b_mpt1b.py")
    assert cfg.num_groups == 24 and cfg.num_tail_layers == 0
    assert trainable == PERCEIVER + 24 * gated_block(2048) + 50432 * 2048
    assert 2.5e9 < total < 2.6e9  # MPT-1B (1.31B) + ViT-L + perceiver + 24 blocks; ~1.05B trainable
    assert 1.04e9 < trainable < 1.06e9


def test_compile_size_does_not_grow_with_depth(golden_model):
    """The scanned decoder traces to the same program for 2 and 8 groups."""
    import dataclasses

    import numpy as np

    from otter_jax.models import Otter, Policy

    _, cfg = golden_model("otter_llama_tiny")

    def n_eqns(layers: int) -> int:
        text = dataclasses.replace(cfg.text, num_hidden_layers=layers)
        c = dataclasses.replace(cfg, text=text)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Otter(c, Policy(), rngs=nnx.Rngs(0))))
        vx = jax.ShapeDtypeStruct((1, 1, 1, 3, 28, 28), np.float32)
        ids = jax.ShapeDtypeStruct((1, 8), np.int32)
        jaxpr = jax.make_jaxpr(lambda s, v, i: nnx.merge(graphdef, s)(v, i).logits)(state, vx, ids)
        return len(jaxpr.jaxpr.eqns)

    assert n_eqns(4) == n_eqns(16)


def test_presets_reject_unknown_keys_cleanly():
    with pytest.raises(FileNotFoundError, match="no_such.py"):
        config_files.load("configs/no_such.py")
