"""Annotation files as the MIMIC-IT source datasets publish them, read without hand conversion; clear errors."""
import json
import socket

import pytest
from public_samples import FAMILIES, activitynet, coco_captions, coco_instances, ego4d, llava, tvcaption, vist
from syphus_helpers import API_KEY, GEN, endpoint

from syphus.cli import main
from syphus.generate import run_task
from syphus.prompt import find_spec
from syphus.readers import AnnotationError, read_annotations
from syphus.retry import RetryPolicy
from syphus.sources import detect, load_json_or_jsonl

# text each family's first query must contain, in this order
EXPECT = {
    "LA": ["Captions:", "A dog sleeps on a red couch.", "A brown dog resting on a sofa.", "- dog: 100.5, 80.0, 200.0, 150.2",
           "- couch: 0, 50, 640, 400", "User: What animal is on the couch?", "Assistant: A dog is sleeping"],
    "SD": ["- the blue truck is gone", "- a person walks on the sidewalk"],
    "CGD": ["Image 1 captions:", "A dog sleeps on a red couch.", "Image 2 captions:", "A bowl of fruit"],
    "SN": ["1. office chair: the black chair is next to the desk.", "2. desk: a wooden desk", "2 chairs in the scene",
           "1 window in the scene"],
    "VST": ["Album: Beach day", "Photo 1: sand castle (tags: beach, sand, kids) Story: we built a castle .",
            "Photo 2: sunset (tags: sky) Story: the day ended"],
    "DC": ['timestamps: [[0.83, 19.86], [17.37, 60.81]]', '"She then begins to dance."'],
    "TVC": ["1. (3.0-8.0s) Sheldon sits on the couch.", "2. (3.0-8.0s) Sheldon points", "3. (20.0-25.5s) Leonard"],
    "E4D": ["[2.5s] The camera wearer picks a knife", "[4.0s] The camera wearer cuts the bread"],
}


@pytest.mark.parametrize("code", sorted(FAMILIES))
def test_public_format_per_family(code, tmp_path):
    writers, first_id, first_images = FAMILIES[code]
    paths = [w(tmp_path) for w in writers]
    spec = find_spec(code)
    queries = read_annotations(paths, spec.reader, code)
    q = queries[0]
    assert q.item_id == first_id and q.image_ids == first_images
    pos = [q.text.find(s) for s in EXPECT[code]]
    assert -1 not in pos and pos == sorted(pos), (pos, q.text)
    assert len({x.item_id for x in queries}) == len(queries) >= 1
    if code == "E4D":   # one query per summary window; the late narration lands in the second one
        assert [x.item_id for x in queries] == ["0a1b2c3d-uid_000", "0a1b2c3d-uid_001"]
        assert "washes a plate" in queries[1].text and "washes" not in q.text
    if code == "LA":    # merged per image across the three files
        assert [x.item_id for x in queries] == ["000000377944", "000000000009"]
    # the rendered prompt carries the query as the last user turn
    assert spec.messages(q.text, as_json=True)[-1]["content"] == q.text


def test_detection_names_each_format(tmp_path):
    got = {w.__name__: detect(load_json_or_jsonl(w(tmp_path)))
           for w in (activitynet, coco_captions, coco_instances, llava, tvcaption, vist, ego4d)}
    assert got == {"activitynet": "activitynet", "coco_captions": "coco_captions", "coco_instances": "coco_instances",
                   "llava": "llava", "tvcaption": "tvcaption", "vist": "vist", "ego4d": "ego4d"}


def _err(paths, code, fmt=None):
    with pytest.raises(AnnotationError) as e:
        read_annotations(paths, find_spec(code).reader, code, fmt)
    return str(e.value)


def test_errors_name_file_record_and_field(tmp_path):
    f = tmp_path / "anet.json"
    f.write_text(json.dumps({"v_ok": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["a"]},
                             "v_bad": {"duration": 3, "timestamps": [[0, 1], [1, 2]], "sentences": ["a"]}}))
    msg = _err([f], "DC")
    assert str(f) in msg and "'v_bad'" in msg and "'sentences'" in msg and "'timestamps'" in msg
    f.write_text(json.dumps({"v_x": {"duration": 3, "timestamps": [[0, "end"]], "sentences": ["a"]}}))
    assert "'v_x'" in (m := _err([f], "DC")) and "timestamps'[0]" in m
    t = tmp_path / "tvc.jsonl"
    t.write_text(json.dumps({"vid_name": "a", "ts": [0, 1], "descs": [{"desc": "x"}]}) + "\n" +
                 json.dumps({"vid_name": "b", "descs": [{"desc": "y"}]}) + "\n")
    assert f"{t}:2: missing field 'ts'" in _err([t], "TVC")       # JSON Lines: file:line
    c = tmp_path / "instances.json"
    c.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 5, "name": "cat"}],
                             "annotations": [{"image_id": 1, "category_id": 5, "bbox": [1, 2, 3]}]}))
    cap = coco_captions(tmp_path)
    assert str(c) in (m := _err([cap, c], "LA")) and "annotations[0]" in m and "'bbox'" in m
    v = vist(tmp_path)
    data = json.loads(v.read_text())
    data["annotations"][1][0]["photo_flickr_id"] = "999"
    v.write_text(json.dumps(data))
    assert "annotations[1]" in (m := _err([v], "VST")) and "'photo_flickr_id'" in m and "'999'" in m


