"""OTTER-Image-MPT7B: CLIP ViT-L/14 + MPT-7B, gated cross-attention before every 4th layer (3, 7, ..., 31).

Policy and mesh for pods (numbers from `otter-jax plan --topology`, README "Fitting 7B on a pod"): bf16 compute,
frozen towers stored in bf16 and trainable parameters in fp32, per-layer remat, chunked attention (ALiBi built
block by block), chunked loss, pure FSDP over the slice with the batch over every chip.
"""
import ml_collections

from otter_jax.models import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = presets.otter(presets.mpt_7b(), cross_attn_every_n_layers=4)
    c.policy = presets.pod_policy()
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.data = dict(max_seq_len=2048, max_media=3)
    return c
