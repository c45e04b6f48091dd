"""Annotation readers: one per MIMIC-IT source family, turning a visual annotation into the query text.

Input files are JSON lists or JSON Lines of objects, each with an `id` and the family's fields (documented on
each reader), or the family's public files as published (converted to that list format by sources.py). A reader
returns (text, image_ids); errors name the file, line or record, and the field. To add a
family, register a function with `@reader("name")`, or point a prompt spec's `reader:` at "module:function".
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from syphus.sources import DEFAULT_FRAMES, SourceError, public_records

READERS: dict[str, Callable[[dict], tuple[str, list[str]]]] = {}


class AnnotationError(ValueError):
    pass


@dataclass
class Query:
    item_id: str
    text: str
    image_ids: list[str]


def reader(name: str):
    def deco(fn):
        READERS[name] = fn
        return fn
    return deco


def _need(rec: dict, *fields):
    missing = [f for f in fields if f not in rec or rec[f] in (None, "", [])]
    if missing:
        raise AnnotationError(f"missing field(s) {missing}")


def _list(rec: dict, field: str) -> list:
    if not isinstance(rec[field], list):
        raise AnnotationError(f"field {field!r} must be a list, got {type(rec[field]).__name__}")
    return rec[field]


@reader("image_conversation")
def image_conversation(rec):
    """LA: {id, image_id, captions: [str], objects: [{label, bbox: [x, y, w, h]}] (optional),
    conversation: [[speaker, text]] (optional; from LLaVA-Instruct, which may stand in for the captions)}."""
    _need(rec, "image_id")
    if not rec.get("captions") and not rec.get("conversation"):
        raise AnnotationError("missing field(s) ['captions']")
    lines = []
    if rec.get("captions"):
        lines += ["Captions:"] + [f"- {c}" for c in _list(rec, "captions")]
    if rec.get("objects"):
        lines.append("Objects (label: x, y, width, height):")
        lines += [f"- {o['label']}: {', '.join(str(round(v, 1)) for v in o['bbox'])}" for o in _list(rec, "objects")]
    if rec.get("conversation"):
        lines.append("Existing conversation about the image:")
        lines += [f"{who}: {text}" for who, text in _list(rec, "conversation")]
    return "\n".join(lines), [rec["image_id"]]


@reader("spot_difference")
def spot_difference(rec):
    """SD: {id, image_ids: [a, b], differences: [str]}."""
    _need(rec, "image_ids", "differences")
    ids = _list(rec, "image_ids")
    if len(ids) != 2:
        raise AnnotationError(f"spot-the-difference needs 2 image_ids, got {len(ids)}")
    return "Differences between image 1 and image 2:\n" + "\n".join(
        f"- {d}" for d in _list(rec, "differences")), ids


@reader("general_difference")
def general_difference(rec):
    """CGD: {id, image_ids: [a, b], captions_a: [str], captions_b: [str]}."""
    _need(rec, "image_ids", "captions_a", "captions_b")
    ids = _list(rec, "image_ids")
    if len(ids) != 2:
        raise AnnotationError(f"general difference needs 2 image_ids, got {len(ids)}")
    text = ("Image 1 captions:\n" + "\n".join(f"- {c}" for c in _list(rec, "captions_a")) +
            "\nImage 2 captions:\n" + "\n".join(f"- {c}" for c in _list(rec, "captions_b")))
    return text, ids


@reader("scene_navigation")
def scene_navigation(rec):
    """SN: {id, image_ids, descriptions: [str] (first 50 used), activities: [str] (optional)}."""
    _need(rec, "image_ids", "descriptions")
    lines = ["Scene descriptions:"] + [f"{i + 1}. {d}" for i, d in enumerate(_list(rec, "descriptions")[:50])]
    if rec.get("activities"):
        lines.append("Candidate activities: " + "; ".join(_list(rec, "activities")))
    return "\n".join(lines), _list(rec, "image_ids")


@reader("visual_story")
def visual_story(rec):
    """VST: {id, album_title, images: [{image_id, title, tags: [str], text (optional story sentence)}]}."""
    _need(rec, "album_title", "images")
    lines, ids = [f"Album: {rec['album_title']}"], []
    for i, im in enumerate(_list(rec, "images"), 1):
        if "image_id" not in im:
            raise AnnotationError(f"images[{i - 1}] has no image_id")
        ids.append(im["image_id"])
        lines.append(f"Photo {i}: {im.get('title', '')} (tags: {', '.join(im.get('tags', []))})"
                     + (f" Story: {im['text']}" if im.get("text") else ""))
    return "\n".join(lines), ids


@reader("dense_captions")
def dense_captions(rec):
    """DC: {id, image_ids (frames), timestamps: [[start, end]], sentences: [str]} with parallel lists."""
    _need(rec, "image_ids", "timestamps", "sentences")
    ts, ss = _list(rec, "timestamps"), _list(rec, "sentences")
    if len(ts) != len(ss):
        raise AnnotationError(f"{len(ts)} timestamps but {len(ss)} sentences")
    return f"timestamps: {json.dumps(ts)}\nsentences: {json.dumps(ss, ensure_ascii=False)}", _list(rec, "image_ids")


@reader("tv_captions")
def tv_captions(rec):
    """TVC: {id, image_ids (frames), descriptions: [str]} in temporal order."""
    _need(rec, "image_ids", "descriptions")
    return "\n".join(f"{i + 1}. {d}" for i, d in enumerate(_list(rec, "descriptions"))), _list(rec, "image_ids")


@reader("egocentric_video")
def egocentric_video(rec):
    """E4D: {id, image_ids (frames), clips: [{timestamp, description, objects: [str]}]}."""
    _need(rec, "image_ids", "clips")
    lines = []
    for c in _list(rec, "clips"):
        if "description" not in c:
            raise AnnotationError("a clip has no description")
        lines.append(f"[{c.get('timestamp', '?')}] {c['description']} (objects: {', '.join(c.get('objects', []))})")
    return "\n".join(lines), _list(rec, "image_ids")


BUILTIN_READERS = {"LA": "image_conversation", "SD": "spot_difference", "CGD": "general_difference",
                   "SN": "scene_navigation", "VST": "visual_story", "DC": "dense_captions", "TVC": "tv_captions",
                   "E4D": "egocentric_video"}


def get_reader(name: str):
    if name in READERS:
        return READERS[name]
    if ":" in name:
        mod, fn = name.split(":", 1)
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise AnnotationError(f"cannot load reader {name!r}: {e}") from None
    raise AnnotationError(f"unknown reader {name!r}; known: {sorted(READERS)} or 'module:function'")


def load_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line or index, object) pairs from a JSON list or a JSON Lines file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text)))
        except ValueError as e:
            raise AnnotationError(f"{path}: invalid JSON: {e}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except ValueError as e:
                raise AnnotationError(f"{path}:{n}: invalid JSON line: {e}") from None
    return out


def read_annotations(paths, reader_name: str, code: str = "", fmt: str | None = None,
                     frames: int = DEFAULT_FRAMES) -> list[Query]:
    """Queries from one or more annotation files, in our list format or in the family's public formats
    (sources.py; merged per record, image ids prefixed with `code`)."""
    fn = get_reader(reader_name)
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not code:
        code = {v: k for k, v in BUILTIN_READERS.items()}.get(reader_name, "X")
    try:
        public = public_records(paths, reader_name, code, fmt, frames)
    except SourceError as e:
        raise AnnotationError(str(e)) from None
    if public is None:
        if len(paths) != 1:
            raise AnnotationError(f"our list format takes one annotations file, got {len(paths)}")
        path = paths[0]
        records = [(f"{path}:{n}", rec) for n, rec in load_records(path)]
    else:
        records = public
    queries, seen = [], set()
    for where, rec in records:
        if not isinstance(rec, dict) or not rec.get("id"):
            raise AnnotationError(f"{where}: annotation without an 'id'")
        item_id = str(rec["id"])
        if item_id in seen:
            raise AnnotationError(f"{where}: duplicate annotation id {item_id!r}")
        seen.add(item_id)
        try:
            text, image_ids = fn(rec)
        except AnnotationError as e:
            raise AnnotationError(f"{where} (id {item_id!r}): {e}") from None
        except (KeyError, TypeError) as e:
            raise AnnotationError(f"{where} (id {item_id!r}): malformed annotation ({type(e).__name__}: {e})") from None
        queries.append(Query(item_id, text, [str(i) for i in image_ids]))
    return queries
