"""translate, mm-instruct, cold-start and export, end to end against the fake server."""
import base64
import json

import pytest
import yaml
from syphus_helpers import GEN, dc_annotations, endpoint

from syphus.cold_start import generate_candidates, promote
from syphus.export import export_mimicit, export_tfrecord
from syphus.generate import run_task
from syphus.journal import Journal
from syphus.mimicit import ImageStore, MimicItError, read_instructions
from syphus.mm_instruct import MMInstruct
from syphus.prompt import PromptError, find_spec
from syphus.schema import read_tfrecord
from syphus.translate import LANGS, translate


@pytest.fixture
def dc_run(server, tmp_path):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 4)
    out = tmp_path / "run"
    run_task(find_spec("DC"), ann, out, GEN, endpoint(srv))
    return srv, out / "DC_instructions.json"


def test_translate_all_languages_same_ids(server, dc_run, tmp_path):
    srv, ins = dc_run
    src = read_instructions(ins)
    s = translate(ins, tmp_path / "tr", GEN, endpoint(srv))
    assert s["translated"] == len(src) and s["invalid_responses"] == 0
    for lang in LANGS:
        data = read_instructions(tmp_path / "tr" / f"DC_{lang}_instructions.json")
        assert list(data) == list(src)
        first = next(iter(src))
        assert data[first]["instruction"] == f"[{lang}] {src[first]['instruction']}"
        assert data[first]["image_ids"] == src[first]["image_ids"]


def test_translate_missing_language_is_invalid_not_dropped(server, dc_run, tmp_path):
    _, ins = dc_run
    srv = server(answer=lambda body: json.dumps({"a": {"zh": "x"}, "b": {"zh": "y"}}))
    s = translate(ins, tmp_path / "tr", GEN, endpoint(srv), langs=("zh", "es"))
    rows = (tmp_path / "tr" / "DC_translate_invalid.jsonl").read_text().splitlines()
    assert s["translated"] == 0 and len(rows) == s["invalid_responses"] == len(read_instructions(ins))
    assert "lacks translations for ['es']" in json.loads(rows[0])["reason"]


def test_mm_instruct_pipeline_and_resume(server, tmp_path):
    srv = server()
    seeds = ["Describe the photo in detail.", "What could happen next?", "describe the photo in detail",
             "Write a haiku about this scene."]
    captions = {f"img{i}": f"A detailed caption of scene {i}: a red bicycle leans on a wall." for i in range(6)}
    agen = GEN.__class__("open-model", structured=False)
    run = lambda: MMInstruct(tmp_path / "mmi", GEN, endpoint(srv), agen, endpoint(srv)).run(
        seeds, captions, new_per_chunk=3, candidates=3)
    s = run()
    assert s["seeds"] == 3 and s["pool"] > 3
    assert s["candidates"] == 18 and 0 < s["matched"] < 18 and 0 < s["kept"] <= s["answered"] == s["matched"]
    data = read_instructions(tmp_path / "mmi" / "MMI_instructions.json")
    assert len(data) == s["kept"] and all(len(r["image_ids"]) == 1 for r in data.values())
    rejected = [json.loads(x) for x in (tmp_path / "mmi" / "mmi_rejected.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rejected} <= {"match", "filter"}
    assert sum(r["stage"] == "match" for r in rejected) == 18 - s["matched"]
    j = Journal(tmp_path / "mmi" / "journal.sqlite")
    models = dict(j.db.execute("SELECT task, json_extract(body, '$.model') FROM requests").fetchall())
    j.close()
    assert models["mmi:answer"] == "open-model" and models["mmi:filter"] == "fake-model"
    sent = sum(srv.seen.values())
    assert run() == s and sum(srv.seen.values()) == sent       # resume re-pays nothing


def test_cold_start_generate_review_promote(server, tmp_path):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 5)
    spec = find_spec("DC")
    s = generate_candidates(spec, ann, tmp_path / "review.yaml", GEN, endpoint(srv), n=3)
    assert s["candidates"] == 3 and s["with_problems"] == 0
    assert sum(srv.seen.values()) == 3
    doc = yaml.safe_load((tmp_path / "review.yaml").read_text())
    assert all(c["approved"] is False and c["pairs"] for c in doc["candidates"])
    doc["candidates"][0]["approved"] = True
    doc["candidates"][2]["approved"] = True
    (tmp_path / "review.yaml").write_text(yaml.safe_dump(doc))
    n_before = len(spec.examples)
    assert promote(tmp_path / "review.yaml", spec, tmp_path / "DC2.yaml") == 2
    new = find_spec(str(tmp_path / "DC2.yaml"))
    assert len(new.examples) == n_before + 2 and new.examples[-1]["user"].startswith("timestamps:")
    doc["candidates"][1].update(approved=True, pairs=[])
    (tmp_path / "review.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(PromptError, match="approved candidate 'v0001' has no complete pairs"):
        promote(tmp_path / "review.yaml", new, tmp_path / "DC3.yaml")


def _images_dir(tmp_path, ins):
    d = tmp_path / "images"
    d.mkdir()
    for rec in read_instructions(ins).values():
        for i in rec["image_ids"]:
            (d / f"{i}.jpg").write_bytes(b"\xff\xd8fake-jpeg-" + i.encode())
    return d


def test_export_tfrecord_end_to_end(dc_run, tmp_path):
    _, ins = dc_run
    images = _images_dir(tmp_path, ins)
    data = read_instructions(ins)
    ids = list(data)
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({ids[0]: [ids[1], ids[2]]}))
    r = export_tfrecord(tmp_path / "dc.tfrecord", shards=2, instructions=ins, images=images, train_config=cfg)
    assert r["records"] == len(ids) and len(r["files"]) == 2
    recs = {x.ins_id: x for f in r["files"] for x in read_tfrecord(f)}
    assert set(recs) == set(ids)
    q = recs[ids[0]]
    assert q.group == "IMAGE_TEXT_IN_CONTEXT" and q.in_context_ids == [ids[1], ids[2]] and q.task == "DC"
    assert q.images == [b"\xff\xd8fake-jpeg-" + i.encode() for i in q.image_ids]
    assert recs[ids[3]].group == "VIDEO_TEXT" and recs[ids[3]].rel_ins_ids == data[ids[3]]["rel_ins_ids"]
    assert recs[ids[3]].instruction == data[ids[3]]["instruction"]
    (images / f"{q.image_ids[1]}.jpg").unlink()
    with pytest.raises(MimicItError, match=f"{ids[0]}.*{q.image_ids[1]}"):
        export_tfrecord(tmp_path / "x.tfrecord", instructions=ins, images=images)


def test_export_mimicit_parquet(dc_run, tmp_path):
    _, ins = dc_run
    images = _images_dir(tmp_path, ins)
    r = export_mimicit(ins, tmp_path / "bundle", images)
    assert r["instructions"] == len(read_instructions(ins))
    store = ImageStore(tmp_path / "bundle" / "DC_images.parquet")
    some = next(iter(read_instructions(ins).values()))["image_ids"][0]
    assert store.get(some) == (images / f"{some}.jpg").read_bytes()
    # the parquet round-trips through the JSON base64 flavour as well
    j = tmp_path / "imgs.json"
    j.write_text(json.dumps({some: base64.urlsafe_b64encode(store.get(some)).decode()}))
    assert ImageStore(j).get(some) == store.get(some)
    import pyarrow.parquet as pq
    meta = json.loads(pq.read_schema(tmp_path / "bundle" / "DC_images.parquet").metadata[b"pandas"])
    assert meta["index_columns"] == ["id"]