def test_wrong_or_unknown_format_is_one_clear_error(tmp_path):
    anet = activitynet(tmp_path)
    assert "format 'activitynet' does not feed task SD" in _err([anet], "SD")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"hello": 1}))
    assert "unrecognised annotation format" in (m := _err([odd], "DC")) and "--format" in m
    ins = tmp_path / "DC_instructions.json"
    ins.write_text(json.dumps({"meta": {}, "data": {}}))
    assert "MIMIC-IT instructions file" in _err([ins], "DC")
    assert "does not exist" in _err([tmp_path / "nope.json"], "DC")
    assert "needs a COCO captions file and a pairs file" in _err([coco_captions(tmp_path)], "CGD")
    # --format forces the reading: an ActivityNet file read as TVCaption reports the field it lacks
    assert "missing field 'vid_name'" in _err([anet], "TVC", fmt="tvcaption")
    assert f"{anet}: missing field 'images'" in _err([anet], "LA", fmt="coco_captions")
    odd.write_text(json.dumps([{"duration": 1}]))
    assert "ActivityNet Captions is an object keyed by video id" in _err([odd], "DC", fmt="activitynet")


def test_cli_runs_public_files_end_to_end(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    srv = server()
    files = [str(w(tmp_path)) for w in (coco_captions, coco_instances, llava)]
    out = tmp_path / "la"
    assert main(["run", "--task", "LA", "--annotations", *files, "--out", str(out), "--base-url", srv.base_url,
                 "--model", "fake-model", "--no-progress"]) == 0
    data = json.loads((out / "LA_instructions.json").read_text())["data"]
    assert {tuple(r["image_ids"]) for r in data.values()} == {("LA_IMG_000000377944",), ("LA_IMG_000000000009",)}
    # an ActivityNet file as published, the failing case, with a custom frame count
    assert main(["run", "--task", "DC", "--annotations", str(activitynet(tmp_path)), "--out", str(tmp_path / "dc"),
                 "--frames", "4", "--base-url", srv.base_url, "--model", "fake-model", "--no-progress"]) == 0
    dc = json.loads((tmp_path / "dc" / "DC_instructions.json").read_text())["data"]
    assert next(iter(dc.values()))["image_ids"] == [f"DC_IMG_v_QOlSCBRmfWY_{k:04d}" for k in range(4)]
    capsys.readouterr()
    assert main(["run", "--task", "SD", "--annotations", str(activitynet(tmp_path)), "--out", str(tmp_path / "x"),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not feed task SD" in err


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_dead_endpoint_exits_non_zero_unless_allowed(tmp_path, capsys):
    ann = activitynet(tmp_path)
    args = ["run", "--task", "DC", "--annotations", str(ann), "--out", str(tmp_path / "r"),
            "--base-url", f"http://127.0.0.1:{_dead_port()}/v1", "--model", "m", "--max-attempts", "2",
            "--backoff", "0.001", "--timeout", "2", "--no-progress"]
    assert main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("syphus run: 2 failed request(s)") and "--allow-failures" in last
    assert main(args + ["--allow-failures"]) == 0
    assert "accepted (--allow-failures)" in capsys.readouterr().err
    # the other request-sending commands too
    from syphus.mimicit import write_instructions
    ins = tmp_path / "DC_instructions.json"
    write_instructions(ins, {"DC_INS_00001": {"instruction": "q?", "answer": "a.", "image_ids": [], "rel_ins_ids": []}})
    assert main(["translate", "--instructions", str(ins), "--out", str(tmp_path / "t"), *args[7:]]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("syphus translate: 1 failed request(s)")


def test_length_cut_is_asked_again_with_a_larger_budget(server, tmp_path):
    ann = activitynet(tmp_path)
    spec = find_spec("DC")
    srv = server(full_answer_tokens=400)          # GEN asks for 256: the first answer is cut, 512 is enough
    s = run_task(spec, [ann], tmp_path / "a", GEN, endpoint(srv))
    assert s["invalid_responses"] == 0 and s["instructions"] > 0
    assert sum(srv.seen.values()) == 4 and s["accounting"]["attempts"] == 4
    srv2 = server(full_answer_tokens=10_000)     # still cut at 512: recorded invalid after exactly one re-ask
    s = run_task(spec, [ann], tmp_path / "b", GEN, endpoint(srv2))
    assert s["invalid_responses"] == 2 and sum(srv2.seen.values()) == 4
    invalid = [json.loads(x) for x in (tmp_path / "b" / "DC_invalid.jsonl").read_text().splitlines()]
    assert all("finish_reason=length" in r["reason"] for r in invalid)
    srv3 = server(full_answer_tokens=400)        # re-asking can be turned off
    s = run_task(spec, [ann], tmp_path / "c", GEN,
                 endpoint(srv3, retry=RetryPolicy(base_delay=0.01, length_factor=1)))
    assert s["invalid_responses"] == 2 and sum(srv3.seen.values()) == 2


def test_batch_mode_asks_a_length_cut_again_in_a_follow_up_batch(server, tmp_path):
    from syphus.dispatch import Mode
    ann = activitynet(tmp_path)
    spec = find_spec("DC")
    batch = Mode(batch=True, poll_interval=0.01)
    live = run_task(spec, [ann], tmp_path / "live", GEN, endpoint(server(full_answer_tokens=400)))
    srv = server(full_answer_tokens=400)          # GEN asks for 256: every first answer is cut, 512 is enough
    s = run_task(spec, [ann], tmp_path / "a", GEN, endpoint(srv), batch)
    assert len(srv.batches) == 2 and s["invalid_responses"] == 0 and s["pending_requests"] == 0
    assert s["instructions"] == live["instructions"] > 0 and s["this_run"]["asked_again"] == 2
    second = [json.loads(x)["body"]["max_tokens"] for x in srv.files["file-3"].decode().splitlines()]
    assert second == [512, 512]                  # file-1, file-2: first input and output; file-3: follow-up input
    for k in ("attempts", "prompt_tokens", "completion_tokens"):   # both answers counted, as in live mode
        assert s["accounting"][k] == live["accounting"][k], k
    assert s["accounting"]["attempts"] == 4 and sum(srv.seen.values()) == 4
    srv2 = server(full_answer_tokens=10_000)     # still cut at 512: recorded invalid after exactly one re-ask
    s = run_task(spec, [ann], tmp_path / "b", GEN, endpoint(srv2), batch)
    assert len(srv2.batches) == 2 and s["invalid_responses"] == 2 and sum(srv2.seen.values()) == 4
    invalid = [json.loads(x) for x in (tmp_path / "b" / "DC_invalid.jsonl").read_text().splitlines()]
    assert all("finish_reason=length" in r["reason"] for r in invalid)
    srv3 = server(full_answer_tokens=400)        # re-asking can be turned off
    s = run_task(spec, [ann], tmp_path / "c", GEN,
                 endpoint(srv3, retry=RetryPolicy(base_delay=0.01, length_factor=1)), batch)
    assert len(srv3.batches) == 1 and s["invalid_responses"] == 2 and sum(srv3.seen.values()) == 2


def test_batch_cut_held_when_the_run_stops_is_asked_again_with_the_larger_budget_on_resume(server, tmp_path,
                                                                                           monkeypatch):
    from syphus import batch as batch_mod
    from syphus.dispatch import Mode
    ann = activitynet(tmp_path)
    spec = find_spec("DC")
    srv = server(full_answer_tokens=400)
    real_submit, calls = batch_mod._submit, []

    async def submit_then_stop(client, journal, task, todo):
        calls.append(len(todo))
        if len(calls) == 2:                       # the process dies before the follow-up batch is created
            raise KeyboardInterrupt
        return await real_submit(client, journal, task, todo)

    monkeypatch.setattr(batch_mod, "_submit", submit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_task(spec, [ann], tmp_path / "r", GEN, endpoint(srv), Mode(batch=True, poll_interval=0.01))
    monkeypatch.setattr(batch_mod, "_submit", real_submit)
    s = run_task(spec, [ann], tmp_path / "r", GEN, endpoint(srv), Mode(batch=True, poll_interval=0.01))
    assert len(srv.batches) == 2 and s["invalid_responses"] == 0 and s["instructions"] > 0
    assert [json.loads(x)["body"]["max_tokens"] for x in srv.files["file-3"].decode().splitlines()] == [512, 512]
    assert s["accounting"]["attempts"] == 4 and sum(srv.seen.values()) == 4
