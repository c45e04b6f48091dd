"""The language models alone against HF transformers' PyTorch implementations, on configs the golden fixtures do not
cover: MPT with head counts that are not powers of two (ALiBi slope interleaving) and LLaMA with GQA 8:2.

With the gates at zero (their initial value) a gated block is the identity, so Otter on text equals its LM."""
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from otter_jax import sharding as S  # noqa: E402
from otter_jax.convert.otter_hf import param_shapes, arrays_to_torch, torch_to_arrays  # noqa: E402
from otter_jax.models import Otter, OtterConfig, Policy, SpecialTokens  # noqa: E402
from otter_jax.models.presets import otter  # noqa: E402

VISION = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "hidden_act": "quick_gelu"}
SMALL = dict(vis_dim=32, perceiver_depth=1, perceiver_heads=2, perceiver_dim_head=8, perceiver_num_latents=4,
             xattn_heads=2, xattn_dim_head=8)


def _otter_from_hf_lm(text_config: dict, hf_model, every: int) -> Otter:
    d = {**otter(text_config, cross_attn_every_n_layers=every), "vision_config": VISION, **SMALL}
    cfg = OtterConfig.from_hf_dict(d)
    cfg = dataclasses.replace(cfg, tokens=SpecialTokens(media=text_config["vocab_size"] - 1, endofchunk=0, answer=0))
    fresh = Otter(cfg, Policy(), rngs=nnx.Rngs(0))  # vision, perceiver and (zero-gated) blocks: random
    tensors = arrays_to_torch(S.flat_arrays(fresh), cfg)
    for key, value in hf_model.state_dict().items():
        parts = key.split(".")
        if parts[1] in ("blocks", "layers"):  # transformer.blocks.{i}.X -> ...blocks.{i}.decoder_layer.X
            parts.insert(3, "decoder_layer")
        name = "lang_encoder." + ".".join(parts)
        if name in tensors:
            tensors[name] = value.detach().numpy()
    abstract = nnx.eval_shape(lambda: Otter(cfg, Policy(), rngs=nnx.Rngs(0)))
    return S.place(abstract, torch_to_arrays(tensors, cfg, param_shapes(abstract)))


def _compare(model: Otter, hf_model, vocab: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab - 1, size=(2, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    vision_x = rng.standard_normal((2, 1, 1, 3, 28, 28)).astype(np.float32)
    ours = np.asarray(model(vision_x, ids, attention_mask=mask).logits)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - ref[keep]).max() <= 1e-4


@pytest.mark.parametrize("n_heads", [6, 12])
def test_mpt_alibi_any_head_count(n_heads):
    torch.manual_seed(0)
    cfg = transformers.MptConfig(d_model=48, n_heads=n_heads, n_layers=2, expansion_ratio=4, max_seq_len=64,
                                 vocab_size=96, no_bias=True, attn_config={"alibi": True, "alibi_bias_max": 8})
    hf = transformers.MptForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so that a missed weight would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.rand_like(p) * 0.4 - 0.2)
    text_config = {"model_type": "mpt", "vocab_size": 96, "d_model": 48, "n_heads": n_heads, "n_layers": 2,
                   "expansion_ratio": 4, "no_bias": True, "attn_config": {"alibi": True, "alibi_bias_max": 8}}
    _compare(_otter_from_hf_lm(text_config, hf, every=2), hf, 96)


def test_llama_gqa_and_tail_layers():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
                                   tie_word_embeddings=False, initializer_range=0.1)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    text_config = {"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
                   "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-6}
    model = _otter_from_hf_lm(text_config, hf, every=2)  # 1 scanned group of 2 + 1 tail layer
    assert model.cfg.num_groups == 1 and model.cfg.num_tail_layers == 1
    _compare(model, hf, 96)
