"""The HTTP side (aiohttp): routes, API keys, OpenAI-style errors, server-sent events, graceful shutdown.

Handlers never touch the model: they parse and decode images in a worker thread, hand `Job`s to the engine and
wait on an asyncio queue that the engine thread fills. Any failure inside a handler becomes a JSON error response,
so a bad request cannot take the server down.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import signal
import time
import uuid

from aiohttp import web

from otter_jax.data.images import decode_resize, normalize_host
from otter_jax.generate.requests import context_prompt_ids
from otter_jax.serve.engine import Engine, Job
from otter_jax.serve.protocol import ApiError, ChatRequest, Limits, Sources, decode_media, parse_chat

log = logging.getLogger("otter_jax.serve")
MAX_BODY = web.AppKey("max_body", int)


@dataclasses.dataclass
class ServerConfig:
    model_name: str
    api_keys: list[str]
    limits: Limits
    sources: Sources
    max_body_bytes: int = 64 << 20
    context_length: int | None = None  # prompt + completion tokens the model takes
    shutdown_timeout: float = 30.0


def _error(e: ApiError) -> web.Response:
    return web.json_response(e.body(), status=e.status)


@web.middleware
async def _errors(request: web.Request, handler):
    """Every failure is an OpenAI-style JSON error; nothing escapes to aiohttp's default HTML page."""
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e)
    except web.HTTPRequestEntityTooLarge:
        return _error(ApiError(f"request body too large (limit {request.app[MAX_BODY]} bytes)", status=413,
                               code="body_too_large"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(ApiError(e.reason, status=e.status, type="invalid_request_error"))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # a bug: log it, answer 500, keep serving
        log.exception("unhandled error")
        return _error(ApiError(f"internal error ({type(e).__name__})", status=500, type="server_error"))


class Server:
    def __init__(self, engine: Engine, cfg: ServerConfig):
        self.engine, self.cfg = engine, cfg
        self.app = web.Application(middlewares=[self._auth, _errors], client_max_size=cfg.max_body_bytes)
        self.app[MAX_BODY] = cfg.max_body_bytes
        self.app.add_routes([web.get("/health", self.health), web.get("/v1/models", self.models),
                             web.post("/v1/chat/completions", self.chat)])

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self.cfg.api_keys and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            token = given[7:].strip() if given.startswith("Bearer ") else ""
            if not any(hmac.compare_digest(token.encode(), k.encode()) for k in self.cfg.api_keys):
                return _error(ApiError("invalid or missing API key (Authorization: Bearer <key>)", status=401,
                                       code="invalid_api_key"))
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        status = "shutting_down" if self.engine.closing else "ok"
        return web.json_response({"status": status, "model": self.cfg.model_name, **self.engine.health()})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "otter-jax"}]})

    # ---------------------------------------------------------------------------------------------- chat
    def _prepare(self, body) -> tuple[ChatRequest, list[int]]:
        """Parse, tokenize and decode images (runs in a worker thread: image decoding is CPU work)."""
        lim = self.cfg.limits
        req = parse_chat(body, self.cfg.sources, lim, self.cfg.model_name)
        if len(req.all_media) > self.engine.media_slots[-1]:
            raise ApiError(f"{len(req.all_media)} media items, the limit is {self.engine.media_slots[-1]}",
                           param="messages", code="too_many_images")
        tok = self.engine.tok
        ctx = [(q, a, len(ms)) for q, a, ms in req.context]
        ids = context_prompt_ids(ctx, req.question, len(req.media), tok)
        if len(ids) > lim.max_prompt_tokens:
            raise ApiError(f"the prompt has {len(ids)} tokens, the limit is {lim.max_prompt_tokens}",
                           param="messages", code="context_length_exceeded")
        if self.cfg.context_length and len(ids) + req.sampling.max_tokens > self.cfg.context_length:
            raise ApiError(f"prompt ({len(ids)} tokens) + max_tokens ({req.sampling.max_tokens}) exceeds the "
                           f"model's context of {self.cfg.context_length} tokens", param="max_tokens",
                           code="context_length_exceeded")
        size, resize = self.engine.cfg.vision.image_size, self.engine.resize
        decode_media(req, lambda data: normalize_host(decode_resize(data, size, resize)), self.engine.knows)
        return req, ids

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON ({e})", code="invalid_json") from None
        loop = asyncio.get_running_loop()
        req, ids = await loop.run_in_executor(None, self._prepare, body)
        events: asyncio.Queue = asyncio.Queue()
        s = req.sampling

        def emitter(index: int):
            return lambda kind, value: loop.call_soon_threadsafe(events.put_nowait, (index, kind, value))

        jobs = [Job(ids, req.all_media, s.max_tokens, s.temperature, s.top_p,
                    s.seed + i, s.stop, emitter(i)) for i in range(s.n)]
        self.engine.submit(jobs)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": req.model}
        try:
            if req.stream:
                return await self._stream(request, req, ids, jobs, events, meta)
            return await self._complete(ids, jobs, events, meta)
        finally:
            for j in jobs:  # a client that went away stops costing decode steps
                j.cancelled = True

    async def _complete(self, ids, jobs, events, meta) -> web.Response:
        texts, finish, used = [""] * len(jobs), [None] * len(jobs), [0] * len(jobs)
        while any(f is None for f in finish):
            i, kind, value = await events.get()
            if kind == "delta":
                texts[i] += value
            elif kind == "done":
                finish[i], used[i] = value
            else:
                raise ApiError(value, status=500, type="server_error")
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": finish[i],
                    "logprobs": None} for i in range(len(jobs))]
        return web.json_response({**meta, "object": "chat.completion", "choices": choices,
                                  "usage": _usage(ids, used)})

    async def _stream(self, request, req, ids, jobs, events, meta) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(choices, usage=None):
            chunk = {**meta, "object": "chat.completion.chunk", "choices": choices}
            if req.include_usage:
                chunk["usage"] = usage
            await resp.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())

        for i in range(len(jobs)):
            await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        left, used = len(jobs), [0] * len(jobs)
        while left:
            i, kind, value = await events.get()
            if kind == "delta":
                await send([{"index": i, "delta": {"content": value}, "finish_reason": None}])
            elif kind == "done":
                used[i] = value[1]
                left -= 1
                await send([{"index": i, "delta": {}, "finish_reason": value[0]}])
            else:  # headers are gone: report the error in the stream, as OpenAI does
                err = ApiError(value, status=500, type="server_error").body()
                await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                left -= 1
        if req.include_usage:
            await send([], _usage(ids, used))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _usage(ids, used) -> dict:
    """Prompt tokens once (as OpenAI counts n > 1); completion tokens are every token decoded for a choice,
    the closing <|endofchunk|> included."""
    return {"prompt_tokens": len(ids), "completion_tokens": sum(used), "total_tokens": len(ids) + sum(used)}


async def serve(server: Server, host: str, port: int, ready=print) -> None:
    """Serve until SIGTERM/SIGINT, then: refuse new requests (503), finish the accepted ones (up to
    `shutdown_timeout`, after which they are cancelled), close the sockets, return."""
    runner = web.AppRunner(server.app, handle_signals=False, access_log=None,
                           shutdown_timeout=server.cfg.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    ready(f"otter-jax serve: {server.cfg.model_name} on http://{host}:{bound}/v1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    ready("otter-jax serve: shutting down (finishing accepted requests)")
    await loop.run_in_executor(None, server.engine.close, server.cfg.shutdown_timeout)
    await runner.cleanup()
