"""Upstream file readers: streaming base64 JSON, parquet, data YAML, base64 decoding."""
import json

import pytest

from data_helpers import b64, photo_jpeg, write_dataset, write_yaml
from otter_jax.data import mimicit
from otter_jax.data.bad_input import BadRecord


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_streaming_images_json_matches_json_load(tmp_path, chunk):
    images = {f"IMG_{i}": b64(bytes(range(i, i + 40))) for i in range(20)}
    text = json.dumps(images, indent=2).replace('"IMG_3": "', '"IMG_3":\n  "')
    text = text.replace(images["IMG_5"], images["IMG_5"].replace("_", "\\u005f"))  # escaped chars must decode
    p = tmp_path / "img.json"
    p.write_text(text)
    got = {k: v.decode() for k, v in mimicit.iter_images_json(p, chunk_bytes=chunk)}
    assert got == json.loads(text)
    (tmp_path / "empty.json").write_text("{ }")
    assert list(mimicit.iter_images_json(tmp_path / "empty.json")) == []


def test_streaming_images_json_malformed_names_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"a": "QUJD", "b" "QUJD"}')
    with pytest.raises(ValueError, match="bad.json"):
        list(mimicit.iter_images_json(p))


def test_parquet_and_json_give_same_pairs(tmp_path):
    images = {"X_1": b64(photo_jpeg()), "X_2": b64(photo_jpeg("coffee.png"))}
    write_dataset(tmp_path, "J", "IMAGE_TEXT", {}, images, images_format="json")
    write_dataset(tmp_path, "P", "IMAGE_TEXT", {}, images, images_format="parquet")
    from_json = {k: v for k, v in mimicit.iter_images(tmp_path / "J_img.json")}
    from_parquet = {k: v for k, v in mimicit.iter_images(tmp_path / "P_img.parquet")}
    assert from_json == from_parquet == {k: v.encode() for k, v in images.items()}


def test_base64_decoding_urlsafe_unpadded_and_corrupt():
    raw = bytes(range(256))
    assert mimicit.decode_base64_image(b64(raw).rstrip("="), "i", "f") == raw
    with pytest.raises(BadRecord, match=r"corrupt_base64: record 'IMG_9' in some\.json"):
        mimicit.decode_base64_image("QUJD$$$", "IMG_9", "some.json")


def test_data_yaml_resolves_paths_and_rejects_unknown(tmp_path):
    doc = write_dataset(tmp_path, "A", "IMAGE_TEXT_IN_CONTEXT", {}, {}, train_config={})
    doc["IMAGE_TEXT_IN_CONTEXT"]["A"]["num_samples"] = 5
    specs = mimicit.read_data_yaml(write_yaml(tmp_path, doc))
    assert specs[0].group == "IMAGE_TEXT_IN_CONTEXT" and specs[0].num_samples == 5
    assert specs[0].mimicit_path == str(tmp_path / "A_ins.json")
    assert specs[0].train_config_path == str(tmp_path / "A_train.json")
    with pytest.raises(ValueError, match="unknown group"):
        mimicit.read_data_yaml(write_yaml(tmp_path, {"IMAGES": {"A": {"mimicit_path": "x"}}}))
