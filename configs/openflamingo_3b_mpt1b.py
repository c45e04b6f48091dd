"""An OpenFlamingo-3B-like Otter: CLIP ViT-L/14 + MPT-1B, gated cross-attention before every layer."""
import ml_collections

from otter_jax.models import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = presets.otter(presets.mpt_1b(), cross_attn_every_n_layers=1)
    c.policy = dict(dtype="bfloat16", param_dtype="float32", remat="nothing_saveable")
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return c
