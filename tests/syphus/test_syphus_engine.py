"""The client, retries and journal against the fake server: exactly-once under faults."""
import json
import time

from syphus_helpers import GEN, dc_annotations, endpoint

from syphus.dispatch import Mode
from syphus.retry import RetryPolicy
from syphus.generate import run_task
from syphus.journal import Journal
from syphus.prompt import find_spec

DC = find_spec("DC")


def _journal_rows(out):
    j = Journal(out / "journal.sqlite")
    rows = j.db.execute("SELECT key, status, error, attempts FROM requests").fetchall()
    j.close()
    return rows


def test_run_writes_mimicit_and_rerun_pays_nothing(server, tmp_path):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 12)
    out = tmp_path / "run"
    s = run_task(DC, ann, out, GEN, endpoint(srv))
    assert s["failed_requests"] == 0 and s["invalid_responses"] == 0 and s["pending_requests"] == 0
    data = json.loads((out / "DC_instructions.json").read_text())["data"]
    assert list(data) == [f"DC_INS_{i:05d}" for i in range(1, len(data) + 1)]
    assert len(data) == s["instructions"] >= 12
    first = data["DC_INS_00001"]
    assert first["image_ids"] == ["DC_IMG_v0000_0000", "DC_IMG_v0000_0001", "DC_IMG_v0000_0002"]
    for ins_id in first["rel_ins_ids"]:
        assert data[ins_id]["image_ids"] == first["image_ids"] and ins_id != "DC_INS_00001"
    assert sum(srv.seen.values()) == 12
    assert s["accounting"]["done"] == 12 and s["accounting"]["prompt_tokens"] > 0
    # a rerun sends nothing and rebuilds identical outputs
    before = (out / "DC_instructions.json").read_text()
    s2 = run_task(DC, ann, out, GEN, endpoint(srv))
    assert sum(srv.seen.values()) == 12 and s2["this_run"]["sent"] == 0
    assert json.loads((out / "DC_instructions.json").read_text())["data"] == json.loads(before)["data"]


def test_thirty_percent_faults_every_request_answered_or_failed_once(server, tmp_path):
    srv = server(fault_rate=0.3, seed=7, slow_s=1.2, retry_after_ms=10)
    n = 150
    ann = dc_annotations(tmp_path / "a.jsonl", n)
    out = tmp_path / "run"
    # length_factor=1: no re-ask of cut answers here, so every server-side key is a journal key
    policy = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, length_factor=1)
    # timeout well above a loaded machine's answer time, well below a "slow" fault
    s = run_task(DC, ann, out, GEN, endpoint(srv, timeout=0.8, retry=policy, concurrency=32))
    rows = _journal_rows(out)
    assert len(rows) == n
    done = {k for k, st, _, _ in rows if st == "done"}
    failed = [(k, err) for k, st, err, _ in rows if st == "failed"]
    assert len(done) + len(failed) == n                      # none lost
    assert all(err and "gave up after 4 attempts" in err for _, err in failed)
    assert set(srv.answered) == done                           # every answered request is recorded
    assert all(c == 1 for c in srv.answered.values())          # and none was paid twice
    assert sum(srv.fault_counts.values()) > 0.2 * n
    assert set(srv.fault_counts) >= {"429", "500", "503", "slow", "malformed", "truncated", "reset", "length"}
    # model-side truncation is answered but kept as invalid with its reason, never dropped
    invalid = [json.loads(x) for x in (out / "DC_invalid.jsonl").read_text().splitlines()]
    assert s["invalid_responses"] == len(invalid) == srv.fault_counts["length"] > 0
    assert all("finish_reason=length" in r["reason"] for r in invalid)
    failed_rows = [json.loads(x) for x in (out / "DC_failed.jsonl").read_text().splitlines()]
    assert len(failed_rows) == len(failed) == s["failed_requests"]
    data = json.loads((out / "DC_instructions.json").read_text())["data"]
    per_item = {}
    for rec in data.values():
        per_item.setdefault(rec["image_ids"][0], set()).add(rec["instruction"])
    assert len(per_item) == len(done) - len(invalid)
    # rerun retries only the failed ones, none of the done ones
    seen_before = dict(srv.seen)
    srv.fault_rate = 0.0
    s2 = run_task(DC, ann, out, GEN, endpoint(srv))
    resent = {k for k in srv.seen if srv.seen[k] != seen_before.get(k, 0)}
    assert resent == {k for k, _ in failed}
    assert s2["failed_requests"] == 0 and all(c == 1 for c in srv.answered.values())


def test_retry_after_is_honoured_and_attempts_bounded(server, tmp_path):
    srv = server(fault_rate=1.0, faults=("429",), retry_after_ms=150)
    ann = dc_annotations(tmp_path / "a.jsonl", 1)
    t0 = time.perf_counter()
    s = run_task(DC, ann, tmp_path / "r", GEN, endpoint(srv, max_attempts=3))
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.3                                      # 2 waits of Retry-After (0.15 s), not 0.01 backoff
    assert sum(srv.seen.values()) == 3 and s["failed_requests"] == 1
    reason = json.loads((tmp_path / "r" / "DC_failed.jsonl").read_text())["reason"]
    assert "gave up after 3 attempts" in reason and "HTTP 429" in reason


