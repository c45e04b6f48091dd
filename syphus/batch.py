"""OpenAI Batch API mode: the same journal, submitted as one JSONL file per chunk instead of live calls.

Each line's custom_id is the request key, so results map straight back into the journal. The batch id is
journaled as soon as it is created, so a resumed run polls the existing batch instead of paying twice. Lines
that come back with an error are recorded failed with that error; requests the batch never answered (expired,
cancelled) are released and sent again by the next run. An answer cut by max_tokens is asked once more in a
follow-up batch with a larger budget (as live mode does) before it is recorded. Uses the official SDK:
throughput is the provider's.
Cost uses the prices given, so pass the provider's batch prices (often half the live ones) in this mode.
"""

from __future__ import annotations

import asyncio
import json
import logging

import openai

from syphus.engine import Endpoint, enlarged
from syphus.journal import Journal, Outcome
from syphus.tokens import cost_usd

log = logging.getLogger("syphus")
MAX_LINES = 50_000
TERMINAL = {"completed", "failed", "expired", "cancelled"}


async def _submit(client, journal: Journal, task: str, todo: list[tuple[str, dict]]) -> list[str]:
    ids = []
    for i in range(0, len(todo), MAX_LINES):
        chunk = todo[i: i + MAX_LINES]
        lines = "".join(json.dumps({"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": b},
                                   ensure_ascii=False) + "\n" for k, b in chunk)
        f = await client.files.create(file=("syphus_batch.jsonl", lines.encode()), purpose="batch")
        b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"syphus_task": task})
        journal.start_batch(task, b.id, f.id, [k for k, _ in chunk])
        log.info("submitted batch %s with %d requests", b.id, len(chunk))
        ids.append(b.id)
    return ids


async def _collect(client, journal: Journal, batch, ep: Endpoint, cut: dict[str, str]) -> tuple[int, int, list[str]]:
    """Record a finished batch's lines; returns (done, failed, keys cut by max_tokens and held for a re-ask).
    `cut` maps keys already held once to their cut answer: their line is the re-ask and is final either way."""
    done = failed = 0
    held = []
    factor = ep.retry.length_factor
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        text = (await client.files.content(file_id)).text
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            key, resp = row["custom_id"], row.get("response") or {}
            body = resp.get("body") or {}
            if resp.get("status_code") == 200 and body.get("choices"):
                msg = body["choices"][0]
                usage = body.get("usage") or {}
                pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                o = Outcome("done", 1, msg["message"].get("content") or "", msg.get("finish_reason"), None, pt, ct,
                            cost_usd(pt, ct, ep.price_in, ep.price_out))
                if (o.finish_reason == "length" and key not in cut and factor > 1
                        and enlarged(journal.body(key), factor) is not None):
                    journal.hold_cut(key, o)
                    held.append(key)
                    continue
                journal.record(key, o)
                done += 1
            elif key in cut:   # the re-ask failed: keep the cut answer (recorded invalid later) rather than lose it
                err = row.get("error") or body.get("error") or {"message": f"status {resp.get('status_code')}"}
                log.warning("re-ask of cut response %s failed (%s); keeping the cut answer", key[:12],
                            json.dumps(err)[:200])
                journal.record(key, Outcome("done", 1, cut[key], "length"))
                done += 1
            else:
                err = row.get("error") or body.get("error") or {"message": f"status {resp.get('status_code')}"}
                journal.record(key, Outcome("failed", 1, error=f"batch line error: {json.dumps(err)[:300]}"))
                failed += 1
    return done, failed, held


async def run_batches(journal: Journal, task: str, todo: list[tuple[str, dict]], ep: Endpoint,
                      poll_interval: float = 30.0) -> dict:
    """Resume open batches of this task, submit the rest, poll until all are terminal, collect results.
    Answers cut by max_tokens (finish_reason=length) are asked once more, as live mode does, in a follow-up
    batch with a budget `ep.retry.length_factor` times larger; both answers' tokens and cost are counted."""
    client = openai.AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key or "none", timeout=ep.timeout,
                                max_retries=ep.retry.max_attempts - 1)
    try:
        cut = journal.held_cuts(task)   # held by an earlier run that stopped before its follow-up finished
        todo = [(k, (enlarged(b, ep.retry.length_factor) or b) if k in cut else b) for k, b in todo]
        ids = journal.open_batches(task)
        if ids:
            log.info("resuming %d open batch(es): %s", len(ids), ids)
        ids += await _submit(client, journal, task, todo)
        done = failed = asked_again = 0
        pending = list(ids)
        while pending:
            held = []
            while pending:
                for bid in list(pending):
                    b = await client.batches.retrieve(bid)
                    journal.set_batch_status(bid, b.status)
                    if b.status in TERMINAL:
                        d, f, h = await _collect(client, journal, b, ep, cut)
                        done, failed, held = done + d, failed + f, held + h
                        journal.release_batch(bid)
                        journal.set_batch_status(bid, "collected")
                        pending.remove(bid)
                        log.info("batch %s %s: %d done, %d failed, %d cut by max_tokens", bid, b.status, d, f,
                                 len(h))
                if pending:
                    await asyncio.sleep(poll_interval)
            if held:
                log.info("%d response(s) cut by max_tokens; asking again with a %gx budget in a follow-up batch",
                         len(held), ep.retry.length_factor)
                cut.update(journal.held_cuts(task))
                follow = [(k, enlarged(journal.body(k), ep.retry.length_factor)) for k in held]
                pending = await _submit(client, journal, task, follow)
                ids += pending
                asked_again += len(held)
        return {"batches": ids, "done": done, "failed": failed, "asked_again": asked_again}
    finally:
        await client.close()
