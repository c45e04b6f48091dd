"""Evaluation inputs and outputs on `gs://` (etils.epath), on an in-memory file system registered as `gs`: the tiny
sets read from the bucket, predictions and the report written to it, and a rerun resumes from the bucket's
journal."""
import json
import os

import pytest

from fake_gcs import fake_gcs  # noqa: F401
from otter_jax.evaluate import config as C
from otter_jax.evaluate.engine import Engine
from otter_jax.evaluate.runner import Evaluation

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "eval", "demo.py")


def test_tiny_eval_reads_and_writes_gs_and_resumes_from_it(fake_gcs, loaded, tiny_checkpoint, tiny_sets, tmp_path,
                                                           monkeypatch):
    from etils import epath

    monkeypatch.chdir(tmp_path)   # a path mistaken for a local one would appear here as ./gs:
    fake_gcs(tiny_sets, "gs://bucket/sets")
    c = C.load(f"{DEMO}:{tiny_checkpoint}", ["--config.data_root=gs://bucket/sets", "--config.output_dir=gs://bucket/out",
                                             "--config.progress=False", "--config.write_tiny_sets=False"])
    c.tasks = {"coco": c.tasks.coco, "mme": c.tasks.mme, "mmbench": c.tasks.mmbench}   # JSON, folders, TSV
    c.tasks.coco.shots = "0"
    for t in c.tasks.values():   # few, short greedy answers: this tests the file system layer, not decoding
        t.num_beams, t.max_new_tokens, t.max_examples = 1, 2, 3
    c.tasks.mme.mme_tasks = "color"
    res = Evaluation(c, *loaded).run()
    out = epath.Path("gs://bucket/out")
    assert "Evaluation report" in (out / "report.md").read_text() and not os.path.exists("gs:")
    assert json.loads((out / "results.json").read_text())["tasks"].keys() == {"coco", "mme", "mmbench"}
    assert any("bundled tiny sets" in r for r in res["toy"])           # data_root's README read from the bucket
    run = res["tasks"]["coco"]["runs"][0]
    assert run["predictions"] == "gs://bucket/out/predictions/coco/shots0_seed42.jsonl"
    assert res["tasks"]["mmbench"]["runs"][0]["details"]["submission"].startswith("gs://bucket/out/submissions/")
    pred = epath.Path(run["predictions"])
    lines = pred.read_text().splitlines(keepends=True)
    assert len(lines) == res["tasks"]["coco"]["examples"] >= 3
    pred.write_text("".join(lines[:-2]))                                 # an interrupted run: two predictions missing

    calls = []
    orig = Engine.generate

    def counting(self, prompts_, read_image, **gen):
        calls.append(len(prompts_))
        return orig(self, prompts_, read_image, **gen)

    monkeypatch.setattr(Engine, "generate", counting)
    res2 = Evaluation(c, *loaded).run()
    assert calls == [2]                                                  # only the missing ones, read from the bucket
    assert pred.read_text().splitlines(keepends=True) == lines
    assert res2["tasks"]["coco"]["summary"] == res["tasks"]["coco"]["summary"]


def test_remote_output_dir_copies_down_up_only_changes_and_overwrite_starts_over(fake_gcs, tmp_path):
    from etils import epath

    from otter_jax.evaluate.paths import OutputDir

    remote = epath.Path("gs://bucket/o")
    (remote / "predictions" / "t").mkdir(parents=True, exist_ok=True)
    (remote / "predictions" / "t" / "a.jsonl").write_text('{"id": "1"}\n')
    (remote / "judge").mkdir(parents=True, exist_ok=True)
    (remote / "judge" / "j.sqlite").write_bytes(b"x")
    d = OutputDir("gs://bucket/o")
    local = os.path.join(d.local, "predictions", "t", "a.jsonl")
    assert open(local).read() == '{"id": "1"}\n' and d.sync() == 0       # copied down; nothing new to copy up
    with open(local, "a") as fh:
        fh.write('{"id": "2"}\n')
    with open(os.path.join(d.local, "report.md"), "w") as fh:
        fh.write("r")
    assert d.sync() == 2 and d.sync() == 0
    assert (remote / "predictions" / "t" / "a.jsonl").read_text().count("\n") == 2
    assert d.shown(local) == "gs://bucket/o/predictions/t/a.jsonl"
    d.close()
    assert not os.path.exists(d.local)
    d2 = OutputDir("gs://bucket/o", fresh=("predictions", "judge"))
    assert not (remote / "predictions").exists() and not (remote / "judge").exists()
    assert os.listdir(d2.local) == ["report.md"]
    d2.close()


def test_tiny_sets_are_written_to_a_remote_data_root(fake_gcs, tmp_path, monkeypatch):
    from otter_jax.evaluate.tiny_sets import ensure, is_tiny

    monkeypatch.chdir(tmp_path)

    assert not is_tiny("gs://bucket/sets2")
    ensure("gs://bucket/sets2")
    assert is_tiny("gs://bucket/sets2") and not os.path.exists("gs:")
