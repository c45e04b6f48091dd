"""Which failures are worth another attempt, and how long to wait before it.

Transient: 429, 408, 409, 5xx, timeouts, dropped or reset connections, truncated or malformed bodies. Permanent:
any other 4xx (bad request, bad key, unknown model): retrying those only burns quota. Waits use exponential
backoff with full jitter so concurrent workers spread out, but a server's Retry-After (or retry-after-ms) is
honoured as given, capped so a bogus header cannot stall a run forever. Attempts are bounded.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRYABLE_STATUS = {408, 409, 429} | set(range(500, 600))


class RequestError(Exception):
    """A failed attempt. `reason` is safe to store: it never contains headers or the API key."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after, self.status = reason, retryable, retry_after, status


def parse_retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` as seconds or an HTTP date; None when absent or invalid."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    length_factor: float = 2.0   # a response cut by max_tokens is asked once more with this much larger a budget

    def delay(self, attempt: int, err: RequestError, rng: random.Random = random) -> float:
        """Wait before attempt `attempt + 1` (attempt counts from 1)."""
        if err.retry_after is not None:
            return min(err.retry_after, self.max_retry_after) + rng.uniform(0, self.base_delay / 10)
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
