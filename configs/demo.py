"""Demo: a tiny Otter (LLaMA-style) trained on the bundled demo data on CPU in a few minutes.

Upstream recipe (frozen vision tower and LM; the perceiver, gated cross-attention and embeddings learn) at a toy
size and a high learning rate: the point is to watch the answer-token loss fall as it memorises the 32 demo
instructions. Paths default to what `launch/demo.sh` writes; `get_config("DIR")` puts everything under DIR instead.
"""
import ml_collections

from otter_jax.models import presets
from otter_jax.train.config import defaults


def tiny_otter(vocab_size: int = 640, image_size: int = 56) -> dict:
    text = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size,
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "hidden_act": "silu"}
    d = presets.otter(text, cross_attn_every_n_layers=2, max_num_frames=8)
    d["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=14)
    d.update(vis_dim=64, perceiver_depth=2, perceiver_heads=4, perceiver_dim_head=16, perceiver_num_latents=8,
             xattn_heads=4, xattn_dim_head=32, xattn_ff_mult=2)
    return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    root = arg or "runs/demo"
    c = defaults()
    c.model = tiny_otter()
    c.policy = dict(dtype="float32", param_dtype="float32", remat="none")
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.workdir = f"{root}/train"
    c.data.update(source="store", store=f"{root}/store", tokenizer=f"{root}/data/tokenizer", max_seq_len=144,
                  image_size=56, max_media=4, num_frames=8, num_threads=2)
    c.train.update(steps=300, global_batch_size=8, log_every=25, eval_every=100, eval_batches=4)
    c.optim.update(lr=2e-3, schedule="cosine", warmup_steps=20, end_lr_ratio=0.1, weight_decay=0.1)
    c.checkpoint.update(every=100, keep=2)
    return c
