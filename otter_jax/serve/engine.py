"""The serving engine: one thread owns the model; requests are batched and decoded step by step.

Continuous batching at step level: between two decode steps, waiting requests join the free rows (finished or
padding rows) of a running batch when they fit it (prompt within its padded length, media within its slots, and
max_tokens within the cache slots it has left; see `stream.join`). Requests that fit no running batch start a new
one, prefilled between two steps of the others; up to `max_batches` batches then advance one token per round each.
A request arriving mid-generation therefore starts at the next step, never after a whole generation.

Shapes are bucketed (batch size, prompt length, media slots, new-token budget), so a new prompt length or batch
size reuses a compiled program. Media latents (vision encoder + perceiver) are cached by a sha256 of the image
bytes in an LRU, so an image repeated across requests (in-context examples) is encoded once.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from otter_jax import sharding as S
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
    """A prefilled batch: one slot per row (None: free), device state, steps taken out of `max_new`."""

    def __init__(self, rows, pre, state, media, params, prompt_len, slots, max_new):
        self.rows, self.pre, self.state, self.media, self.params = rows, pre, state, media, params
        self.prompt_len, self.slots, self.max_new, self.steps = prompt_len, slots, max_new, 0

    def live(self) -> bool:
        return any(r is not None and r.live for r in self.rows)

    def free(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is None or not r.live]

    def fits(self, job: Job) -> bool:
        return len(job.ids) <= self.prompt_len and len(job.media) <= self.slots and \
            job.max_tokens <= self.max_new - self.steps


class Engine:
    def __init__(self, model, cfg, tok, *, mesh=None, batch_sizes=(1, 2, 4, 8), media_slots=(1, 2, 4, 8, 16),
                 new_token_buckets=(16, 64, 256), prompt_bucket: int = 64, max_batches: int = 4,
                 media_cache: int = 512, batch_wait_s: float = 0.005, resize: str = "squash", join: bool = True):
        self.model, self.cfg, self.tok, self.mesh = model, cfg, tok, mesh
        self.bound = stream.Bound(model)
        self.batch_sizes, self.media_slots = sorted(batch_sizes), sorted(media_slots)
        self.new_token_buckets, self.prompt_bucket = sorted(new_token_buckets), prompt_bucket
        self.max_batches, self.cache_size, self.batch_wait_s, self.resize = max_batches, media_cache, batch_wait_s, resize
        self.allow_join = join
        self.eos = cfg.tokens.endofchunk
        self.pad = cfg.tokens.pad if cfg.tokens.pad is not None else self.eos
        self.cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.stats = {"media_encodes": 0, "media_cache_hits": 0, "batches": 0, "joined": 0, "steps": 0,
                      "requests": 0}
        self.shapes: set[tuple[int, int, int, int]] = set()  # (batch, prompt, media slots, new tokens) compiled
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[_Batch] = []
        self.closing = False
        self._open = 0  # submitted jobs not yet done
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._loop, name="otter-engine", daemon=True)
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ called from the HTTP side
    def warmup(self) -> None:
        """Compile the smallest bucket of every shape (and the one-frame image encoder) before serving, so the
        first request does not wait for the compiler. Call before `start`."""
        def job():
            return Job([self.pad], [], 1, 0.0, 1.0, 0, [], lambda kind, value: None)

        batch = self._prefill([job()])
        self._advance(batch)
        if self.allow_join:  # compiles the join of the smallest batch bucket
            with self._arrived:
                self.waiting.append(job())
            self._join(batch)
            self.stats["joined"] = self.stats["requests"] = 0

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def knows(self, key: str) -> bool:
        with self._lock:
            return key in self.cache

    def submit(self, jobs: list[Job]) -> None:
        if self.closing:
            raise ApiError("the server is shutting down", status=503, type="server_error", code="shutting_down")
        with self._arrived:
            for job in jobs:
                job.emit = self._counted(job.emit)
                self._open += 1
                self.waiting.append(job)
            self._arrived.notify()

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
                if r is not None and r.live:
                    r.job.emit("error", "cancelled: the server shut down")
        with self._lock:
            left, self.waiting = list(self.waiting), collections.deque()
        for job in left:
            job.emit("error", "cancelled: the server shut down")

    def health(self) -> dict:
        return {**self.stats, "media_cached": len(self.cache), "queued": len(self.waiting),
                "running_batches": len(self.running), "compiled_shapes": sorted(self.shapes)}

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        while not self._stopped.is_set():
            if not self.running:
                with self._arrived:
                    if not self.waiting:
                        self._arrived.wait(timeout=0.05)
                        continue
                time.sleep(self.batch_wait_s)  # let requests sent together arrive together
            self._drop_cancelled()
            if self.allow_join:
                for b in self.running:
                    self._join(b)
            if self.waiting and len(self.running) < self.max_batches:
                self._admit()
            self.running = [b for b in self.running if b.live() and b.steps < b.max_new]
            for b in list(self.running):
                self._step(b)

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [j for j in self.waiting if j.cancelled]
            if gone:
                self.waiting = collections.deque(j for j in self.waiting if not j.cancelled)
        for j in gone:
            j.emit("error", "cancelled by the client")

    def _pop(self, n: int, fits=lambda job: True) -> list[Job]:
        """Up to n waiting jobs that fit, oldest first; the others keep their place."""
        with self._lock:
            taken, kept = [], collections.deque()
            for job in self.waiting:
                (taken if len(taken) < n and fits(job) else kept).append(job)
            self.waiting = kept
        return taken

    def _admit(self) -> None:
        jobs = self._pop(self.batch_sizes[-1])
        try:
            self.running.append(self._prefill(jobs))
            self.stats["batches"] += 1
            self.stats["requests"] += len(jobs)
        except Exception as e:  # never lose the thread: the batch's requests get a 500
            log.exception("prefill failed")
            for j in jobs:
                j.emit("error", f"internal error in prefill ({type(e).__name__}: {e})")

    def _join(self, b: _Batch) -> None:
        free = b.free()
        jobs = self._pop(len(free), b.fits) if free and self.waiting else []
        if not jobs:
            return
        try:
            fresh = self._prefill(jobs, like=b)
            k = len(fresh.rows)
            dst = np.full((k,), len(b.rows), np.int32)  # out of range: dropped
            dst[:len(jobs)] = free[:len(jobs)]
            params = fresh.params._replace(start=self._put(np.full((k,), b.steps, np.int32)))
            with self._context():
                b.pre, b.state, b.media, b.params = stream.join(b.pre, b.state, b.media, b.params, fresh.pre,
                                                                fresh.state, fresh.media, params, self._put(dst))
            for i, row in zip(free, fresh.rows[:len(jobs)]):
                b.rows[i] = row
            self.stats["joined"] += len(jobs)
            self.stats["requests"] += len(jobs)
        except Exception as e:
            log.exception("join failed")
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
        out = np.asarray(self.bound.encode(jnp.asarray(pixels[None, None])))[0, 0]
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
        """Committed arrays (device_put), like the outputs of `join` that replace them: jit keys its cache on
        whether an argument is committed, so uncommitted inputs would compile every program a second time."""
        if self.mesh is None:
            return jax.device_put(x, jax.devices()[0])
        return jax.device_put(x, S.batch_sharding(self.mesh, S.DEFAULT_RULES, np.ndim(x)))

    def _prefill(self, jobs: list[Job], like: _Batch | None = None) -> _Batch:
        """A new batch of `jobs` (padded to a batch bucket), or one shaped `like` a running batch to join it."""
        b = bucket(len(jobs), self.batch_sizes)
        if like is None:
            t = bucket(max(1, max(len(j.media) for j in jobs)), self.media_slots)
            length = max(len(j.ids) for j in jobs)
            length += (-length) % self.prompt_bucket if self.prompt_bucket > 0 else 0
            max_new = bucket(max(j.max_tokens for j in jobs), self.new_token_buckets)
        else:
            t, length, max_new = like.slots, like.prompt_len, like.max_new
        with self._context():
            lat = [[self._latents(m) for m in j.media] for j in jobs]
            first = next((x for row in lat for x in row), None)
            first = self._blank_latents() if first is None else first
            media = np.zeros((b, t) + first.shape, first.dtype)
            ids = np.full((b, length), self.pad, np.int32)
            mask = np.zeros((b, length), np.int32)
            for r in range(b):
                k = r if r < len(jobs) else 0  # padding rows repeat row 0 (never read back)
                for s, x in enumerate(lat[k]):
                    media[r, s] = x
                ids[r, length - len(jobs[k].ids):] = jobs[k].ids
                mask[r, length - len(jobs[k].ids):] = 1
            rows = [jobs[k if k < len(jobs) else 0] for k in range(b)]
            params = stream.RowParams(*map(self._put, (
                np.asarray([j.temperature > 0 for j in rows]), np.asarray([j.temperature or 1.0 for j in rows], np.float32),
                np.asarray([j.top_p for j in rows], np.float32), np.asarray([j.seed for j in rows], np.uint32),
                np.zeros((b,), np.int32))))
            media, ids, mask = self._put(media), self._put(ids), self._put(mask)
            pre, state = self.bound.start(media, ids, mask, max_new=max_new)
        self.shapes.add((b, length, t, max_new))
        rows = [_Row(j, self.tok, self.eos) for j in jobs] + [None] * (b - len(jobs))
        return _Batch(rows, pre, state, media, params, length, t, max_new)

    def _blank_latents(self) -> np.ndarray:
        """Latents [n, D] of a blank image, for the shape and dtype of a text-only batch's (unread) media."""
        if not hasattr(self, "_blank"):
            size = self.cfg.vision.image_size
            self._blank = np.asarray(self.bound.encode(jnp.zeros((1, 1, 1, 3, size, size))))[0, 0]
        return self._blank

    def _advance(self, b: _Batch) -> np.ndarray:
        with self._context():
            tokens, b.state = self.bound.advance(b.media, b.pre, b.state, b.params, prompt_len=b.prompt_len)
            return np.asarray(tokens)

    def _step(self, b: _Batch) -> None:
        try:
            tokens = self._advance(b)
        except Exception as e:
            log.exception("decode step failed")
            for r in b.rows:
                if r is not None and r.live:
                    r.job.emit("error", f"internal error in decoding ({type(e).__name__}: {e})")
                    r.live = False
            return
        self.stats["steps"] += 1
        b.steps += 1
        for i, r in enumerate(b.rows):
            if r is None or not r.live:
                continue
            if r.job.cancelled:
                r.job.emit("error", "cancelled by the client")
                r.live = False
            else:
                r.push(int(tokens[i]))
