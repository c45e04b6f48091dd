"""Ingestion into the store: round trips from JSON / parquet / TFRecord, resume after a kill, bad inputs."""
import json

import numpy as np
import pytest

from data_helpers import b64, demo_dir, demo_store, ins, photo_jpeg, write_dataset, write_yaml  # noqa: F401
from otter_jax.data import ingest, mimicit
from otter_jax.data.bad_input import BadRecord
from otter_jax.data.store import Store

QUIET = dict(log=lambda s: None)


def test_demo_store_covers_all_groups(demo_store):
    store = Store(demo_store)
    groups = {d["group"] for d in store.datasets}
    assert groups == {"IMAGE_TEXT", "IMAGE_TEXT_IN_CONTEXT", "VIDEO_TEXT", "TEXT_ONLY"}
    assert store.manifest["skipped"] == {}
    rec = store.instruction("DEMO_ICL_INS_00")
    assert [c.decode() for c in rec["context_ids"]] == ["DEMO_ICL_INS_01", "DEMO_ICL_INS_02"]
    assert [store.instructions[int(i)]["id"].decode() for i in rec["context_index"]] == ["DEMO_ICL_INS_01",
                                                                                          "DEMO_ICL_INS_02"]
    vid = store.instruction("DEMO_VID_INS_07_0")
    assert len(vid["image_ids"]) == 8 and store.images[int(vid["image_index"][3])]["id"] == b"DEMO_VID_rocket_0003"


def test_fast_record_reader_equals_tfds_data_source(demo_store):
    """Store.images/instructions parse tf.Example bytes themselves; every record must equal TFDS's decoding."""
    store = Store(demo_store)
    for kind in ("images", "instructions"):
        fast, ref = getattr(store, kind), store.tfds_source(kind)
        assert len(fast) == len(ref) > 0
        for i in range(len(ref)):
            want = {k: (list(v) if isinstance(v, (list, np.ndarray)) else v) for k, v in ref[i].items()}
            assert fast[i] == want, (kind, i)


def test_round_trip_json_parquet_tfrecord_keeps_original_bytes(tmp_path):
    from syphus import schema

    jpg, png = photo_jpeg("coffee.png"), photo_jpeg("astronaut.png", mode="RGBA", fmt="PNG")
    doc = write_dataset(tmp_path, "J", "IMAGE_TEXT", {"J1": ins("q1?", "a1.", ["IJ"])}, {"IJ": b64(jpg)})
    write_dataset(tmp_path, "P", "IMAGE_TEXT_IN_CONTEXT",
                  {"P1": ins("q2?", "a2.", ["IP"]), "P2": ins("q3?", "a3.", ["IJ"])}, {"IP": b64(png)},
                  train_config={"P2": ["P1"]}, images_format="parquet", yaml_doc=doc)
    recs = [schema.InstructionRecord("T1", "q4?", "a4.", ["IT"], [photo_jpeg("rocket.jpg")], group="VIDEO_TEXT"),
            schema.InstructionRecord("T2", "q5?", "a5.", ["IT"], [], rel_ins_ids=["T1"], group="VIDEO_TEXT")]
    schema.write_tfrecord(tmp_path / "t.tfrecord", recs)
    doc["VIDEO_TEXT"] = {"T": {"tfrecord_path": "t.tfrecord"}}
    m = ingest.build_store(write_yaml(tmp_path, doc), tmp_path / "store", strict=True, **QUIET)
    store = Store(tmp_path / "store")
    assert m["n_images"] == 3 and m["n_instructions"] == 5
    assert store.image("IJ")["image"] == jpg and store.image("IP")["image"] == png
    assert store.image("IT")["image"] == recs[0].images[0]
    assert list(store.queries("P")) == [store.instruction_index("P2")]  # the train config defines the queries
    t2 = store.instruction("T2")
    assert t2["instruction"] == b"q5?" and list(t2["context_index"]) == [store.instruction_index("T1")]
    assert store.instruction("J1")["source"].decode() == str(tmp_path / "J_ins.json")


