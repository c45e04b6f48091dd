"""`syphus frames` on small videos the test writes: ids the readers produce, frames from the right times."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from syphus_helpers import API_KEY

from syphus.cli import main
from syphus.mimicit import ImageStore

FPS, STEP = 5, 12   # frame i is flat grey 12*i, so a decoded frame tells which one it was


def _video(path, seconds):
    import cv2
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (32, 24))
    for i in range(int(seconds * FPS)):
        w.write(np.full((24, 32, 3), STEP * i, np.uint8))
    w.release()
    return path


def _frame_index(store, image_id):
    im = Image.open(io.BytesIO(store.get(image_id)))
    assert im.format == "JPEG"
    return round(float(np.asarray(im.convert("L")).mean()) / STEP)


def _read_parquet(path):
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    return t.column("id").to_pylist(), t


def test_activitynet_clips_from_videos(tmp_path, server, monkeypatch, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    _video(vids / "aaa.mp4", 4)          # ActivityNet ids carry v_, files often do not
    _video(vids / "v_bbb.mp4", 2)
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"v_aaa": {"duration": 4.0, "timestamps": [[0, 2], [2, 4]], "sentences": ["a", "b"]},
                               "v_bbb": {"duration": 2.0, "timestamps": [[0, 2]], "sentences": ["c"]}}))
    out = tmp_path / "DC_frames.parquet"
    assert main(["frames", "--task", "DC", "--videos", str(vids), "--annotations", str(ann), "--frames", "4",
                 "--out", str(out)]) == 0
    ids, _ = _read_parquet(out)
    assert ids == [f"DC_IMG_v_aaa_{k:04d}" for k in range(4)] + [f"DC_IMG_v_bbb_{k:04d}" for k in range(4)]
    store = ImageStore(out)
    # centres of 4 equal slices: 4 s -> 0.5, 1.5, 2.5, 3.5 s -> frames 2, 7, 12, 17; 2 s -> frames 1, 3, 6, 8
    assert [_frame_index(store, f"DC_IMG_v_aaa_{k:04d}") for k in range(4)] == [2, 7, 12, 17]
    assert [_frame_index(store, f"DC_IMG_v_bbb_{k:04d}") for k in range(4)] == [1, 3, 6, 8]
    # the same annotations through `syphus run`: every image id of its output is in the frames parquet
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    srv = server()
    assert main(["run", "--task", "DC", "--annotations", str(ann), "--frames", "4", "--out", str(tmp_path / "r"),
                 "--base-url", srv.base_url, "--model", "m", "--no-progress"]) == 0
    assert main(["export", "--format", "tfrecord", "--instructions", str(tmp_path / "r" / "DC_instructions.json"),
                 "--images", str(out), "--out", str(tmp_path / "dc.tfrecord")]) == 0
    data = json.loads((tmp_path / "r" / "DC_instructions.json").read_text())["data"]
    assert {i for r in data.values() for i in r["image_ids"]} == set(ids)


def test_ego4d_windows_are_sampled_inside_their_span(tmp_path):
    vids = tmp_path / "v"
    vids.mkdir()
    _video(vids / "uid1.mp4", 4)
    ann = tmp_path / "narration.json"
    ann.write_text(json.dumps({"uid1": {"narration_pass_1": {
        "narrations": [{"timestamp_sec": 0.5, "narration_text": "#C C opens a box"},
                       {"timestamp_sec": 3.0, "narration_text": "#C C closes it"}],
        "summaries": [{"summary_text": "x", "start_sec": 0.0, "end_sec": 2.0},
                      {"summary_text": "y", "start_sec": 2.0, "end_sec": 4.0}]}}}))
    out = tmp_path / "e4d.parquet"
    assert main(["frames", "--task", "E4D", "--videos", str(vids), "--annotations", str(ann), "--frames", "2",
                 "--out", str(out)]) == 0
    store = ImageStore(out)
    assert [_frame_index(store, f"E4D_IMG_uid1_000_{k:04d}") for k in range(2)] == [2, 7]    # 0.5 s, 1.5 s
    assert [_frame_index(store, f"E4D_IMG_uid1_001_{k:04d}") for k in range(2)] == [12, 17]  # 2.5 s, 3.5 s


def test_folder_mode_missing_videos_and_bad_files(tmp_path, capsys):
    vids = tmp_path / "v"
    vids.mkdir()
    _video(vids / "s01e01_clip.mp4", 2)
    out = tmp_path / "tvc.parquet"
    assert main(["frames", "--task", "TVC", "--videos", str(vids), "--frames", "3", "--max-side", "16",
                 "--out", str(out)]) == 0
    ids, _ = _read_parquet(out)
    assert ids == [f"TVC_IMG_s01e01_clip_{k:04d}" for k in range(3)]
    assert Image.open(io.BytesIO(ImageStore(out).get(ids[0]))).size == (16, 12)
    ann = tmp_path / "tvc.jsonl"
    ann.write_text(json.dumps({"vid_name": "s01e01_clip", "ts": [0, 1], "descs": [{"desc": "x"}]}) + "\n" +
                   json.dumps({"vid_name": "gone_clip", "ts": [0, 1], "descs": [{"desc": "y"}]}) + "\n")
    capsys.readouterr()
    args = ["frames", "--task", "TVC", "--videos", str(vids), "--annotations", str(ann), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gone_clip" in err and "--skip-missing" in err
    assert main(args + ["--skip-missing"]) == 0
    assert '"missing_videos": [\n  "gone_clip"' in capsys.readouterr().out
    (vids / "broken.mp4").write_bytes(b"not a video")
    assert main(["frames", "--task", "TVC", "--videos", str(vids), "--out", str(out)]) == 2
    assert "broken.mp4" in capsys.readouterr().err
