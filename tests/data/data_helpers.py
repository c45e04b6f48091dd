"""Helpers for the data tests: tiny MIMIC-IT files written from real photographs."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# Fixtures live here, not in a conftest.py: a second `conftest` module would shadow tests/conftest.py for the
# `from conftest import ...` lines of other test modules. Test modules import the fixtures they use; the cache
# keeps the demo store to one build per session even though each importing module registers its own fixture.
_CACHE: dict[str, object] = {}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from otter_jax.data.demo import write_demo

    if "demo_dir" not in _CACHE:
        out = tmp_path_factory.mktemp("demo")
        write_demo(out)
        _CACHE["demo_dir"] = out
    return _CACHE["demo_dir"]


@pytest.fixture(scope="session")
def demo_store(demo_dir, tmp_path_factory) -> Path:
    from otter_jax.data.ingest import build_store

    if "demo_store" not in _CACHE:
        out = tmp_path_factory.mktemp("store") / "demo"
        build_store(demo_dir / "demo.yaml", out, strict=True, log=lambda s: None)
        _CACHE["demo_store"] = out
    return _CACHE["demo_store"]


@pytest.fixture(scope="session")
def demo_tokenizer(demo_dir):
    from otter_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(demo_dir / "tokenizer")


def absl_flags_parsed():
    """grain's mp_prefetch reads absl flags, which pytest never parses."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def photo_jpeg(name: str = "chelsea.png", size: int = 64, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A small real photograph re-encoded in the given mode/format."""
    from skimage import data as skdata

    im = Image.open(Path(skdata.__file__).parent / name).convert("RGB")
    im.thumbnail((size, size))
    if mode == "I;16":  # a true 16-bit greyscale photo: full 0..65535 range
        im = Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)
    else:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def write_dataset(root: Path, name: str, group: str, instructions: dict, images: dict[str, str] | None = None,
                  train_config: dict | None = None, images_format: str = "json", yaml_doc: dict | None = None) -> dict:
    """Write one dataset's files (images given as base64 strings) and add it to a data-YAML dict (returned)."""
    root.mkdir(parents=True, exist_ok=True)
    entry: dict = {"mimicit_path": f"{name}_ins.json"}
    (root / entry["mimicit_path"]).write_text(json.dumps({"meta": {}, "data": instructions}))
    if images is not None:
        if images_format == "json":
            entry["images_path"] = f"{name}_img.json"
            (root / entry["images_path"]).write_text(json.dumps(images))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            entry["images_path"] = f"{name}_img.parquet"
            ids = list(images)
            table = pa.table({"base64": [images[i] for i in ids], "id": ids}).replace_schema_metadata(
                {b"pandas": json.dumps({"index_columns": ["id"]}).encode()})
            pq.write_table(table, root / entry["images_path"])
    if train_config is not None:
        entry["train_config_path"] = f"{name}_train.json"
        (root / entry["train_config_path"]).write_text(json.dumps(train_config))
    doc = yaml_doc if yaml_doc is not None else {}
    doc.setdefault(group, {})[name] = entry
    return doc


def write_yaml(root: Path, doc: dict) -> Path:
    p = root / "data.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def ins(instruction: str, answer: str, image_ids=(), rel=()) -> dict:
    return {"instruction": instruction, "answer": answer, "image_ids": list(image_ids), "rel_ins_ids": list(rel)}


def first_batches(it, n: int) -> list[dict]:
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]