def _many(tmp_path, n=9):
    images = {f"I{i}": b64(photo_jpeg(size=24 + i)) for i in range(n)}
    data = {f"Q{i}": ins(f"question {i}?", f"answer {i}.", [f"I{i}"]) for i in range(n)}
    return write_yaml(tmp_path, write_dataset(tmp_path, "M", "IMAGE_TEXT", data, images))


def test_resume_after_kill_gives_the_same_store(tmp_path, monkeypatch):
    yaml_path = _many(tmp_path)
    clean = Store(tmp_path / "clean") if ingest.build_store(yaml_path, tmp_path / "clean", chunk_items=2, **QUIET) \
        else None
    real, calls = mimicit.check_image_header, {"n": 0}

    def dying(*a):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # killed mid-way through chunk 3
        return real(*a)

    monkeypatch.setattr(mimicit, "check_image_header", dying)
    with pytest.raises(KeyboardInterrupt):
        ingest.build_store(yaml_path, tmp_path / "resumed", chunk_items=2, **QUIET)
    monkeypatch.setattr(mimicit, "check_image_header", real)
    lines = []
    ingest.build_store(yaml_path, tmp_path / "resumed", chunk_items=2, log=lines.append)
    assert any("resuming after 2 committed chunks (4 items)" in line for line in lines)
    resumed = Store(tmp_path / "resumed")
    ids = lambda s, src: [src[i]["id"] for i in range(len(src))]  # noqa: E731
    assert ids(resumed, resumed.images) == ids(clean, clean.images) == [f"I{i}".encode() for i in range(9)]
    assert [resumed.images[i]["image"] for i in range(9)] == [clean.images[i]["image"] for i in range(9)]
    assert not (tmp_path / "resumed" / "staging").exists()
    # idempotent: a finished store is left alone; another config is refused
    before = (tmp_path / "resumed" / "manifest.json").stat().st_mtime_ns
    lines.clear()
    ingest.build_store(yaml_path, tmp_path / "resumed", log=lines.append)
    assert "nothing to do" in lines[-1] and (tmp_path / "resumed" / "manifest.json").stat().st_mtime_ns == before
    (tmp_path / "M_ins.json").write_text(json.dumps({"meta": {}, "data": {"Q0": ins("x?", "y.", ["I0"])}}))
    with pytest.raises(ValueError, match="other inputs"):
        ingest.build_store(yaml_path, tmp_path / "resumed", **QUIET)


def _bad_dataset(tmp_path, kind):
    """One dataset holding a good record plus one bad input of `kind`; returns (yaml, bad record id, file)."""
    good = {"I_ok": b64(photo_jpeg())}
    data = {"Q_ok": ins("fine?", "yes.", ["I_ok"])}
    images, config, bad_id, file = dict(good), None, None, "M_ins.json"
    if kind == "corrupt_base64":
        images["I_bad"], bad_id, file = "@@not base64@@", "I_bad", "M_img.json"
    elif kind == "bad_image":
        images["I_bad"], bad_id, file = b64(b"GIF89a but not really an image"), "I_bad", "M_img.json"
    elif kind == "missing_image":
        data["Q_bad"], bad_id = ins("q?", "a.", ["I_nowhere"]), "Q_bad"
    elif kind == "dangling_context":
        data["Q_bad"], config, bad_id, file = ins("q?", "a.", ["I_ok"]), {"Q_ok": [], "Q_bad": ["Q_gone"]}, "Q_bad", \
            "M_ins.json"
    elif kind == "empty_text":
        data["Q_bad"], bad_id = ins("q?", "   ", ["I_ok"]), "Q_bad"
    elif kind == "bad_utf8":
        data["Q_bad"], bad_id = ins("q \ud800?", "a.", ["I_ok"]), "Q_bad"
    doc = write_dataset(tmp_path, "M", "IMAGE_TEXT", data, images, train_config=config)
    return write_yaml(tmp_path, doc), bad_id, str(tmp_path / file)


