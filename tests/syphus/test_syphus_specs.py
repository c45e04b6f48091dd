"""Built-in prompt specs and annotation readers, one per MIMIC-IT source family."""
import json
import sys

import pytest

from syphus.prompt import BUILTIN_DIR, PromptError, PromptSpec, find_spec
from syphus.readers import AnnotationError, read_annotations

SAMPLES = {
    "LA": {"id": "1", "image_id": "LA_IMG_1", "captions": ["A dog."], "objects": [{"label": "dog", "bbox": [1, 2, 3, 4]}]},
    "SD": {"id": "1", "image_ids": ["SD_IMG_a", "SD_IMG_b"], "differences": ["a hat is missing"]},
    "CGD": {"id": "1", "image_ids": ["a", "b"], "captions_a": ["a kitchen"], "captions_b": ["a park"]},
    "SN": {"id": "1", "image_ids": ["f1", "f2"], "descriptions": [f"object {i}" for i in range(60)],
           "activities": ["reading"]},
    "VST": {"id": "1", "album_title": "Trip", "images": [{"image_id": "p1", "title": "car", "tags": ["road"]},
                                                         {"image_id": "p2", "title": "lake", "tags": []}]},
    "DC": {"id": "1", "image_ids": ["f1"], "timestamps": [[0, 1]], "sentences": ["a man runs"]},
    "TVC": {"id": "1", "image_ids": ["f1", "f2"], "descriptions": ["she enters", "he laughs"]},
    "E4D": {"id": "1", "image_ids": ["f1"], "clips": [{"timestamp": "00:01", "description": "you cut bread",
                                                       "objects": ["knife"]}]},
}


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_builtin_spec_and_reader(code, tmp_path):
    spec = find_spec(code)
    assert spec.code == code and spec.examples and spec.path.parent == BUILTIN_DIR
    f = tmp_path / "a.json"
    f.write_text(json.dumps([SAMPLES[code]]))
    (q,) = read_annotations(f, spec.reader)
    assert q.item_id == "1" and q.image_ids and q.text
    msgs = spec.messages(q.text, as_json=True)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * len(spec.examples) + ["user"]
    assert json.loads(msgs[2]["content"])["pairs"]
    assert "Question: " in spec.messages(q.text, as_json=False)[2]["content"]
    if code == "SN":
        assert "50. object 49" in q.text and "object 50" not in q.text


def test_all_builtin_specs_are_sampled():
    assert {p.stem for p in BUILTIN_DIR.glob("*.yaml")} == set(SAMPLES)


def test_reader_errors_name_file_line_and_id(tmp_path):
    f = tmp_path / "sd.jsonl"
    f.write_text(json.dumps(SAMPLES["SD"]) + "\n" + json.dumps({**SAMPLES["SD"], "id": "x9", "image_ids": ["a"]}) + "\n")
    with pytest.raises(AnnotationError, match=r"sd\.jsonl:2 \(id 'x9'\): spot-the-difference needs 2 image_ids"):
        read_annotations(f, "spot_difference")
    f.write_text(json.dumps(SAMPLES["SD"]) + "\n" + json.dumps(SAMPLES["SD"]) + "\n")
    with pytest.raises(AnnotationError, match="duplicate annotation id '1'"):
        read_annotations(f, "spot_difference")
    with pytest.raises(AnnotationError, match="unknown reader 'nope'"):
        read_annotations(f, "nope")


def test_user_task_with_own_prompt_file_and_reader(tmp_path, monkeypatch):
    (tmp_path / "myreader.py").write_text("def read(rec):\n    return 'recipe: ' + rec['recipe'], [rec['photo']]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myreader", None)
    (tmp_path / "RC.yaml").write_text("code: RC\nname: recipes\nreader: myreader:read\ngroup: IMAGE_TEXT\n"
                                      "system: Ask about the dish.\nexamples: []\n")
    spec = find_spec("RC", prompts_dir=tmp_path)
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"id": "r1", "recipe": "soup", "photo": "RC_IMG_1"}) + "\n")
    (q,) = read_annotations(f, spec.reader)
    assert q.text == "recipe: soup" and q.image_ids == ["RC_IMG_1"]


def test_bad_spec_names_the_file(tmp_path):
    p = tmp_path / "X.yaml"
    p.write_text("code: X\nname: x\nreader: dense_captions\ngroup: PICTURES\nsystem: hi\n")
    with pytest.raises(PromptError, match=r"X\.yaml: group 'PICTURES'"):
        PromptSpec.load(p)
    p.write_text("code: X\nname: x\nreader: dense_captions\ngroup: IMAGE_TEXT\nsystem: hi\n"
                 "examples:\n  - user: u\n    pairs: [{question: q}]\n")
    with pytest.raises(PromptError, match=r"X\.yaml: examples\[0\]"):
        PromptSpec.load(p)
