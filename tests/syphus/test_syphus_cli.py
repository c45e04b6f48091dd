"""The CLI in subprocesses: no JAX, SIGKILL + resume is exactly-once, the API key never leaks, clear errors."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from syphus_helpers import API_KEY, GEN, dc_annotations, endpoint

from syphus.generate import run_task
from syphus.prompt import find_spec

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, env_key=API_KEY, **kw):
    env = {**os.environ, "OPENAI_API_KEY": env_key, "PYTHONPATH": str(ROOT)}
    return [sys.executable, "-m", "syphus.cli", *map(str, args)], env


def _run(*args, timeout=60):
    cmd, env = _cli(*args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_syphus_does_not_import_jax():
    mods = ["syphus", "syphus.cli", "syphus.schema", "syphus.generate", "syphus.translate", "syphus.mm_instruct",
            "syphus.cold_start", "syphus.export", "syphus.batch", "syphus.fake_server", "syphus.sources",
            "syphus.frames"]
    code = (f"import sys, importlib\nfor m in {mods!r}: importlib.import_module(m)\n"
            "from syphus.cli import build_parser; build_parser()\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'tensorflow')]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _done_keys(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return {k for (k,) in con.execute("SELECT key FROM requests WHERE status='done'")}
    finally:
        con.close()


def test_sigkill_midway_then_resume_is_exactly_once(server, tmp_path):
    srv = server(latency=0.03)
    n = 80
    ann = dc_annotations(tmp_path / "a.jsonl", n)
    out = tmp_path / "run"
    args = ["run", "--task", "DC", "--annotations", ann, "--out", out, "--base-url", srv.base_url,
            "--model", "fake-model", "--max-tokens", "256", "--concurrency", "4", "--timeout", "5", "--no-progress"]
    cmd, env = _cli(*args)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    db = out / "journal.sqlite"
    deadline = time.time() + 30
    while time.time() < deadline:
        if db.exists():
            try:
                if len(_done_keys(db)) >= 15:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _done_keys(db)
    assert 15 <= len(done_at_kill) < n, "the run must be killed midway"
    assert not (out / "DC_instructions.json").exists()
    seen_at_kill = dict(srv.seen)

    res = _run(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    resent = {k for k, c in srv.seen.items() if c > seen_at_kill.get(k, 0)}
    assert not resent & done_at_kill                       # a finished request is never paid again
    assert len(resent) == n - len(done_at_kill)
    twice = {k for k, c in srv.answered.items() if c > 1}
    assert not twice & done_at_kill and len(twice) <= 4    # only calls in flight at the kill were re-sent
    assert len(_done_keys(db)) == n

    ref = tmp_path / "ref"
    run_task(find_spec("DC"), ann, ref, GEN, endpoint(server()))
    got = json.loads((out / "DC_instructions.json").read_text())["data"]
    assert got == json.loads((ref / "DC_instructions.json").read_text())["data"]
    assert len({(r["instruction"], tuple(r["image_ids"])) for r in got.values()}) == len(got)


def test_api_key_never_written(server, tmp_path):
    srv = server(fault_rate=0.5, seed=3, slow_s=0.3)
    ann = dc_annotations(tmp_path / "a.jsonl", 20)
    out = tmp_path / "run"
    res = _run("run", "--task", "DC", "--annotations", ann, "--out", out, "--base-url", srv.base_url,
               "--model", "fake-model", "--timeout", "0.2", "--max-attempts", "2", "--backoff", "0.01", "-v",
               "--allow-failures")
    assert res.returncode == 0, res.stderr[-2000:]
    assert srv.unauthorized == 0 and sum(srv.answered.values()) > 0   # the key was sent, and accepted
    assert "failed" in res.stderr or "attempt" in res.stderr           # the logs did talk about errors
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"journal.sqlite", "syphus.log", "DC_meta.json", "DC_instructions.json"} <= {p.name for p in files}
    for p in files:
        assert API_KEY.encode() not in p.read_bytes(), p
        assert b"SECRET" not in p.read_bytes(), p
    assert API_KEY not in res.stdout + res.stderr


def test_cli_dry_run_sends_nothing(server, tmp_path):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 3)
    res = _run("run", "--task", "DC", "--annotations", ann, "--out", tmp_path / "r", "--base-url", srv.base_url,
               "--dry-run", "--show", "1")
    assert res.returncode == 0, res.stderr
    assert "=== v0000" in res.stdout and '"requests": 3' in res.stdout
    assert sum(srv.seen.values()) == 0 and not (tmp_path / "r").exists()


def test_cli_errors_name_the_bad_file_and_record(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "ok1", "image_ids": ["a"], "timestamps": [[0, 1]], "sentences": ["x"]}) + "\n" +
                   json.dumps({"id": "clip-77", "image_ids": ["a"], "timestamps": [[0, 1]]}) + "\n")
    res = _run("run", "--task", "DC", "--annotations", bad, "--out", tmp_path / "r", "--dry-run")
    assert res.returncode == 2
    assert f"{bad}:2" in res.stderr and "clip-77" in res.stderr and "sentences" in res.stderr
    res = _run("run", "--task", "NOPE", "--annotations", bad, "--out", tmp_path / "r", "--dry-run")
    assert res.returncode == 2 and "no prompt spec for task 'NOPE'" in res.stderr and "TVC" in res.stderr


def test_every_subcommand_through_main(server, tmp_path, monkeypatch, capsys):
    """Argument wiring of translate, mm-instruct, cold-start (generate + promote) and export, in-process."""
    from syphus.cli import main
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    srv = server()
    common = ["--base-url", srv.base_url, "--model", "fake-model", "--timeout", "2", "--no-progress"]
    ann = dc_annotations(tmp_path / "a.jsonl", 3)
    assert main(["run", "--task", "DC", "--annotations", str(ann), "--out", str(tmp_path / "r"), *common]) == 0
    ins = tmp_path / "r" / "DC_instructions.json"
    assert main(["translate", "--instructions", str(ins), "--out", str(tmp_path / "t"), "--langs", "zh,fr",
                 *common]) == 0
    assert (tmp_path / "t" / "DC_fr_instructions.json").exists()
    (tmp_path / "seeds.txt").write_text("Describe the image.\nWhat is unusual here?\n")
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"image_id": f"i{k}", "caption": f"scene {k}"}) + "\n"
                                                 for k in range(3)))
    assert main(["mm-instruct", "--seeds", str(tmp_path / "seeds.txt"), "--captions", str(tmp_path / "caps.jsonl"),
                 "--out", str(tmp_path / "m"), "--answer-model", "open-model", *common]) == 0
    assert (tmp_path / "m" / "MMI_instructions.json").exists()
    review = tmp_path / "cs" / "review.yaml"
    assert main(["cold-start", "--task", "DC", "--annotations", str(ann), "--n", "2", "--review", str(review),
                 *common]) == 0
    review.write_text(review.read_text().replace("approved: false", "approved: true", 1))
    assert main(["cold-start", "--task", "DC", "--review", str(review), "--promote",
                 "--spec-out", str(tmp_path / "DC_new.yaml")]) == 0
    assert '"promoted": 1' in capsys.readouterr().out
    assert len(find_spec(str(tmp_path / "DC_new.yaml")).examples) == len(find_spec("DC").examples) + 1
    assert main(["export", "--format", "tfrecord", "--instructions", str(ins), "--out", str(tmp_path / "x.tfrecord")]) == 0
    assert main(["export", "--format", "mimicit", "--instructions", str(ins), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "x.tfrecord").stat().st_size > 0 and (tmp_path / "b" / "DC_instructions.json").exists()
    assert main(["export", "--format", "tfrecord", "--instructions", str(tmp_path / "missing.json"),
                 "--out", str(tmp_path / "y.tfrecord")]) == 2