KINDS = ["corrupt_base64", "bad_image", "missing_image", "dangling_context", "empty_text", "bad_utf8"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_strict_names_record_and_file(tmp_path, kind):
    yaml_path, bad_id, file = _bad_dataset(tmp_path, kind)
    with pytest.raises(BadRecord) as err:
        ingest.build_store(yaml_path, tmp_path / "store", strict=True, **QUIET)
    assert err.value.reason == kind and err.value.record_id == bad_id and err.value.file == file
    assert bad_id in str(err.value) and file in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_lenient_skips_and_counts(tmp_path, kind):
    yaml_path, _, _ = _bad_dataset(tmp_path, kind)
    m = ingest.build_store(yaml_path, tmp_path / "store", **QUIET)
    assert m["skipped"] == {kind: 1} and m["n_instructions"] == 1  # a dropped image was used by no instruction
    assert Store(tmp_path / "store").instruction("Q_ok")["answer"] == b"yes."


def test_dropped_image_cascades_to_its_instructions_and_their_followers(tmp_path):
    data = {"Q_ok": ins("fine?", "yes.", ["I_ok"]), "Q_img": ins("q?", "a.", ["I_bad"]),
            "Q_next": ins("then?", "b.", ["I_ok"])}
    doc = write_dataset(tmp_path, "M", "IMAGE_TEXT", data, {"I_ok": b64(photo_jpeg()), "I_bad": "%%%"},
                        train_config={"Q_ok": [], "Q_img": [], "Q_next": ["Q_img"]})
    m = ingest.build_store(write_yaml(tmp_path, doc), tmp_path / "store", **QUIET)
    assert m["skipped"] == {"corrupt_base64": 1, "missing_image": 1, "dangling_context": 1}
    assert m["n_instructions"] == 1


def test_tfrecord_bad_utf8_and_schema_errors(tmp_path):
    from syphus import schema

    good = schema.InstructionRecord("T_ok", "q?", "a.", ["IT"], [photo_jpeg()], group="IMAGE_TEXT")
    bad = schema.InstructionRecord("T_bad", "q?", "a.", ["IT"], [], group="IMAGE_TEXT").to_example()
    bad.features.feature["answer"].bytes_list.value[0] = b"\xff\xfe not utf-8"
    schema.write_tfrecord_bytes(tmp_path / "t.tfrecord", [good.to_example_bytes(), bad.SerializeToString()])
    yaml_path = write_yaml(tmp_path, {"IMAGE_TEXT": {"T": {"tfrecord_path": "t.tfrecord"}}})
    with pytest.raises(BadRecord, match=r"bad_utf8: record 'T_bad' in .*t\.tfrecord"):
        ingest.build_store(yaml_path, tmp_path / "strict", strict=True, **QUIET)
    m = ingest.build_store(yaml_path, tmp_path / "lenient", **QUIET)
    assert m["skipped"] == {"bad_utf8": 1} and m["n_instructions"] == 1
    assert np.asarray(Store(tmp_path / "lenient").queries("T")).tolist() == [0]


def test_cli_demo_build_inspect(tmp_path, capsys):
    from otter_jax.cli import main

    assert main(["data", "demo", "--out", str(tmp_path / "demo")]) == 0
    assert main(["data", "build", "--yaml", str(tmp_path / "demo" / "demo.yaml"), "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "s"), "--id", "DEMO_SD_INS_06_0", "--episodes", "1",
                 "--tokenizer", str(tmp_path / "demo" / "tokenizer")]) == 0
    out = capsys.readouterr().out
    assert "32 instructions, 26 images" in out and '"DEMO_IMG_moto_right"' in out
    assert "[DEMO_VID] media=[1] vision_x=[1, 8, 3, 28, 28]" in out
