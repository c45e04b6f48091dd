"""OTTER-Image-MPT7B: CLIP ViT-L/14 + MPT-7B, gated cross-attention before every 4th layer (3, 7, ..., 31)."""
import ml_collections

from otter_jax.models import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = presets.otter(presets.mpt_7b(), cross_attn_every_n_layers=4)
    c.policy = dict(dtype="bfloat16", param_dtype="float32", remat="nothing_saveable")
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return c
