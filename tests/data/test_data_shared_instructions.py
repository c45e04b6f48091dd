"""One instructions file listed by two datasets (upstream YAMLs do this): ids are unique per dataset."""
import yaml

from data_helpers import b64, ins, photo_jpeg, write_dataset, write_yaml
from otter_jax.data import ingest
from otter_jax.data.store import Store


def test_same_instructions_file_in_two_groups(tmp_path):
    data = {f"LA_INS_{i}": ins(f"question {i}?", f"answer {i}.", [f"LA_IMG_{i}"]) for i in range(4)}
    images = {f"LA_IMG_{i}": b64(photo_jpeg(size=24 + i)) for i in range(4)}
    doc = write_dataset(tmp_path, "LA", "IMAGE_TEXT", data, images,
                        train_config={"LA_INS_2": ["LA_INS_0", "LA_INS_1"], "LA_INS_3": ["LA_INS_9"]})
    la = dict(doc["IMAGE_TEXT"]["LA"])
    doc["IMAGE_TEXT"]["LA"] = {k: v for k, v in la.items() if k != "train_config_path"}
    doc["IMAGE_TEXT_IN_CONTEXT"] = {"LA_T2T": la}     # same JSON and images, now with the train config
    m = ingest.build_store(write_yaml(tmp_path, doc), tmp_path / "store", strict=False, log=lambda s: None)
    assert yaml.safe_load((tmp_path / "data.yaml").read_text())["IMAGE_TEXT_IN_CONTEXT"]["LA_T2T"]["mimicit_path"] \
        == yaml.safe_load((tmp_path / "data.yaml").read_text())["IMAGE_TEXT"]["LA"]["mimicit_path"]
    assert m["n_instructions"] == 4 + 3                # LA_INS_3 points at an id its dataset lacks: dropped
    store = Store(tmp_path / "store")
    assert len(store.queries("LA")) == 4
    q = store.queries("LA_T2T")
    assert len(q) == 1
    rec = store.instructions[int(q[0])]
    assert rec["instruction"] == b"question 2?" and rec["dataset"] == b"LA_T2T"
    # the in-context examples are the LA_T2T copies, not the IMAGE_TEXT ones
    ctx = [store.instructions[int(i)] for i in rec["context_index"]]
    assert [c["instruction"] for c in ctx] == [b"question 0?", b"question 1?"]
    assert {c["dataset"] for c in ctx} == {b"LA_T2T"}


def test_same_name_in_two_groups_says_how_to_fix(tmp_path):
    import pytest

    from otter_jax.data.mimicit import read_data_yaml

    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump({"IMAGE_TEXT": {"LA": {"mimicit_path": "a.json", "images_path": "i.json"}},
                                 "IMAGE_TEXT_IN_CONTEXT": {"LA": {"mimicit_path": "a.json", "images_path": "i.json"}}}))
    with pytest.raises(ValueError, match=r"'LA' listed twice \(IMAGE_TEXT and IMAGE_TEXT_IN_CONTEXT\).*"
                                         r"LA_image_text_in_context"):
        read_data_yaml(p)
