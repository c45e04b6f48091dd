"""OTTER-Video-LLaMA7B(-DenseCaption): CLIP ViT-L/14 + LLaMA-7B (vocab 32004), cross-attention every 4th layer,
per-frame embeddings for up to `max_num_frames` frames (arg overrides, e.g. `otter_video_llama7b.py:16`); training
clips are `data.num_frames` = 16 frames. Policy and mesh for pods as in `otter_image_mpt7b.py`.
"""
import ml_collections

from otter_jax.models import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    frames = int(arg) if arg else 128
    c = ml_collections.ConfigDict()
    c.model = presets.otter(presets.llama_7b(), cross_attn_every_n_layers=4, max_num_frames=frames)
    c.policy = presets.pod_policy(attention="splash")  # Pallas kernel on TPU, chunked XLA elsewhere
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.data = dict(max_seq_len=2048, num_frames=min(16, frames))
    return c
