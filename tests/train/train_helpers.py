"""Helpers for the trainer tests: a tiny synthetic-data config, the demo store, a shared compilation cache.

Not a conftest.py (a second `conftest` module would shadow tests/conftest.py). The persistent compilation cache
(one folder per test session, set up for the whole session in tests/conftest.py) lets the several train() runs of
these tests, and the worker processes of the distributed test, compile each distinct step program once. The worker
scripts import this module without tests/conftest.py: they find the folder in OTTER_TEST_COMPILE_CACHE.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import ml_collections
import pytest

CACHE_DIR = os.environ.get("OTTER_TEST_COMPILE_CACHE") or tempfile.mkdtemp(prefix="otter-jax-cc-")
os.environ["OTTER_TEST_COMPILE_CACHE"] = CACHE_DIR
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def tiny_model(vocab_size: int = 64) -> dict:
    from otter_jax.models import presets

    text = {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": False}
    d = presets.otter(text, cross_attn_every_n_layers=1)
    d["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28)
    d.update(vis_dim=32, perceiver_depth=1, perceiver_heads=2, perceiver_dim_head=8, perceiver_num_latents=4,
             xattn_heads=2, xattn_dim_head=8)
    return d


def tiny_config(workdir, **sections) -> ml_collections.ConfigDict:
    """Synthetic data, 8 rows per step on a (2, 2, 2) mesh, checkpoints every 2 steps; `sections` update parts."""
    from otter_jax.train import config as C

    c = C.defaults()
    c.model = ml_collections.ConfigDict(tiny_model())
    c.workdir = str(workdir)
    c.mesh.update(data=2, fsdp=2, tensor=2)
    c.data.update(source="synthetic", max_seq_len=32, image_size=28, synthetic_images=2)
    c.train.update(steps=6, global_batch_size=8, log_every=1, eval_batches=1, progress=False)
    c.optim.update(lr=1e-2, warmup_steps=0, schedule="cosine")
    c.checkpoint.update(every=2, keep=3)
    for name, values in sections.items():
        c[name].update(values)
    return C.validate(c)


_CACHE: dict[str, object] = {}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A folder laid out as `launch/demo.sh` makes it: data/ (demo files + tokenizer) and store/."""
    from otter_jax.data.demo import write_demo
    from otter_jax.data.ingest import build_store

    if "demo_root" not in _CACHE:
        root = tmp_path_factory.mktemp("demo_run")
        write_demo(root / "data")
        build_store(root / "data" / "demo.yaml", root / "store", strict=True, log=lambda s: None)
        _CACHE["demo_root"] = root
    return _CACHE["demo_root"]


def store_config(workdir, demo_root, **sections) -> ml_collections.ConfigDict:
    """tiny_config on the real demo store: all four groups (14, 8, 5 and 5 queries), weights = group sizes. One
    media of one frame, so every group has the same vision shape and the step compiles once."""
    from otter_jax.train import config as C

    c = tiny_config(workdir)
    c.model = ml_collections.ConfigDict(tiny_model(vocab_size=640))
    root = Path(demo_root)
    c.data.update(source="store", store=str(root / "store"), tokenizer=str(root / "data" / "tokenizer"),
                  max_seq_len=96, max_media=1, num_frames=1, num_threads=1, seed=1)
    c.train.eval_batches = 0  # keeps the multi-process test to one compiled program per run
    for name, values in sections.items():
        c[name].update(values)
    return C.validate(c)
