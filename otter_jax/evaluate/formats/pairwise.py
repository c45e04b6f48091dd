"""Pairwise-judged sets: JSONL, one {"id", "image" (path relative to the file's folder or absolute), "question",
"baseline" (the answer of the model we compare against)} per line."""
from __future__ import annotations

import os

from otter_jax.evaluate.example import DataError, Example, TaskData, read_file_bytes
from otter_jax.evaluate.formats.common import limit, load_jsonl, need
from otter_jax.evaluate.paths import absolute


def read_pairwise(path: str, images_root: str = "", max_examples: int = -1) -> TaskData:
    root = images_root or os.path.dirname(absolute(path))
    examples, seen = [], set()
    for n, r in enumerate(load_jsonl(path)):
        rid = str(need(r, "id", path, f"line {n + 1}"))
        if rid in seen:
            raise DataError(f"{path}: duplicate id {rid!r}")
        seen.add(rid)
        image = r.get("image")
        examples.append(Example(id=rid, images=(os.path.join(root, image),) if image else (),
                                question=str(need(r, "question", path, rid)).strip(),
                                answers=(str(need(r, "baseline", path, rid)),)))
    return TaskData(limit(examples, max_examples), [], read_file_bytes, path)
