"""Every evaluation family on the tiny bundled sets (written into runs/eval_sets = config.data_root on first use).

    otter-jax eval --config configs/eval/demo.py:runs/demo/ckpt

Captioning and VQA run 0- and 4-shot (random demonstrations, seed 42); short decodes keep it fast on CPU. Pairwise
judging needs an OpenAI-compatible endpoint: enable it with --config.tasks.pairwise.enabled=True
--config.judge.base_url=... --config.judge.model=...
"""
import ml_collections

from otter_jax.evaluate import presets


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.checkpoint = arg or ""
    c.data_root = "runs/eval_sets"
    c.write_tiny_sets = True
    c.output_dir = "runs/eval_demo"
    c.batch_size = 8
    c.shots = "0"
    c.seeds = "42"
    tasks = presets.tiny()
    for name in ("coco", "vqav2"):
        tasks[name]["shots"] = "0,4"
    for name, t in tasks.items():  # short answers: this is a smoke run of every format, not a benchmark
        t["num_beams"] = 1 if name not in ("coco",) else 2
        t["max_new_tokens"] = 8
    tasks["pairwise"]["enabled"] = False
    c.tasks = tasks
    return c
