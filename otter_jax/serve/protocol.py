"""OpenAI chat-completions bodies -> Otter prompts and media, with every check that makes a bad request a 400.

Mapping (see README "Serving"):
- The last message must be `user`: its images (and at most one video) are the query media, its text the question.
- Each earlier `user` message followed by an `assistant` message is one in-context example in Otter's training
  format, `<image>...User:{q} GPT:<answer>{a}<|endofchunk|>`, with that user message's images as its media.
  Consecutive user messages are merged. Text-only turns become examples without `<image>`.
- `system` / `developer` text is put in front of the final question (Otter has no system prompt).
- Within a message the images come before the text (Otter's format puts `<image>` before `User:`), in part order.
- Extension: a content part `{"type": "video", "video": {"frames": [url, ...]}}` is one video (frames in order).

Image sources: `data:` URLs with base64; local paths / file:// URLs only under an allowed directory; http(s)
only when remote URLs are enabled. Nothing here touches the model: the engine owns encoding.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import urllib.parse
import urllib.request
from typing import Any, Callable

import numpy as np

SYSTEM_ROLES = ("system", "developer")


class ApiError(Exception):
    """An error answered as OpenAI does: HTTP status + {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Limits:
    max_images: int = 16  # images per request, video frames included
    max_tokens: int = 512  # completion tokens per choice
    max_prompt_tokens: int = 2048
    max_n: int = 4
    max_stop: int = 4
    max_frames: int | None = None  # the model's frame embeddings, when it has them
    max_image_bytes: int = 20 << 20


@dataclasses.dataclass
class Sources:
    allow_dir: str | None = None  # local files only under this directory (realpath)
    allow_remote: bool = False
    remote_timeout: float = 10.0


@dataclasses.dataclass
class Media:
    """One media item (an image, or a video's frames): raw bytes, and a key that names its pixels for the cache."""

    frames: list[bytes]
    key: str = ""
    pixels: np.ndarray | None = None  # [F, 3, H, W] float32, filled by `decode`

    def __post_init__(self):
        h = hashlib.sha256()
        for f in self.frames:
            h.update(len(f).to_bytes(8, "little"))
            h.update(f)
        self.key = h.hexdigest()


@dataclasses.dataclass
class Sampling:
    max_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    seed: int
    stop: list[str]
    n: int


@dataclasses.dataclass
class ChatRequest:
    question: str
    media: list[Media]  # query media
    context: list[tuple[str, str, list[Media]]]  # (question, answer, media) per in-context example
    sampling: Sampling
    stream: bool
    include_usage: bool
    model: str

    @property
    def all_media(self) -> list[Media]:
        """In prompt order: the examples' media, then the query's."""
        return [m for _, _, ms in self.context for m in ms] + self.media


def _err(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(message, param=param, code=code)


def _number(body: dict, name: str, default, lo, hi, integer=False, lo_open=False):
    v = body.get(name, default)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or v < lo or v > hi or (lo_open and v == lo):
        kind = "an integer" if integer else "a number"
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise _err(f"'{name}' must be {kind} in {rng}, got {v!r}", name, "invalid_value")
    return v


def parse_sampling(body: dict, limits: Limits) -> Sampling:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number({name: max_tokens}, name, min(64, limits.max_tokens), 1, limits.max_tokens, integer=True)
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _number(body, "seed", 0, 0, 2 ** 32 - 1, integer=True)
    n = _number(body, "n", 1, 1, limits.max_n, integer=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > limits.max_stop or \
            not all(isinstance(s, str) and s for s in stop):
        raise _err(f"'stop' must be a non-empty string or a list of at most {limits.max_stop} of them", "stop",
                   "invalid_value")
    return Sampling(max_tokens, float(temperature), float(top_p), int(seed), stop, n)


def _unsupported(body: dict) -> None:
    """Fields whose meaning we cannot honour are refused rather than ignored."""
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
        raise _err("only response_format {'type': 'text'} is supported", "response_format", "unsupported_value")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise _err(f"'{name}' is not supported", name, "unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _err("'logprobs' is not supported", "logprobs", "unsupported_parameter")


def _read_source(url: Any, src: Sources, limits: Limits, where: str) -> bytes:
    if not isinstance(url, str) or not url:
        raise _err(f"{where}: the image url must be a non-empty string", where, "invalid_image_url")
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise _err(f"{where}: a data URL must be data:<type>;base64,<data>", where, "invalid_image_url")
        if len(payload) > limits.max_image_bytes * 4 // 3 + 4:
            raise _err(f"{where}: image larger than {limits.max_image_bytes} bytes", where, "image_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _err(f"{where}: corrupt base64 data", where, "invalid_base64") from None
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        if not src.allow_remote:
            raise _err(f"{where}: remote image URLs are disabled on this server (--allow-remote-urls)", where,
                       "remote_urls_disabled")
        try:
            with urllib.request.urlopen(url, timeout=src.remote_timeout) as resp:
                data = resp.read(limits.max_image_bytes + 1)
        except (OSError, ValueError) as e:
            raise _err(f"{where}: cannot fetch {url} ({e})", where, "image_fetch_failed") from None
        if len(data) > limits.max_image_bytes:
            raise _err(f"{where}: image larger than {limits.max_image_bytes} bytes", where, "image_too_large")
        return data
    if scheme == "file" or (scheme == "" and os.path.isabs(url)):
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if scheme == "file" else url
        if src.allow_dir is None:
            raise _err(f"{where}: local files are disabled on this server (--allow-dir)", where,
                       "local_files_disabled")
        real, root = os.path.realpath(path), os.path.realpath(src.allow_dir)
        if os.path.commonpath([real, root]) != root:
            raise _err(f"{where}: {path} is outside the allowed directory", where, "path_not_allowed")
        try:
            if os.path.getsize(real) > limits.max_image_bytes:
                raise _err(f"{where}: image larger than {limits.max_image_bytes} bytes", where, "image_too_large")
            with open(real, "rb") as fh:
                return fh.read()
        except OSError as e:
            raise _err(f"{where}: cannot read {path} ({e.strerror})", where, "image_not_found") from None
    raise _err(f"{where}: unsupported image URL (data:, file:// or a path under --allow-dir, http(s) if enabled)",
               where, "invalid_image_url")


def _url_of(part: dict, where: str) -> Any:
    iu = part.get("image_url")
    return iu.get("url") if isinstance(iu, dict) else iu


def _content(msg: dict, i: int, src: Sources, limits: Limits) -> tuple[str, list[Media]]:
    """A message's text (parts joined by newlines) and media (in part order)."""
    where = f"messages[{i}].content"
    content = msg.get("content")
    if isinstance(content, str):
        return content, []
    if content is None and msg.get("role") == "assistant":
        return "", []
    if not isinstance(content, list):
        raise _err(f"{where} must be a string or a list of content parts", where, "invalid_type")
    texts, media = [], []
    for j, part in enumerate(content):
        pw = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            media.append(Media([_read_source(_url_of(part, pw), src, limits, pw + ".image_url")]))
        elif kind == "video":
            frames = part.get("video", {}).get("frames") if isinstance(part.get("video"), dict) else None
            if not isinstance(frames, list) or not frames:
                raise _err(f"{pw}: a video part is {{'type': 'video', 'video': {{'frames': [url, ...]}}}}", pw,
                           "invalid_video")
            if limits.max_frames and len(frames) > limits.max_frames:
                raise _err(f"{pw}: {len(frames)} frames, the model takes at most {limits.max_frames}", pw,
                           "too_many_frames")
            media.append(Media([_read_source(f.get("url") if isinstance(f, dict) else f, src, limits,
                                             f"{pw}.video.frames[{k}]") for k, f in enumerate(frames)]))
        else:
            raise _err(f"{pw}: unsupported content part (types: text, image_url, video)", pw, "invalid_content")
    return "\n".join(texts), media


def parse_chat(body: Any, src: Sources, limits: Limits, model_name: str) -> ChatRequest:
    """Validate a chat-completions body; raise ApiError naming the offending field."""
    if not isinstance(body, dict):
        raise _err("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(f"the model {model!r} does not exist; this server serves {model_name!r}", status=404,
                       param="model", code="model_not_found")
    _unsupported(body)
    sampling = parse_sampling(body, limits)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _err("'stream' must be a boolean", "stream", "invalid_type")
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _err("'messages' must be a non-empty list", "messages", "invalid_type")
    system, turns = [], []  # turns: [role, text, media]
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _err(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = msg.get("role")
        if role not in (*SYSTEM_ROLES, "user", "assistant"):
            raise _err(f"messages[{i}].role {role!r} is not one of system, developer, user, assistant",
                       f"messages[{i}].role", "invalid_role")
        text, media = _content(msg, i, src, limits)
        if role in SYSTEM_ROLES:
            if media:
                raise _err(f"messages[{i}]: a {role} message cannot carry images", f"messages[{i}].content")
            system.append(text)
        elif role == "assistant" and media:
            raise _err(f"messages[{i}]: an assistant message cannot carry images", f"messages[{i}].content")
        elif turns and turns[-1][0] == role == "user":
            turns[-1][1] = "\n".join(x for x in (turns[-1][1], text) if x)
            turns[-1][2] += media
        elif role == "assistant" and (not turns or turns[-1][0] != "user"):
            raise _err(f"messages[{i}]: an assistant message must follow a user message", f"messages[{i}].role",
                       "invalid_role")
        else:
            turns.append([role, text, media])
    if not turns or turns[-1][0] != "user":
        raise _err("the last message must be a user message", "messages", "invalid_value")
    context = [(turns[k][1], turns[k + 1][1], turns[k][2]) for k in range(0, len(turns) - 1, 2)]
    _, question, media = turns[-1]
    question = "\n".join(x for x in (*system, question) if x)
    req = ChatRequest(question, media, context, sampling, stream, include_usage, model_name)
    n_images = sum(len(m.frames) for m in req.all_media)
    if n_images > limits.max_images:
        raise _err(f"{n_images} images in the request, the limit is {limits.max_images}", "messages",
                   "too_many_images")
    return req


def decode_media(req: ChatRequest, decode: Callable[[bytes], np.ndarray], known: Callable[[str], bool]) -> None:
    """Decode every media item the engine has not cached (an item it has cached was already decoded once, from
    the same bytes). `decode` raises OSError/ValueError on data that is not an image."""
    for m in req.all_media:
        if m.pixels is None and not known(m.key):
            try:
                m.pixels = np.stack([decode(f) for f in m.frames])
            except (OSError, ValueError) as e:
                raise _err(f"an image could not be decoded ({type(e).__name__}: {str(e)[:200]})", "messages",
                           "invalid_image") from None