def test_timeouts_and_permanent_errors_fail_with_reason(server, tmp_path):
    slow = server(fault_rate=1.0, faults=("slow",), slow_s=0.5)
    ann = dc_annotations(tmp_path / "a.jsonl", 2)
    run_task(DC, ann, tmp_path / "slow", GEN, endpoint(slow, timeout=0.15, max_attempts=2))
    rows = _journal_rows(tmp_path / "slow")
    assert all(st == "failed" and "timeout after 0.15 s" in err and att == 2 for _, st, err, att in rows)
    bad_key = server(api_key="another-key")
    run_task(DC, ann, tmp_path / "auth", GEN, endpoint(bad_key))
    rows = _journal_rows(tmp_path / "auth")
    assert bad_key.unauthorized == 2                            # 401 is not retried
    assert all(st == "failed" and err.startswith("permanent error: HTTP 401") and att == 1 for _, st, err, att in rows)


def test_poisoned_request_fails_others_succeed(server, tmp_path):
    srv = server(poison="Person 3 ")
    ann = dc_annotations(tmp_path / "a.jsonl", 6)
    s = run_task(DC, ann, tmp_path / "r", GEN, endpoint(srv, max_attempts=2))
    assert s["failed_requests"] == 1 and s["accounting"]["done"] == 5
    assert json.loads((tmp_path / "r" / "DC_failed.jsonl").read_text())["item_id"] == "v0003"


def test_rate_limit_spreads_requests(server, tmp_path):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 30)
    t0 = time.perf_counter()
    run_task(DC, ann, tmp_path / "r", GEN, endpoint(srv, rpm=1200))  # 20/s, bucket of one second
    assert time.perf_counter() - t0 >= 0.4
    assert sum(srv.seen.values()) == 30


def test_text_mode_without_structured_output(server, tmp_path):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 4)
    gen = GEN.__class__("fake-model", max_tokens=256, structured=False)
    s = run_task(DC, ann, tmp_path / "r", gen, endpoint(srv))
    assert s["instructions"] >= 4 and s["invalid_responses"] == 0


def test_batch_mode_matches_online(server, tmp_path):
    srv = server(poison="Person 2 ")
    ann = dc_annotations(tmp_path / "a.jsonl", 8)
    online = run_task(DC, ann, tmp_path / "online", GEN, endpoint(srv, max_attempts=1))
    srv2 = server(poison="Person 2 ")
    s = run_task(DC, ann, tmp_path / "batch", GEN, endpoint(srv2), Mode(batch=True, poll_interval=0.01))
    assert len(srv2.batches) == 1 and s["failed_requests"] == 1 and online["failed_requests"] == 1
    a = json.loads((tmp_path / "online" / "DC_instructions.json").read_text())["data"]
    b = json.loads((tmp_path / "batch" / "DC_instructions.json").read_text())["data"]
    assert a == b
    assert "batch line error" in (tmp_path / "batch" / "DC_failed.jsonl").read_text()
    run_task(DC, ann, tmp_path / "batch", GEN, endpoint(srv2), Mode(batch=True, poll_interval=0.01, retry_failed=False))
    assert len(srv2.batches) == 1                               # nothing left to submit


def test_dry_run_sends_and_writes_nothing(server, tmp_path, capsys):
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 5)
    s = run_task(DC, ann, tmp_path / "r", GEN, endpoint(srv, price_in=1.0, price_out=2.0), dry=True, show=2)
    out = capsys.readouterr().out
    assert sum(srv.seen.values()) == 0 and not (tmp_path / "r").exists()
    assert out.count("=== v000") == 2 and "Person 0 opens a door" in out and "dry run, nothing sent" in out
    assert s["requests"] == 5 and s["estimated_prompt_tokens"] > 5 * 100 and s["estimated_max_cost_usd"] > 0


def test_batch_resume_polls_the_journaled_batch_instead_of_resubmitting(server, tmp_path):
    import openai

    from syphus import batch
    from syphus.dispatch import run_async
    from syphus.generate import plan
    from syphus_helpers import API_KEY
    srv = server()
    ann = dc_annotations(tmp_path / "a.jsonl", 5)
    out = tmp_path / "r"
    out.mkdir()
    j = Journal(out / "journal.sqlite")
    j.add_many("DC", plan(DC, ann, GEN))

    async def submit_then_crash():
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key=API_KEY, max_retries=0)
        await batch._submit(client, j, "DC", j.todo("DC"))
        await client.close()

    run_async(submit_then_crash())
    assert j.todo("DC") == []                                   # submitted requests are not sent live
    j.close()
    s = run_task(DC, ann, out, GEN, endpoint(srv), Mode(batch=True, poll_interval=0.01))
    assert len(srv.batches) == 1 and s["accounting"]["done"] == 5 and s["instructions"] >= 5
    assert all(c == 1 for c in srv.answered.values())


def test_server_echoing_the_key_is_redacted(server, tmp_path, monkeypatch):
    from syphus_helpers import API_KEY

    from syphus.fake_server import FakeOpenAI
    srv = server(api_key="expected-other-key")
    orig = FakeOpenAI._json

    def echo(self, writer, status, obj, extra=None):
        if status == 401:
            obj = {"error": {"message": f"Incorrect API key provided: {API_KEY}"}}
        return orig(self, writer, status, obj, extra)

    monkeypatch.setattr(FakeOpenAI, "_json", echo)
    run_task(DC, dc_annotations(tmp_path / "a.jsonl", 1), tmp_path / "r", GEN, endpoint(srv))
    text = (tmp_path / "r" / "DC_failed.jsonl").read_text()
    assert "api key redacted" in text and API_KEY not in text
    assert API_KEY.encode() not in (tmp_path / "r" / "journal.sqlite").read_bytes()
