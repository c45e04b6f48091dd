import subprocess
import sys

import pytest

from syphus.schema import Example, InstructionRecord, SchemaError, read_tfrecord, write_tfrecord


def _rec(i=1, **kw):
    base = dict(ins_id=f"LA_INS_{i:05d}", instruction="Qué ves? 图片里有什么", answer="A cat.",
                image_ids=["LA_IMG_1", "LA_IMG_2"], images=[b"\xff\xd8\x00jpeg", b"\x89PNG\x00"],
                rel_ins_ids=["LA_INS_00002"], in_context_ids=[], task="LA", group="IMAGE_TEXT", lang="en")
    base.update(kw)
    return InstructionRecord(**base)


def test_example_roundtrip_and_feature_types():
    rec = _rec(group="IMAGE_TEXT_IN_CONTEXT", in_context_ids=["LA_INS_00003", "LA_INS_00004"])
    data = rec.to_example_bytes()
    assert InstructionRecord.from_example_bytes(data) == rec
    ex = Example.FromString(data)
    feats = ex.features.feature
    assert sorted(feats.keys()) == sorted(["ins_id", "instruction", "answer", "image_ids", "images", "rel_ins_ids",
                                           "in_context_ids", "task", "group", "lang"])
    assert all(f.WhichOneof("kind") == "bytes_list" for f in feats.values())
    assert list(feats["images"].bytes_list.value) == rec.images
    assert feats["instruction"].bytes_list.value[0].decode() == rec.instruction


def test_tfrecord_roundtrip_and_crc_check(tmp_path):
    recs = [_rec(i) for i in range(1, 6)] + [_rec(9, images=[]), _rec(10, image_ids=[], images=[], group="TEXT_ONLY")]
    path = tmp_path / "x.tfrecord"
    assert write_tfrecord(path, recs) == len(recs)
    assert list(read_tfrecord(path)) == recs
    raw = bytearray(path.read_bytes())
    raw[30] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SchemaError, match=r"x\.tfrecord.*CRC"):
        list(read_tfrecord(path))


@pytest.mark.parametrize("kw,msg", [
    (dict(group="PICTURES"), "group 'PICTURES'"),
    (dict(images=[b"x"]), "parallel"),
    (dict(group="TEXT_ONLY"), "TEXT_ONLY record"),
    (dict(in_context_ids=["LA_INS_00009"]), "IMAGE_TEXT_IN_CONTEXT"),
])
def test_invalid_records_name_the_record(kw, msg):
    with pytest.raises(SchemaError, match=msg) as e:
        _rec(7, **kw).to_example_bytes()
    assert "LA_INS_00007" in str(e.value)


def test_missing_feature_is_reported():
    ex = Example.FromString(_rec().to_example_bytes())
    del ex.features.feature["lang"]
    with pytest.raises(SchemaError, match="missing features.*lang"):
        InstructionRecord.from_example_bytes(ex.SerializeToString())


def test_readable_by_tensorflow(tmp_path):
    """Our hand-framed file must parse with tf.data + tf.train.Example (run in a subprocess: TF is slow to import)."""
    pytest.importorskip("tensorflow")
    path = tmp_path / "tf.tfrecord"
    write_tfrecord(path, [_rec(1), _rec(2)])
    code = ("import tensorflow as tf, sys\n"
            f"ds = tf.data.TFRecordDataset({str(path)!r})\n"
            "exs = [tf.train.Example.FromString(r.numpy()) for r in ds]\n"
            "print(len(exs), exs[1].features.feature['ins_id'].bytes_list.value[0].decode(),"
            " len(exs[0].features.feature['images'].bytes_list.value))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "LA_INS_00002", "2"]
