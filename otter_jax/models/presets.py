"""HF-style config dicts of the released Otter / OpenFlamingo shapes (vision tower, language models).

The `configs/*.py` experiment files assemble these; an HF dict is the one format our config parser reads, so a
preset and a released `config.json` describe a model the same way. Shapes are the public model cards' values.
"""
from __future__ import annotations

from typing import Any


def clip_vit_l14() -> dict[str, Any]:
    """CLIP ViT-L/14 at 224 px (Otter and OpenFlamingo): 256 patch tokens x 1024."""
    return {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def llama_7b(vocab_size: int = 32004) -> dict[str, Any]:
    """LLaMA-7B with Otter's four added tokens (32000 + 4)."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size,
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}


def _mpt(d_model: int, n_heads: int, n_layers: int, expansion_ratio: int = 4, vocab_size: int = 50432) -> dict:
    return {"model_type": "mpt", "architectures": ["MPTForCausalLM"], "vocab_size": vocab_size, "d_model": d_model,
            "n_heads": n_heads, "n_layers": n_layers, "expansion_ratio": expansion_ratio, "no_bias": True,
            "norm_type": "low_precision_layernorm", "layer_norm_eps": 1e-5, "logit_scale": None,
            "tie_word_embeddings": True, "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch"}}


def mpt_7b() -> dict[str, Any]:
    """MPT-7B: vocabulary padded to 50432, so Otter's added tokens fit without resizing."""
    return _mpt(d_model=4096, n_heads=32, n_layers=32)


def mpt_1b() -> dict[str, Any]:
    """MPT-1B-RedPajama-200B shape (the language model of OpenFlamingo-3B), in MPT naming."""
    return _mpt(d_model=2048, n_heads=16, n_layers=24)


def otter(text_config: dict[str, Any], cross_attn_every_n_layers: int, max_num_frames: int | None = None
          ) -> dict[str, Any]:
    """An Otter config.json dict with the upstream perceiver / cross-attention constants (not written out, as in
    released configs)."""
    d = {"model_type": "otter", "vision_config": clip_vit_l14(), "text_config": text_config,
         "cross_attn_every_n_layers": cross_attn_every_n_layers, "tie_word_embeddings": False,
         "only_attend_previous": True}
    if max_num_frames:
        d["max_num_frames"] = max_num_frames
    return d


def pod_policy(**changes) -> dict[str, Any]:
    """How the 7B presets run on accelerators (each choice's memory is measured in README "Fitting 7B on a pod"):
    bf16 compute; frozen towers stored in bf16, trainable parameters fp32 masters; each decoder layer and gated block
    rematerialised, the three layers before each gated block scanned (fewer live buffers: 8 sequences a v5e chip
    fit); attention in blocks of 512 queries; the loss 256 positions at a time. `media_budget` stays 0
    (every media slot encoded): what a MIMIC-IT mix puts in each row is not measured, and the vision work it could
    skip is under 1% of an Otter-MPT7B step (README "Fitting 7B on a pod")."""
    return {"dtype": "bfloat16", "param_dtype": "float32", "frozen_param_dtype": "bfloat16",
            "remat": "nothing_saveable", "attention": "chunked", "attention_chunk": 512, "loss_chunk": 256,
            "scan_group_layers": True, "offload_layer_inputs": False, "media_budget": 0.0, **changes}
