"""VQAv2, OK-VQA, TextVQA and VizWiz with the official VQA accuracy: OpenFlamingo's few-shot protocol (0/4/8/16/32
shots, 3 trial seeds, 3 beams, 5 new tokens).

    otter-jax eval --config configs/eval/vqa.py:CKPT --config.data_root=/data/eval [--config.tasks.vizwiz.enabled=False]
"""
import ml_collections

from otter_jax.evaluate import presets


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.checkpoint = arg or ""
    c.output_dir = "runs/eval_vqa"
    c.shots = "0,4,8,16,32"
    c.seeds = "42,43,44"
    c.mesh = dict(enabled=True, data=-1, fsdp=1, tensor=1)
    c.tasks = {"vqav2": presets.vqav2(), "okvqa": presets.okvqa(), "textvqa": presets.textvqa(),
               "vizwiz": presets.vizwiz()}
    return c
