"""From rendered messages to journaled answers: request bodies, dry runs, and online or batch sending.

Every pipeline (run, translate, mm-instruct, cold-start) registers its items in the journal, then calls
`dispatch`, which sends only what the journal says is still outstanding. `dry_run` shows the rendered prompts
and token/cost estimates and touches neither the network nor the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from syphus.engine import Endpoint, send_all
from syphus.journal import JOURNAL_NAME, Journal
from syphus.parse import response_format
from syphus.tokens import cost_usd, estimate_request_tokens


@dataclass
class Gen:
    """Model and sampling parameters; part of every request key."""
    model: str
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 3200
    structured: bool = True   # send a JSON schema in response_format (endpoints without it: --text-output)

    def body(self, messages: list[dict], schema: dict | None = None, **overrides) -> dict:
        b = {"model": self.model, "messages": messages, "temperature": self.temperature, "top_p": self.top_p,
             "max_tokens": self.max_tokens}
        b.update(overrides)
        if schema is not None and self.structured:
            b["response_format"] = response_format(schema)
        return b


@dataclass
class Mode:
    batch: bool = False
    poll_interval: float = 30.0
    retry_failed: bool = True


def run_async(coro):
    """asyncio.run on uvloop when it is installed (faster sockets), the default loop otherwise."""
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


@contextlib.contextmanager
def journaled_run(directory, task: str, entries, ep: Endpoint, mode: Mode):
    """Record `entries` under `task` in the journal of `directory` (created if needed), send what is not finished
    yet, and yield (journal, this run's counts); the journal is closed afterwards whatever happens."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    journal = Journal(directory / JOURNAL_NAME)
    try:
        journal.add_many(task, entries)
        yield journal, dispatch(journal, task, ep, mode)
    finally:
        journal.close()


def dispatch(journal: Journal, task: str, ep: Endpoint, mode: Mode) -> dict:
    todo = journal.todo(task, retry_failed=mode.retry_failed)
    if mode.batch:
        from syphus.batch import run_batches
        return run_async(run_batches(journal, task, todo, ep, mode.poll_interval))
    stats = run_async(send_all(journal, todo, ep, desc=task))
    return {"sent": stats.sent, "done": stats.done, "failed": stats.failed, "seconds": round(stats.seconds, 3),
            "requests_per_s": round(stats.done / stats.seconds, 2) if stats.seconds else None}


def dry_run(entries: list[tuple[str, dict]], ep: Endpoint, show: int = 3, out=None) -> dict:
    """Print the first `show` rendered requests and totals over all of them; sends nothing."""
    out = out or sys.stdout
    prompt_tokens = sum(estimate_request_tokens(b) for _, b in entries)
    max_completion = sum(int(b.get("max_tokens") or 0) for _, b in entries)
    for item_id, body in entries[:show]:
        print(f"=== {item_id}  (~{estimate_request_tokens(body)} prompt tokens, model {body['model']})", file=out)
        for m in body["messages"]:
            print(f"--- {m['role']}\n{m['content']}", file=out)
        if "response_format" in body:
            print(f"--- response_format: {json.dumps(body['response_format'])[:200]}", file=out)
    summary = {"requests": len(entries), "estimated_prompt_tokens": prompt_tokens,
               "max_completion_tokens": max_completion,
               "estimated_max_cost_usd": round(cost_usd(prompt_tokens, max_completion, ep.price_in, ep.price_out), 4)}
    print("dry run, nothing sent: " + json.dumps(summary), file=out)
    return summary
