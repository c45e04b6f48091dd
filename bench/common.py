"""Shared by the benchmarks: the `bench-small` shape of ../shared/bench/bench_small.json as an Otter config, and
small timing helpers. Benchmarks print ours, the baseline and the ratio from one run on one machine."""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import time
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH_SHAPE = ROOT.parent / "shared" / "bench" / "bench_small.json"


def load_shape(path: str | os.PathLike = BENCH_SHAPE) -> dict:
    with open(path) as fh:
        return json.load(fh)


def otter_hf_dict(shape: dict) -> dict:
    """An Otter config.json dict for the shape (LLaMA text model, upstream perceiver/xattn sizes made explicit)."""
    p, x = shape["perceiver"], shape["cross_attention"]
    vision = {"model_type": "clip_vision_model", **shape["vision"], "layer_norm_eps": 1e-5}
    text = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2, **shape["text_llama"]}
    return {"model_type": "otter", "vision_config": vision, "text_config": text,
            "cross_attn_every_n_layers": x["every_n_layers"], "tie_word_embeddings": False,
            "vis_dim": shape["vision"]["hidden_size"], "perceiver_depth": p["depth"], "perceiver_heads": p["heads"],
            "perceiver_dim_head": p["dim_head"], "perceiver_num_latents": p["num_latents"],
            "perceiver_ff_mult": p["ff_mult"], "xattn_heads": x["heads"], "xattn_dim_head": x["dim_head"],
            "xattn_ff_mult": x["ff_mult"]}


def median_time(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
