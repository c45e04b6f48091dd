"""COCO (Karpathy test) and Flickr30K captioning, CIDEr x100: OpenFlamingo's few-shot protocol (0/4/8/16/32 shots,
random demonstrations from a 2048-example query set, 3 trial seeds, 3 beams, 20 new tokens, length_penalty 0).

    otter-jax eval --config configs/eval/captioning.py:CKPT --config.data_root=/data/eval
    (add --config.fewshot.method=rices for retrieval-based demonstrations)
"""
import ml_collections

from otter_jax.evaluate import presets


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.checkpoint = arg or ""
    c.output_dir = "runs/eval_captioning"
    c.shots = "0,4,8,16,32"
    c.seeds = "42,43,44"
    c.mesh = dict(enabled=True, data=-1, fsdp=1, tensor=1)
    c.tasks = {"coco": presets.coco(), "flickr30k": presets.flickr30k()}
    return c
