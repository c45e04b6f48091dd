"""Token and cost estimates for dry runs and rate limiting, without a tokenizer download.

Exact BPE files cannot be fetched at run time here, and an estimate is all a dry run or a tokens/min limiter
needs: ~4 characters per token for ASCII text, ~1 token per character for CJK and other non-ASCII scripts.
Real token counts come back in each response's `usage` and are what the journal accounts for.
"""

from __future__ import annotations

import math


def estimate_tokens(text: str) -> int:
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def estimate_request_tokens(body: dict) -> int:
    """Prompt tokens of a chat body (+4 per message for role framing)."""
    total = 0
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content)
        total += estimate_tokens(content) + 4
    return total


def cost_usd(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    """Prices are USD per million tokens, as providers quote them."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6
