"""Benchmark evaluation of Otter checkpoints (`otter-jax eval --config configs/eval/X.py`).

Layout: formats/ reads the public file formats into `Example`s; prompts + fewshot build prompts with demonstrations
(random or RICES); engine runs batched, sharded generation / option scoring / image features; journal keeps
per-example predictions (resume); vqa_metric, cider (+ ptb), choice, yesno and judge score them; runner ties it
together and report writes results.json + report.md; tiny_sets writes small sets in every format.
"""
