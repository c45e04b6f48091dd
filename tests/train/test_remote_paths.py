"""gs:// paths through the file-system layer (etils.epath): the store's manifest and indices, the tokenizer, model
metadata, training-checkpoint detection and init_from, on an in-memory file system registered as `gs` (fsspec), so
no network is needed. (Array bytes go through orbax/tensorstore and TFDS's own GCS clients: not exercised here.)"""
import dataclasses

import numpy as np
import pytest

from fake_gcs import fake_gcs  # noqa: F401
from train_helpers import demo_root, tiny_model  # noqa: F401


def test_store_and_tokenizer_on_gs(demo_root, fake_gcs):
    from otter_jax.data.store import MANIFEST, Store
    from otter_jax.train import config as C, data

    local = Store(demo_root / "store")
    fake_gcs(demo_root / "store" / "index", "gs://bucket/store/index")
    from etils import epath

    (epath.Path("gs://bucket/store") / MANIFEST).write_text((demo_root / "store" / MANIFEST).read_text())
    remote = Store("gs://bucket/store")
    assert remote.manifest == local.manifest
    for d in local.datasets:
        np.testing.assert_array_equal(remote.queries(d["name"]), local.queries(d["name"]))
    rid = local.instructions[int(local.queries(local.datasets[0]["name"])[0])]["id"].decode()
    assert remote.instruction_index(rid) == local.instruction_index(rid) is not None
    with pytest.raises(C.TrainConfigError, match=r"config.data.store='gs://bucket/nothing': not a complete store"):
        data._store("gs://bucket/nothing", "data.store")

    fake_gcs(demo_root / "data" / "tokenizer", "gs://bucket/tok")
    c = C.defaults()
    c.data.tokenizer = "gs://bucket/tok"
    tok, tokens = data.tokenizer_and_tokens(c, 700)
    c.data.tokenizer = str(demo_root / "data" / "tokenizer")
    tok_local, tokens_local = data.tokenizer_and_tokens(c, 700)
    assert tokens == tokens_local and tok.encode("a photo of a cat") == tok_local.encode("a photo of a cat")
    c.data.tokenizer = "gs://bucket/no-tokenizer"
    with pytest.raises(C.TrainConfigError, match="config.data.tokenizer='gs://bucket/no-tokenizer': no such folder"):
        data.tokenizer_and_tokens(c, 700)


def test_model_files_and_training_checkpoints_on_gs(demo_root, fake_gcs, tmp_path):
    from etils import epath

    from otter_jax import checkpoint
    from otter_jax.convert.torch_io import CheckpointError
    from otter_jax.models.config import OtterConfig, SpecialTokens
    from otter_jax.train import state as ST

    cfg = dataclasses.replace(OtterConfig.from_hf_dict(tiny_model(640)),
                              tokens=SpecialTokens(media=600, endofchunk=601, answer=602, pad=603, bos=1, eos=2))
    fake_gcs(demo_root / "data" / "tokenizer", "gs://bucket/tok")
    model_dir = epath.Path("gs://bucket/model")
    model_dir.mkdir(parents=True)
    checkpoint._write_small_files(model_dir, cfg, "gs://bucket/tok")  # what save_model writes besides the arrays
    assert checkpoint.read_config("gs://bucket/model") == cfg
    assert (model_dir / "tokenizer.json").read_bytes() == (demo_root / "data" / "tokenizer" / "tokenizer.json"
                                                           ).read_bytes()
    checkpoint.copy_tokenizer_files("gs://bucket/model", tmp_path)
    assert (tmp_path / "tokenizer.json").exists()

    for step in (2, 6):  # a training workdir on the bucket
        for item in ("state", "meta"):
            (epath.Path(f"gs://bucket/run/checkpoints/{step}") / item / "x").parent.mkdir(parents=True)
            (epath.Path(f"gs://bucket/run/checkpoints/{step}") / item / "x").write_text("")
    assert str(checkpoint.training_checkpoint_step("gs://bucket/run")) == "gs://bucket/run/checkpoints/6"
    with pytest.raises(CheckpointError, match="otter-jax convert --from-checkpoint gs://bucket/run/checkpoints/6"):
        checkpoint.read_config("gs://bucket/run")
    with pytest.raises(CheckpointError, match="training checkpoint.*--from-checkpoint gs://bucket/run/checkpoints/2"):
        ST.load_weights("gs://bucket/run/checkpoints/2", cfg, None, None, None)
    with pytest.raises(FileNotFoundError, match="config.train.init_from='gs://bucket/none': no such directory"):
        ST.load_weights("gs://bucket/none", cfg, None, None, None)
