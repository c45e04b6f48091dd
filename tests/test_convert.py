"""Conversion to and from the original Otter checkpoint layout: exact export, re-reading, file formats, and the
errors users get for checkpoints that do not fit."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from golden_helpers import GOLDEN_FIXTURES, golden_case, golden_dir
from otter_jax import checkpoint, convert
from otter_jax import sharding as S
from otter_jax.cli import main as cli_main
from otter_jax.convert.torch_io import TensorSource


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _data_bytes(path) -> bytes:
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little"):]


def _copy_fixture(name, dst):
    shutil.copytree(golden_dir(name), dst)
    return dst


@pytest.mark.parametrize("name", GOLDEN_FIXTURES)
def test_export_reproduces_reference_file(golden_model, name, tmp_path):
    model, cfg = golden_model(name)
    src = golden_dir(name) / "model.safetensors"
    metadata = TensorSource(str(src)).metadata()
    convert.save_torch_checkpoint(model, cfg, str(tmp_path / "out"), metadata=metadata)
    _assert_same_tensors(load_file(src), load_file(tmp_path / "out" / "model.safetensors"))
    # Same data section byte for byte (the header's metadata dict has no fixed key order in safetensors).
    assert _data_bytes(tmp_path / "out" / "model.safetensors") == _data_bytes(src)
    assert TensorSource(str(tmp_path / "out" / "model.safetensors")).metadata() == metadata
    # The written config rebuilds the same model config.
    again = convert.read_config(str(tmp_path / "out"))
    assert again.to_hf_dict() == cfg.to_hf_dict()


def test_torch_jax_torch_jax_is_stable(golden_model, tmp_path):
    model, cfg = golden_model("otter_llama_tiny")
    convert.save_torch_checkpoint(model, cfg, str(tmp_path / "a"), tokenizer_dir=str(golden_dir("otter_llama_tiny")))
    model2, cfg2 = convert.load_torch_checkpoint(str(tmp_path / "a"))
    assert cfg2.tokens == cfg.tokens
    a, b = S.flat_arrays(model), S.flat_arrays(model2)
    _assert_same_tensors(a, b)


def test_sharded_safetensors_with_index(golden_model, tmp_path):
    model, cfg = golden_model("otter_mpt_tiny")
    convert.save_torch_checkpoint(model, cfg, str(tmp_path / "sharded"), max_shard_bytes=300_000,
                                  tokenizer_dir=str(golden_dir("otter_mpt_tiny")))
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert sum(f.endswith(".safetensors") for f in files) > 1
    model2, _ = convert.load_torch_checkpoint(str(tmp_path / "sharded"))
    _assert_same_tensors(S.flat_arrays(model), S.flat_arrays(model2))


def test_pytorch_bin_shards(golden_model, tmp_path):
    torch = pytest.importorskip("torch")
    name = "otter_llama_gqa_tiny"
    model, _ = golden_model(name)
    src = _copy_fixture(name, tmp_path / "bin")
    tensors = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: torch.from_numpy(tensors[k]) for k in part}, src / fname)
        weight_map.update({k: fname for k in part})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model2, _ = convert.load_torch_checkpoint(str(src))
    _assert_same_tensors(S.flat_arrays(model), S.flat_arrays(model2))


def test_cli_round_trip_through_orbax(tmp_path):
    name = "otter_mpt_tiny"
    assert cli_main(["convert", "--from-torch", str(golden_dir(name)), "--out", str(tmp_path / "ckpt")]) == 0
    model, cfg = checkpoint.load_model(str(tmp_path / "ckpt"))
    inputs, ref = golden_case(name, "image")
    out = model(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert np.abs(np.asarray(out.logits) - ref["logits"]).max() <= 1e-4
    assert cli_main(["convert", "--to-torch", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    _assert_same_tensors(load_file(golden_dir(name) / "model.safetensors"),
                         load_file(tmp_path / "back" / "model.safetensors"))
    assert (tmp_path / "back" / "vocab.json").exists()


# ------------------------------------------------------------------------------------------------ bad input
def _broken_copy(tmp_path, edit):
    src = _copy_fixture("otter_llama_gqa_tiny", tmp_path / "broken")
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    (src / "model.safetensors").unlink()
    save_file(tensors, src / "model.safetensors")
    return src


def test_renamed_key_lists_both_names(tmp_path):
    key = "perceiver.layers.0.to_q.weight"

    def edit(t):
        t["perceiver.layers.0.to_query.weight"] = t.pop(key)

    src = _broken_copy(tmp_path, edit)
    with pytest.raises(convert.CheckpointError) as e:
        convert.load_torch_checkpoint(str(src))
    msg = str(e.value)
    assert f"missing:     {key}" in msg and "unexpected:  perceiver.layers.0.to_query.weight" in msg
    assert "1 missing, 1 unexpected, 0 wrong shape" in msg


def test_wrong_shape_names_expected_and_found(tmp_path):
    key = "lang_encoder.model.layers.0.decoder_layer.mlp.up_proj.weight"

    def edit(t):
        t[key] = t[key][:-1]

    src = _broken_copy(tmp_path, edit)
    with pytest.raises(convert.CheckpointError, match=r"wrong shape: .*up_proj.weight  expected \[64, 32\], found \[63, 32\]"):
        convert.load_torch_checkpoint(str(src))


def test_missing_weights_file_and_nothing_written(tmp_path):
    src = _copy_fixture("otter_llama_gqa_tiny", tmp_path / "nofile")
    (src / "model.safetensors").unlink()
    with pytest.raises(convert.CheckpointError, match="no weights found"):
        convert.load_torch_checkpoint(str(src))
    out = tmp_path / "out"
    assert cli_main(["convert", "--from-torch", str(src), "--out", str(out)]) == 2   # one-line error, exit 2
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_missing_shard_listed_in_index(tmp_path, golden_model):
    model, cfg = golden_model("otter_mpt_tiny")
    convert.save_torch_checkpoint(model, cfg, str(tmp_path / "s"), max_shard_bytes=300_000)
    victim = sorted((tmp_path / "s").glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(convert.CheckpointError, match=f"missing: {victim.name}"):
        convert.load_torch_checkpoint(str(tmp_path / "s"))


def test_unsupported_text_model(tmp_path):
    src = _copy_fixture("otter_llama_gqa_tiny", tmp_path / "falcon")
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["model_type"] = "falcon"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.ConfigError, match=r"text_config.model_type='falcon' is not supported"):
        convert.load_torch_checkpoint(str(src))


def test_export_refuses_non_empty_output(golden_model, tmp_path):
    model, cfg = golden_model("otter_llama_gqa_tiny")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        convert.save_torch_checkpoint(model, cfg, str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "keep.txt").read_text() == "precious"
