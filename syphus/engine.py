"""Send a task's outstanding requests with bounded concurrency, rate limits and bounded retries.

A fixed pool of workers pulls from one queue, so a slow call holds one slot instead of stalling a whole batch
(the upstream pattern waits for the slowest of 8). Each request ends exactly once in the journal: done with
its response and token counts, or failed with the reason of its last attempt. A 429 pauses every worker for
the Retry-After time, since the limit is the endpoint's, not one request's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter
from tqdm import tqdm

from syphus.client import ChatClient
from syphus.journal import Journal, Outcome
from syphus.retry import RequestError, RetryPolicy
from syphus.tokens import cost_usd, estimate_request_tokens

log = logging.getLogger("syphus")


@dataclass
class Endpoint:
    """Where and how to send: everything but the request bodies. The key lives only here and in headers."""
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 64
    timeout: float = 120.0
    rpm: float = 0.0            # requests per minute, 0 = unlimited
    tpm: float = 0.0            # tokens per minute (prompt estimate + max_tokens), 0 = unlimited
    price_in: float = 0.0       # USD per 1M prompt tokens
    price_out: float = 0.0      # USD per 1M completion tokens
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool = True


class _Limits:
    def __init__(self, ep: Endpoint):
        # a per-second bucket (not a per-minute one) so a limit cannot be spent in one burst at the start
        self.rpm = self._bucket(ep.rpm)
        self.tpm = self._bucket(ep.tpm)
        self.pause_until = 0.0

    @staticmethod
    def _bucket(per_minute: float):
        if not per_minute:
            return None
        capacity = max(1.0, per_minute / 60)
        return AsyncLimiter(capacity, capacity * 60 / per_minute)

    async def acquire(self, body: dict):
        while (wait := self.pause_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self.rpm:
            await self.rpm.acquire()
        if self.tpm:
            need = estimate_request_tokens(body) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
            await self.tpm.acquire(min(need, self.tpm.max_rate))


def enlarged(body: dict, factor: float) -> dict | None:
    """The body with its completion budget multiplied by `factor`, or None when it sets no budget."""
    for k in ("max_tokens", "max_completion_tokens"):
        if body.get(k):
            return {**body, k: int(body[k] * factor)}
    return None


async def _complete(client: ChatClient, body: dict, ep: Endpoint, limits: _Limits, rng: random.Random) -> Outcome:
    """One request, retried on transient errors; a response cut by the token budget (finish_reason=length) is
    asked once more with a budget `ep.retry.length_factor` times larger, since the same budget would cut it again.
    The outcome keeps the original request's key; its tokens and cost include both calls."""
    o = await _attempts(client, body, ep, limits, rng)
    bigger = enlarged(body, ep.retry.length_factor) if o.status == "done" and o.finish_reason == "length" else None
    if bigger is None or not ep.retry.length_factor > 1:
        return o
    log.debug("response cut at %s tokens; asking again with %s", body.get("max_tokens"), bigger.get("max_tokens"))
    o2 = await _attempts(client, bigger, ep, limits, rng)
    if o2.status != "done":   # keep the cut answer (recorded invalid later) rather than losing it
        return o
    return Outcome("done", o.attempts + o2.attempts, o2.response, o2.finish_reason, None,
                   o.prompt_tokens + o2.prompt_tokens, o.completion_tokens + o2.completion_tokens, o.cost + o2.cost)


async def _attempts(client: ChatClient, body: dict, ep: Endpoint, limits: _Limits, rng: random.Random) -> Outcome:
    last: RequestError | None = None
    for attempt in range(1, ep.retry.max_attempts + 1):
        await limits.acquire(body)
        try:
            c = await client.complete(body)
        except RequestError as e:
            last = e
            if not e.retryable or attempt == ep.retry.max_attempts:
                break
            delay = ep.retry.delay(attempt, e, rng)
            if e.status == 429 and e.retry_after is not None:
                limits.pause_until = max(limits.pause_until, time.monotonic() + delay)
            log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, e.reason, delay)
            await asyncio.sleep(delay)
            continue
        return Outcome("done", attempt, c.content, c.finish_reason, None, c.prompt_tokens, c.completion_tokens,
                       cost_usd(c.prompt_tokens, c.completion_tokens, ep.price_in, ep.price_out))
    kind = "permanent error" if not last.retryable else f"gave up after {attempt} attempts"
    return Outcome("failed", attempt, error=f"{kind}: {last.reason}")


@dataclass
class RunStats:
    sent: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0


async def send_all(journal: Journal, todo: list[tuple[str, dict]], ep: Endpoint, desc: str = "requests") -> RunStats:
    """Send every (key, body) in `todo`; results go to the journal as they arrive."""
    stats = RunStats(sent=len(todo))
    if not todo:
        return stats
    queue: asyncio.Queue = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    limits = _Limits(ep)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=desc, unit="req", disable=not ep.progress, mininterval=0.5)

    async def worker(client: ChatClient, wid: int):
        rng = random.Random(wid)
        while True:
            try:
                key, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            outcome = await _complete(client, body, ep, limits, rng)
            journal.record(key, outcome)
            if outcome.status == "done":
                stats.done += 1
            else:
                stats.failed += 1
                log.warning("request %s failed: %s", key[:12], outcome.error)
            bar.update(1)
            if stats.failed:
                bar.set_postfix(failed=stats.failed, refresh=False)

    async with ChatClient(ep.base_url, ep.api_key, ep.timeout, ep.concurrency) as client:
        await asyncio.gather(*(worker(client, i) for i in range(min(ep.concurrency, len(todo)))))
    bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats
