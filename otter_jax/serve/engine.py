"""The serving engine: one thread owns the model; requests are batched and decoded step by step.

Batching is dynamic with step-level interleaving, not row-level continuous batching: waiting requests are taken
together (up to the largest batch bucket) into a new batch, which is prefilled between two decode steps of the
batches already running; then every running batch advances one token per round. So a request that arrives
mid-generation starts at the next step instead of waiting for a whole generation, but it does not join the rows of
a batch already running (its cache slots are shared by all rows: `search.step` writes every row at one index).

Shapes are bucketed (batch size, prompt length, media slots, new-token budget), so a new prompt length or batch
size reuses a compiled program. Media latents (vision encoder + perceiver) are cached by a sha256 of the image
bytes in an LRU, so an image repeated across requests (in-context examples) is encoded once.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from otter_jax import sharding as S
from otter_jax.generate import encode_media
from otter_jax.generate import stream
from otter_jax.serve.protocol import ApiError, Media

log = logging.getLogger("otter_jax.serve")


def bucket(n: int, sizes: list[int]) -> int:
    """The smallest size >= n (sizes ascending); the caller has already refused anything larger."""
    return next(s for s in sizes if s >= n)


@dataclasses.dataclass
class Job:
    """One choice of one request. `emit(kind, value)` is called from the engine thread: ("delta", text),
    ("done", (finish_reason, completion_tokens)) or ("error", message)."""

    ids: list[int]
    media: list[Media]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str]
    emit: Callable[[str, object], None]
    cancelled: bool = False


class Detokenizer:
    """Token ids -> text deltas, cut at stop strings. The answer is `decode(tokens).strip()`, as
    `requests.answers` computes it; text that a stop string might still begin is held back."""

    def __init__(self, tok, stop: list[str]):
        self.tok, self.stop, self.ids, self.sent = tok, stop, [], ""
        self.hold = max((len(s) for s in stop), default=1) - 1

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns (new text, hit a stop string)."""
        self.ids.append(token)
        return self._flush(final=False)

    def _flush(self, final: bool) -> tuple[str, bool]:
        text = self.tok.decode(self.ids, skip_special_tokens=True).strip()
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                return self._emit(text[:at]), True
        if not final:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
                return "", False
            text = text[:len(text) - self.hold] if self.hold else text
        return self._emit(text), False

    def _emit(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self) -> str:
        return self._flush(final=True)[0]


class _Row:
    def __init__(self, job: Job, tok, eos: int):
        self.job, self.eos, self.detok, self.count, self.live = job, eos, Detokenizer(tok, job.stop), 0, True

    def push(self, token: int) -> None:
        self.count += 1
        if token == self.eos:
            return self._end("stop", self.detok.finish())
        delta, stopped = self.detok.push(token)
        if stopped:
            return self._end("stop", delta)
        if delta:
            self.job.emit("delta", delta)
        if self.count >= self.job.max_tokens:
            self._end("length", self.detok.finish())

    def _end(self, reason: str, delta: str) -> None:
        if delta:
            self.job.emit("delta", delta)
        self.job.emit("done", (reason, self.count))
        self.live = False


class _Batch:
    """A prefilled batch: its rows, device state, and the number of steps it may still take."""

    def __init__(self, rows, pre, state, media, params, prompt_len, max_new):
        self.rows, self.pre, self.state, self.media, self.params = rows, pre, state, media, params
        self.prompt_len, self.max_new, self.steps = prompt_len, max_new, 0


