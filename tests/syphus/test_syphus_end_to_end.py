"""annotations -> syphus run -> syphus export --format tfrecord -> otter_jax's ingest/store reads the episodes."""
import io

import pytest
import yaml
from syphus_helpers import GEN, dc_annotations, endpoint

from syphus.cli import main
from syphus.generate import run_task
from syphus.mimicit import read_instructions
from syphus.prompt import find_spec


def _png(seed: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), ((seed * 37) % 256, (seed * 91) % 256, 120)).save(buf, format="PNG")
    return buf.getvalue()


def test_annotations_to_training_store(server, tmp_path):
    ingest = pytest.importorskip("otter_jax.data.ingest")
    from otter_jax.data.store import Store
    srv = server()
    run_task(find_spec("DC"), dc_annotations(tmp_path / "a.jsonl", 3), tmp_path / "run", GEN, endpoint(srv))
    ins_path = tmp_path / "run" / "DC_instructions.json"
    data = read_instructions(ins_path)
    images = tmp_path / "frames"
    images.mkdir()
    frames = sorted({i for r in data.values() for i in r["image_ids"]})
    for n, i in enumerate(frames):
        (images / f"{i}.png").write_bytes(_png(n))
    assert main(["export", "--format", "tfrecord", "--instructions", str(ins_path), "--images", str(images),
                 "--out", str(tmp_path / "dc.tfrecord")]) == 0
    doc = {"VIDEO_TEXT": {"DC": {"tfrecord_path": "dc.tfrecord"}}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(doc))
    m = ingest.build_store(tmp_path / "data.yaml", tmp_path / "store", strict=True, log=lambda s: None)
    assert m["n_instructions"] == len(data) and m["n_images"] == len(frames)
    store = Store(tmp_path / "store")
    for ins_id, rec in data.items():
        got = store.instruction(ins_id)
        assert got["instruction"].decode() == rec["instruction"] and got["answer"].decode() == rec["answer"]
        assert [store.images[int(k)]["id"].decode() for k in got["image_index"]] == rec["image_ids"]
    assert store.image(frames[1])["image"] == (images / f"{frames[1]}.png").read_bytes()
