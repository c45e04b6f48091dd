"""MMBench (dev TSV; predictions also written for the official server), ScienceQA (test, "The answer is X" parsing)
and SEED-Bench (image questions, option likelihood ranking), 0-shot, Otter's 3-beam decoding.

    otter-jax eval --config configs/eval/multichoice.py:CKPT --config.data_root=/data/eval
    (--config.tasks.mmbench.mode=rank ranks MMBench's options by likelihood instead of parsing an answer)
"""
import ml_collections

from otter_jax.evaluate import presets


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.checkpoint = arg or ""
    c.output_dir = "runs/eval_multichoice"
    c.shots = "0"
    c.fewshot = dict(zero_shot_text_demos=False)
    c.mesh = dict(enabled=True, data=-1, fsdp=1, tensor=1)
    c.tasks = {"mmbench": presets.mmbench(), "scienceqa": presets.scienceqa(),
               "seedbench": presets.seedbench()}
    return c