class Engine:
    def __init__(self, model, cfg, tok, *, mesh=None, batch_sizes=(1, 2, 4, 8), media_slots=(1, 2, 4, 8, 16),
                 new_token_buckets=(16, 64, 256), prompt_bucket: int = 64, max_batches: int = 4,
                 media_cache: int = 512, batch_wait_s: float = 0.005, resize: str = "squash"):
        self.model, self.cfg, self.tok, self.mesh = model, cfg, tok, mesh
        self.batch_sizes, self.media_slots = sorted(batch_sizes), sorted(media_slots)
        self.new_token_buckets, self.prompt_bucket = sorted(new_token_buckets), prompt_bucket
        self.max_batches, self.cache_size, self.batch_wait_s, self.resize = max_batches, media_cache, batch_wait_s, resize
        self.eos = cfg.tokens.endofchunk
        self.pad = cfg.tokens.pad if cfg.tokens.pad is not None else self.eos
        self.cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.stats = {"media_encodes": 0, "media_cache_hits": 0, "batches": 0, "steps": 0, "requests": 0}
        self.shapes: set[tuple[int, int, int, int]] = set()  # (batch, prompt, media slots, new tokens) compiled
        self.queue: queue.Queue[Job] = queue.Queue()
        self.running: list[_Batch] = []
        self.closing = False
        self._open = 0  # submitted jobs not yet done
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="otter-engine", daemon=True)
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ called from the HTTP side
    def start(self) -> "Engine":
        self._thread.start()
        return self

    def warmup(self) -> None:
        """Compile the smallest bucket of every shape (and the one-frame image encoder) before serving, so the
        first request does not wait for the compiler. Call before `start`."""
        job = Job([self.pad], [], self.new_token_buckets[0], 0.0, 1.0, 0, [], lambda kind, value: None)
        batch = self._prefill([job])
        self._step(batch, keep=False)

    def knows(self, key: str) -> bool:
        with self._lock:
            return key in self.cache

    def submit(self, jobs: list[Job]) -> None:
        if self.closing:
            raise ApiError("the server is shutting down", status=503, type="server_error", code="shutting_down")
        for job in jobs:
            job.emit = self._counted(job.emit)
            with self._lock:
                self._open += 1
            self.queue.put(job)

    def _counted(self, emit):
        """Count a job open from submit to its last event, so shutdown waits for exactly the accepted jobs."""
        def wrapped(kind, value):
            if kind != "delta":
                with self._lock:
                    self._open -= 1
            emit(kind, value)
        return wrapped

    def busy(self) -> bool:
        return self._open > 0

    def close(self, timeout: float) -> None:
        """Stop taking requests, finish what was accepted (up to `timeout` s), cancel the rest, stop the thread."""
        self.closing = True
        deadline = time.time() + timeout
        while self.busy() and time.time() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        self._stopped.set()
        self._thread.join(timeout=max(1.0, deadline - time.time() + 5))
        for b in self.running:
            for r in b.rows:
                if r.live:
                    r.job.emit("error", "cancelled: the server shut down")
        while not self.queue.empty():
            self.queue.get_nowait().emit("error", "cancelled: the server shut down")

    def health(self) -> dict:
        return {**self.stats, "media_cached": len(self.cache), "queued": self.queue.qsize(),
                "running_batches": len(self.running), "compiled_shapes": sorted(self.shapes)}

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        while not self._stopped.is_set():
            if not self.running:
                try:
                    first = self.queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                time.sleep(self.batch_wait_s)  # let requests sent together arrive together
                self._admit([first])
            elif len(self.running) < self.max_batches and not self.queue.empty():
                self._admit([])
            for b in list(self.running):
                self._step(b)

    def _take(self, jobs: list[Job]) -> list[Job]:
        while len(jobs) < self.batch_sizes[-1]:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for j in jobs:
            if j.cancelled:
                j.emit("error", "cancelled by the client")
        return [j for j in jobs if not j.cancelled]

    def _admit(self, jobs: list[Job]) -> None:
        jobs = self._take(jobs)
        if not jobs:
            return
        try:
            self.running.append(self._prefill(jobs))
            self.stats["batches"] += 1
            self.stats["requests"] += len(jobs)
        except Exception as e:  # never lose the thread: the batch's requests get a 500
            log.exception("prefill failed")
            for j in jobs:
                j.emit("error", f"internal error in prefill ({type(e).__name__}: {e})")

    def _latents(self, m: Media) -> np.ndarray:
        with self._lock:
            hit = self.cache.get(m.key)
            if hit is not None:
                self.cache.move_to_end(m.key)
                self.stats["media_cache_hits"] += 1
                return hit
        pixels = m.pixels
        if pixels is None:  # decoded before, evicted since: same bytes, so this decode succeeds
            from otter_jax.data.images import decode_resize, normalize_host
            size = self.cfg.vision.image_size
            pixels = np.stack([normalize_host(decode_resize(f, size, self.resize)) for f in m.frames])
        out = np.asarray(encode_media(self.model, jnp.asarray(pixels[None, None])))[0, 0]
        with self._lock:
            self.stats["media_encodes"] += 1
            self.cache[m.key] = out
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        m.pixels = None  # the latents are what is kept
        return out

    def _context(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _put(self, x):
        x = jnp.asarray(x)
        return x if self.mesh is None else jax.device_put(x, S.batch_sharding(self.mesh, S.DEFAULT_RULES, x.ndim))

    def _prefill(self, jobs: list[Job]) -> _Batch:
        b = bucket(len(jobs), self.batch_sizes)
        n_media = max(len(j.media) for j in jobs)
        t = bucket(max(1, n_media), self.media_slots)
        length = max(len(j.ids) for j in jobs)
        length += (-length) % self.prompt_bucket if self.prompt_bucket > 0 else 0
        max_new = bucket(max(j.max_tokens for j in jobs), self.new_token_buckets)
        with self._context():
            lat = [[self._latents(m) for m in j.media] for j in jobs]
            like = next((x for row in lat for x in row), None)
            like = self._blank_latents() if like is None else like
            media = np.zeros((b, t) + like.shape, like.dtype)
            ids = np.full((b, length), self.pad, np.int32)
            mask = np.zeros((b, length), np.int32)
            for r in range(b):
                k = r if r < len(jobs) else 0  # padding rows repeat row 0 (never read back)
                for s, x in enumerate(lat[k]):
                    media[r, s] = x
                ids[r, length - len(jobs[k].ids):] = jobs[k].ids
                mask[r, length - len(jobs[k].ids):] = 1
            rows = [jobs[k if k < len(jobs) else 0] for k in range(b)]
            params = stream.RowParams(jnp.asarray([j.temperature > 0 for j in rows]),
                                      jnp.asarray([j.temperature or 1.0 for j in rows], jnp.float32),
                                      jnp.asarray([j.top_p for j in rows], jnp.float32),
                                      jnp.asarray([j.seed for j in rows], jnp.uint32))
            media, ids, mask = self._put(media), self._put(ids), self._put(mask)
            pre, state = stream.start(self.model, media, ids, mask, max_new=max_new)
        self.shapes.add((b, length, t, max_new))
        return _Batch([_Row(j, self.tok, self.eos) for j in jobs], pre, state, media, params, length, max_new)

    def _blank_latents(self) -> np.ndarray:
        """Latents [n, D] of a blank image, for the shape and dtype of a text-only batch's (unread) media."""
        if not hasattr(self, "_blank"):
            size = self.cfg.vision.image_size
            self._blank = np.asarray(encode_media(self.model, jnp.zeros((1, 1, 1, 3, size, size))))[0, 0]
        return self._blank

    def _step(self, b: _Batch, keep: bool = True) -> None:
        try:
            with self._context():
                tokens, b.state = stream.advance(self.model, b.media, b.pre, b.state, b.params,
                                                 prompt_len=b.prompt_len)
                tokens = np.asarray(tokens)
        except Exception as e:
            log.exception("decode step failed")
            for r in b.rows:
                if r.live:
                    r.job.emit("error", f"internal error in decoding ({type(e).__name__}: {e})")
                    r.live = False
            if keep:
                self.running.remove(b)
            return
        if not keep:
            return
        self.stats["steps"] += 1
        b.steps += 1
        for i, r in enumerate(b.rows):
            if r.live and r.job.cancelled:
                r.job.emit("error", "cancelled by the client")
                r.live = False
            elif r.live:
                r.push(int(tokens[i]))
        if b.steps >= b.max_new or not any(r.live for r in b.rows):
            self.running.remove(b)
