"""MME (acc + acc+ per task, Perception / Cognition totals) and POPE (random / popular / adversarial: accuracy,
precision, recall, F1, yes-ratio), 0-shot.

    otter-jax eval --config configs/eval/yesno.py:CKPT --config.data_root=/data/eval
"""
import ml_collections

from otter_jax.evaluate import presets


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.checkpoint = arg or ""
    c.output_dir = "runs/eval_yesno"
    c.shots = "0"
    c.fewshot = dict(zero_shot_text_demos=False)
    c.mesh = dict(enabled=True, data=-1, fsdp=1, tensor=1)
    c.tasks = {"mme": presets.mme(), "pope": presets.pope()}
    return c
