"""RICES from a CLIP checkpoint's projected pooled embeddings (OpenFlamingo's features), cached per image."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=12)
    out = tmp_path_factory.mktemp("clip") / "clip"
    CLIPModel(cfg).eval().save_pretrained(str(out))
    return str(out)


def test_embeddings_match_hf_get_image_features_and_are_cached(clip_dir, tiny_sets, tmp_path):
    from transformers import CLIPModel

    from otter_jax.data.images import decode_resize, normalize_host
    from otter_jax.evaluate.formats.captioning import read_karpathy
    from otter_jax.evaluate.rices import ClipImageEmbedder

    data = read_karpathy(os.path.join(tiny_sets, "coco", "dataset_coco.json"), os.path.join(tiny_sets, "coco"))
    keys = [e.images[0] for e in data.pool[:5]]
    emb = ClipImageEmbedder(clip_dir, batch_size=4, cache_dir=str(tmp_path / "cache"))
    got = emb.features(keys, data.read_image)
    assert got.shape == (5, 12) and emb.computed == 5
    pix = np.stack([normalize_host(decode_resize(data.read_image(k), 28)) for k in keys])
    with torch.no_grad():
        ref = CLIPModel.from_pretrained(clip_dir).eval().get_image_features(pixel_values=torch.from_numpy(pix))
    ref = getattr(ref, "pooler_output", ref).numpy()
    ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    # cached per image: a new embedder over the same folder computes only the new image
    again = ClipImageEmbedder(clip_dir, batch_size=4, cache_dir=str(tmp_path / "cache"))
    more = again.features(keys[::-1] + [data.pool[5].images[0]], data.read_image)
    assert again.computed == 1
    np.testing.assert_array_equal(more[:5], got[::-1])


def test_evaluation_uses_clip_features_for_rices(clip_dir, loaded, tiny_checkpoint, tiny_sets, tmp_path):
    from otter_jax.evaluate import config as C
    from otter_jax.evaluate.runner import Evaluation

    c = C.load(f"configs/eval/demo.py:{tiny_checkpoint}", [
        f"--config.data_root={tiny_sets}", f"--config.output_dir={tmp_path}", "--config.progress=False",
        "--config.write_tiny_sets=False", "--config.fewshot.method=rices", f"--config.fewshot.rices_clip={clip_dir}"])
    ev = Evaluation(c, *loaded)
    from otter_jax.evaluate.formats.captioning import read_karpathy
    data = read_karpathy(os.path.join(tiny_sets, "coco", "dataset_coco.json"), os.path.join(tiny_sets, "coco"))
    images = {"a": data.read_image(data.pool[0].images[0]), "b": data.read_image(data.pool[1].images[0])}
    f = ev.rices_features(["a", "b"], images.__getitem__)
    assert f.shape == (2, 12)                                          # the CLIP projection width, not the model's
    assert len(os.listdir(os.path.join(tmp_path, "rices_cache"))) == 1  # one folder per CLIP checkpoint
    assert ev._settings("t", c.tasks[next(iter(c.tasks))], 2, 0, "otter", "rices")["rices_features"] == \
        os.path.abspath(clip_dir)
    with pytest.raises(C.EvalConfigError, match="rices_clip: .*no such CLIP folder"):
        C.load(f"configs/eval/demo.py:{tiny_checkpoint}", [f"--config.fewshot.rices_clip={tmp_path}/none"])
