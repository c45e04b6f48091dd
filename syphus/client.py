"""Thin async client for the OpenAI-compatible chat-completions endpoint, built on aiohttp.

Why not `openai.AsyncOpenAI` here: on a 2-core machine its per-request overhead (httpx2 + pydantic models)
caps a run at a few hundred requests/s, while this path is a JSON POST that aiohttp's C parser handles at
thousands/s. Retries are ours (see retry.py), so every failure surfaces as a RequestError with a reason that is
safe to journal. The OpenAI SDK is still used where it adds value: the Batch API (batch.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from syphus.retry import RETRYABLE_STATUS, RequestError, parse_retry_after


@dataclass
class Completion:
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def completion_from_json(data: dict) -> Completion:
    """Validate a chat.completion object; malformed ones raise a retryable RequestError."""
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        usage = data.get("usage") or {}
        return Completion(content, choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise RequestError(f"malformed completion object ({type(e).__name__}: {e})", retryable=True) from None


class ChatClient:
    """One aiohttp session per run; use as `async with ChatClient(...) as c: await c.complete(body)`."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 120.0, max_connections: int = 256):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_connections = max_connections
        self.session: aiohttp.ClientSession | None = None

    def __repr__(self):  # never show headers (the key) in reprs or tracebacks
        return f"ChatClient(url={self.url!r})"

    async def __aenter__(self):
        conn = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
        self.session = aiohttp.ClientSession(connector=conn, timeout=self.timeout, headers=self._headers)
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def complete(self, body: dict) -> Completion:
        payload = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with self.session.post(self.url, data=payload) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    text = raw[:300].decode("utf-8", "replace")
                    if self._api_key:  # some servers echo the key back in auth errors
                        text = text.replace(self._api_key, "[api key redacted]")
                    raise RequestError(f"HTTP {resp.status}: {text}", resp.status in RETRYABLE_STATUS,
                                       parse_retry_after(resp.headers), resp.status)
        except asyncio.TimeoutError:
            raise RequestError(f"timeout after {self.timeout.total:g} s", retryable=True) from None
        except aiohttp.ClientPayloadError as e:
            raise RequestError(f"truncated response body ({e})", retryable=True) from None
        except aiohttp.ClientConnectionError as e:
            raise RequestError(f"connection error ({type(e).__name__}: {e})", retryable=True) from None
        except aiohttp.ClientError as e:
            raise RequestError(f"HTTP client error ({type(e).__name__}: {e})", retryable=True) from None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(f"malformed JSON in response ({e})", retryable=True) from None
        return completion_from_json(data)
