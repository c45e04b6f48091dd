"""Public source formats of the MIMIC-IT families, turned into the records our readers take.

Users hold the files as published (LLaVA-Instruct-150K, COCO captions/instances, Spot-the-Diff, ScanRefer /
ScanNet aggregation, VIST story-in-sequence, ActivityNet Captions, TVCaption, Ego4D narrations); asking them to
hand-convert each one first is where pipelines break. Each file's format is detected from its content (or forced
with `--format`), the files of one run are merged per family, and every record comes out in our list format
(`{id, ...reader fields}`), so the readers in readers.py stay the one place that renders query text.

Image ids follow one rule per family, shared with `syphus frames` (video -> frames parquet), so generated
instructions and extracted frames meet in one store without renaming:
  images  <CODE>_IMG_<source image id>           (COCO ids zero-padded to 12 digits, as upstream's LA_IMG_000000377944)
  videos  <CODE>_IMG_<clip id>_<frame:04d>        for frame 0..frames-1, sampled uniformly over the clip's span
Video records also carry `video` (file stem) and `span` ([start_s, end_s] or None = whole video) for the frames
command. Errors name the file, the record (line, index or key) and the field.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

DEFAULT_FRAMES = 8

# reader name -> the public formats that feed it (our own "list" format feeds every reader)
FAMILY_FORMATS: dict[str, tuple[str, ...]] = {
    "image_conversation": ("llava", "coco_captions", "coco_instances"),
    "spot_difference": ("spot_the_diff",),
    "general_difference": ("coco_captions", "coco_pairs"),
    "scene_navigation": ("scanrefer", "scannet_aggregation"),
    "visual_story": ("vist",),
    "dense_captions": ("activitynet",),
    "tv_captions": ("tvcaption",),
    "egocentric_video": ("ego4d",),
}
FORMATS = ("list",) + tuple(sorted({f for fs in FAMILY_FORMATS.values() for f in fs}))


class SourceError(ValueError):
    """Bad public-format input; the message names file, record and field."""


def frame_ids(code: str, clip_id: str, frames: int) -> list[str]:
    return [f"{code}_IMG_{clip_id}_{k:04d}" for k in range(frames)]


def coco_image_id(code: str, image_id) -> str:
    s = str(image_id)
    return f"{code}_IMG_{s.zfill(12) if s.isdigit() else s}"


# ---- loading and detection ------------------------------------------------------------------------------------
class JsonLines(list):
    """The records of a JSON Lines file, with the line number of each (errors cite `file:line`)."""
    lines: list[int]


def load_json_or_jsonl(path: Path) -> Any:
    """A JSON document, or a JsonLines list of the objects of a JSON Lines file (one record per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except ValueError as first:
        rows = JsonLines()
        rows.lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                    rows.lines.append(n)
                except ValueError as e:
                    if n == 1:
                        raise SourceError(f"{path}: neither JSON nor JSON Lines ({first})") from None
                    raise SourceError(f"{path}:{n}: invalid JSON line: {e}") from None
        return rows


def _first(data) -> Any:
    if isinstance(data, list):
        return data[0] if data else None
    if isinstance(data, dict):
        return next(iter(data.values()), None)
    return None


def detect(data: Any) -> str | None:
    """Name of the public format of a loaded file, or None."""
    if isinstance(data, dict):
        if "meta" in data and "data" in data:
            return "mimicit_instructions"
        if "sceneId" in data and "segGroups" in data:
            return "scannet_aggregation"
        anns = data.get("annotations")
        if isinstance(anns, list) and "images" in data:
            if anns and isinstance(anns[0], list):
                return "vist"
            a0 = anns[0] if anns else {}
            if isinstance(a0, dict) and "caption" in a0:
                return "coco_captions"
            if isinstance(a0, dict) and "bbox" in a0:
                return "coco_instances"
        if isinstance(data.get("pairs"), list):
            return "coco_pairs"
        v = _first(data)
        if isinstance(v, dict) and "timestamps" in v and "sentences" in v:
            return "activitynet"
        if isinstance(v, dict) and ("narration_pass_1" in v or "narration_pass_2" in v):
            return "ego4d"
        if isinstance(data.get("videos"), list) and data["videos"] and "video_uid" in data["videos"][0]:
            return "ego4d"
        return None
    r = _first(data)
    if isinstance(r, dict):
        if "conversations" in r and "image" in r:
            return "llava"
        if "img_id" in r and "sentences" in r:
            return "spot_the_diff"
        if "scene_id" in r and "description" in r:
            return "scanrefer"
        if "vid_name" in r and "descs" in r:
            return "tvcaption"
        if {"image_a", "image_b"} <= r.keys():
            return "coco_pairs"
        return "list"   # ours: records with an `id` and the reader's fields (missing ones are reported per record)
    if isinstance(r, list) and len(r) == 2:
        return "coco_pairs"
    return None


def _field(rec, field: str, where: str, kind=None):
    if not isinstance(rec, dict):
        raise SourceError(f"{where}: expected an object, got {type(rec).__name__}")
    if field not in rec or rec[field] is None:
        raise SourceError(f"{where}: missing field {field!r}")
    v = rec[field]
    if kind is not None and not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SourceError(f"{where}: field {field!r} must be {names}, got {type(v).__name__}")
    return v


def _items(data, path: Path):
    """(where, record) for JSON Lines (line), a list (index) or an object keyed by id (key)."""
    if isinstance(data, JsonLines):
        return [(f"{path}:{n}", r) for n, r in zip(data.lines, data)]
    if isinstance(data, list):
        return [(f"{path}: record {i}", r) for i, r in enumerate(data)]
    if isinstance(data, dict):
        return [(f"{path}: record {k!r}", r) for k, r in data.items()]
    raise SourceError(f"{path}: expected a list or an object of records, got {type(data).__name__}")


# ---- per-format parsers: data -> partial records keyed by record id ------------------------------------------
def _llava(data, path, code, frames):
    out = {}
    for where, r in _items(data, path):
        image = str(_field(r, "image", where, str))
        turns = _field(r, "conversations", where, list)
        conv = []
        for j, t in enumerate(turns):
            w = f"{where} conversations[{j}]"
            role = _field(t, "from", w, str)
            text = _field(t, "value", w, str).replace("<image>", "").strip()
            conv.append(("User" if role == "human" else "Assistant", text))
        stem = Path(image).stem
        rid = stem.zfill(12) if stem.isdigit() else stem
        out.setdefault(rid, {"image_id": coco_image_id(code, stem)}).setdefault("conversation", []).extend(conv)
    return out


def _coco_images(data, path):
    ids = {}
    for i, im in enumerate(_field(data, "images", str(path), list)):
        ids[_field(im, "id", f"{path}: images[{i}]")] = im
    return ids


def _coco_annotations(data, path):
    """(where, image_id, annotation) of a COCO file's annotations, each checked to name one of its images."""
    images = _coco_images(data, path)
    for i, a in enumerate(_field(data, "annotations", str(path), list)):
        where = f"{path}: annotations[{i}]"
        iid = _field(a, "image_id", where)
        if iid not in images:
            raise SourceError(f"{where}: field 'image_id' {iid!r} is not in 'images'")
        yield where, iid, a


def _coco_captions(data, path, code, frames):
    out = {}
    for where, iid, a in _coco_annotations(data, path):
        cap = _field(a, "caption", where, str).strip()
        rec = out.setdefault(str(iid).zfill(12), {"image_id": coco_image_id(code, iid), "captions": []})
        rec["captions"].append(cap)
    return out


def _coco_instances(data, path, code, frames):
    cats = {_field(c, "id", f"{path}: categories[{i}]"): _field(c, "name", f"{path}: categories[{i}]", str)
            for i, c in enumerate(_field(data, "categories", str(path), list))}
    out = {}
    for where, iid, a in _coco_annotations(data, path):
        bbox = _field(a, "bbox", where, list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise SourceError(f"{where}: field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        cid = _field(a, "category_id", where)
        if cid not in cats:
            raise SourceError(f"{where}: field 'category_id' {cid!r} is not in 'categories'")
        rec = out.setdefault(str(iid).zfill(12), {"image_id": coco_image_id(code, iid), "objects": []})
        rec["objects"].append({"label": cats[cid], "bbox": bbox})
    return out


def _spot_the_diff(data, path, code, frames):
    out = {}
    for where, r in _items(data, path):
        img = str(_field(r, "img_id", where, (str, int)))
        sents = [s.strip() for s in _field(r, "sentences", where, list) if isinstance(s, str) and s.strip()]
        if not sents:
            raise SourceError(f"{where}: field 'sentences' has no text")
        # the dataset ships <img_id>.png and <img_id>_2.png
        out[img] = {"image_ids": [f"{code}_IMG_{img}", f"{code}_IMG_{img}_2"], "differences": sents}
    return out


def _coco_pairs(data, path, code, frames):
    rows = _field(data, "pairs", str(path), list) if isinstance(data, dict) else data
    out = {}
    for i, r in enumerate(rows):
        where = f"{path}: record {i}"
        if isinstance(r, list):
            if len(r) != 2:
                raise SourceError(f"{where}: a pair needs 2 COCO image ids, got {len(r)}")
            a, b = r
        else:
            a, b = _field(r, "image_a", where), _field(r, "image_b", where)
        out[f"{str(a).zfill(12)}_{str(b).zfill(12)}"] = {"pair": (str(a).zfill(12), str(b).zfill(12)), "where": where}
    return out


def _scanrefer(data, path, code, frames):
    out = {}
    for where, r in _items(data, path):
        scene = _field(r, "scene_id", where, str)
        desc = _field(r, "description", where, str).strip()
        name = str(r.get("object_name", "")).replace("_", " ")
        rec = out.setdefault(scene, {"image_ids": frame_ids(code, scene, frames), "descriptions": [],
                                     "video": scene, "span": None})
        rec["descriptions"].append(f"{name}: {desc}" if name else desc)
    return out


def _scannet_aggregation(data, path, code, frames):
    scene = _field(data, "sceneId", str(path), str)
    if scene.startswith("scannet."):
        scene = scene[len("scannet."):]
    labels = defaultdict(int)
    for i, g in enumerate(_field(data, "segGroups", str(path), list)):
        labels[_field(g, "label", f"{path}: segGroups[{i}]", str)] += 1
    descs = [f"{n} {lab}{'s' if n > 1 and not lab.endswith('s') else ''} in the scene" for lab, n in labels.items()]
    return {scene: {"image_ids": frame_ids(code, scene, frames), "descriptions": descs, "video": scene,
                    "span": None}}


def _vist(data, path, code, frames):
    photos = {str(im.get("id")): im for im in _field(data, "images", str(path), list) if isinstance(im, dict)}
    albums = {str(a.get("id")): a for a in data.get("albums") or [] if isinstance(a, dict)}
    stories: dict[str, list] = defaultdict(list)
    for i, group in enumerate(_field(data, "annotations", str(path), list)):
        where = f"{path}: annotations[{i}]"
        if not isinstance(group, list) or not group:
            raise SourceError(f"{where}: expected a one-element list of story sentences")
        a = group[0]
        sid = str(_field(a, "story_id", where))
        pid = str(_field(a, "photo_flickr_id", where))
        order = _field(a, "worker_arranged_photo_order", where, int)
        stories[sid].append((order, pid, str(a.get("text") or a.get("original_text") or "").strip(),
                             str(_field(a, "album_id", where)), where))
    out = {}
    for sid, sents in stories.items():
        sents.sort()
        album = albums.get(sents[0][3], {})
        images = []
        for _, pid, text, _, where in sents:
            im = photos.get(pid)
            if im is None:
                raise SourceError(f"{where}: field 'photo_flickr_id' {pid!r} is not in 'images'")
            tags = im.get("tags") or ""
            tags = tags.split() if isinstance(tags, str) else list(tags)
            images.append({"image_id": f"{code}_IMG_{pid}", "title": str(im.get("title") or ""), "tags": tags,
                           "text": text})
        out[sid] = {"album_title": str(album.get("title") or "untitled album"), "images": images}
    return out


def _activitynet(data, path, code, frames):
    out = {}
    if not isinstance(data, dict):
        raise SourceError(f"{path}: ActivityNet Captions is an object keyed by video id, got {type(data).__name__}")
    for vid, r in data.items():
        where = f"{path}: record {vid!r}"
        ts = _field(r, "timestamps", where, list)
        ss = _field(r, "sentences", where, list)
        if len(ts) != len(ss):
            raise SourceError(f"{where}: field 'sentences' has {len(ss)} entries but 'timestamps' has {len(ts)}")
        for j, t in enumerate(ts):
            if not (isinstance(t, list) and len(t) == 2 and all(isinstance(x, (int, float)) for x in t)):
                raise SourceError(f"{where}: field 'timestamps'[{j}] must be [start, end] seconds, got {t!r}")
        dur = r.get("duration")
        out[vid] = {"image_ids": frame_ids(code, vid, frames), "timestamps": ts,
                    "sentences": [str(s).strip() for s in ss], "video": vid,
                    "span": [0.0, float(dur)] if isinstance(dur, (int, float)) else None}
    return out


def _tvcaption(data, path, code, frames):
    moments: dict[str, list] = defaultdict(list)
    for where, r in _items(data, path):
        vid = _field(r, "vid_name", where, str)
        ts = _field(r, "ts", where, list)
        if len(ts) != 2:
            raise SourceError(f"{where}: field 'ts' must be [start, end] seconds, got {ts!r}")
        for j, d in enumerate(_field(r, "descs", where, list)):
            moments[vid].append((float(ts[0]), float(ts[1]), _field(d, "desc", f"{where} descs[{j}]", str).strip()))
    out = {}
    for vid, ms in moments.items():
        ms.sort(key=lambda m: (m[0], m[1]))   # temporal order; descriptions of one moment keep file order
        out[vid] = {"image_ids": frame_ids(code, vid, frames),
                    "descriptions": [f"({s:.1f}-{e:.1f}s) {d}" for s, e, d in ms], "video": vid, "span": None}
    return out


_CAMERA_WEARER = re.compile(r"^#\s*C\s+C\b")


def _narration_text(t: str) -> str:
    t = _CAMERA_WEARER.sub("The camera wearer", t.strip())
    return re.sub(r"#\s*(unsure|Unsure)\b", "", t.replace("#O", "").replace("#C", "")).strip()


def _ego4d(data, path, code, frames):
    if isinstance(data.get("videos"), list):   # the per-video list variant
        data = {str(v.get("video_uid")): v for v in data["videos"]}
    out = {}
    if not isinstance(data, dict):
        raise SourceError(f"{path}: Ego4D narrations are an object keyed by video_uid, got {type(data).__name__}")
    for uid, v in data.items():
        where = f"{path}: record {uid!r}"
        passes = [k for k in ("narration_pass_1", "narration_pass_2") if isinstance(v, dict) and k in v]
        if not passes:
            raise SourceError(f"{where}: missing field 'narration_pass_1'")
        p = v[passes[0]]
        narr = _field(p, "narrations", f"{where} {passes[0]}", list)
        rows = []
        for j, n in enumerate(narr):
            w = f"{where} {passes[0]}.narrations[{j}]"
            rows.append((float(_field(n, "timestamp_sec", w, (int, float))),
                         _narration_text(_field(n, "narration_text", w, str))))
        rows.sort(key=lambda r: r[0])
        windows = [(float(s["start_sec"]), float(s["end_sec"])) for s in p.get("summaries") or []
                   if isinstance(s, dict) and "start_sec" in s and "end_sec" in s]
        if not windows and rows:
            windows = [(rows[0][0], rows[-1][0])]
        for k, (s, e) in enumerate(windows):
            clips = [{"timestamp": f"{t - s:.1f}s", "description": d, "objects": []} for t, d in rows if s <= t <= e]
            if clips:
                cid = f"{uid}_{k:03d}"
                out[cid] = {"image_ids": frame_ids(code, cid, frames), "clips": clips, "video": uid, "span": [s, e]}
    return out


PARSERS: dict[str, Callable] = {
    "llava": _llava, "coco_captions": _coco_captions, "coco_instances": _coco_instances,
    "spot_the_diff": _spot_the_diff, "coco_pairs": _coco_pairs, "scanrefer": _scanrefer,
    "scannet_aggregation": _scannet_aggregation, "vist": _vist, "activitynet": _activitynet,
    "tvcaption": _tvcaption, "ego4d": _ego4d,
}


def _merge(into: dict, part: dict) -> None:
    for rid, rec in part.items():
        cur = into.setdefault(rid, {})
        for k, v in rec.items():
            if isinstance(v, list) and isinstance(cur.get(k), list) and k not in ("image_ids", "span"):
                cur[k] = cur[k] + v
            else:
                cur.setdefault(k, v)


def public_records(paths: list[Path], reader_name: str, code: str, fmt: str | None = None,
                   frames: int = DEFAULT_FRAMES) -> list[tuple[str, dict]] | None:
    """(where, record in our list format) for public-format files, or None when they are in our list format."""
    loaded = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise SourceError(f"{p}: annotations file does not exist")
        if p.is_dir():
            raise SourceError(f"{p}: is a folder; pass the annotation file(s) inside it")
        data = load_json_or_jsonl(p)
        f = fmt or detect(data)
        if f is None and isinstance(data, dict) and (detect([data]) != "list" or "id" in data):
            data, f = [data], detect([data])     # a JSON Lines file of one line
        if f == "mimicit_instructions":
            raise SourceError(f"{p}: this is a MIMIC-IT instructions file (Syphus output), not source annotations")
        if f is None:
            raise SourceError(f"{p}: unrecognised annotation format; pass --format (one of {', '.join(FORMATS)})")
        loaded.append((p, f, data))
    kinds = {f for _, f, _ in loaded}
    if kinds == {"list"}:
        return None
    if "list" in kinds:
        raise SourceError(f"cannot mix our list format with public formats in one run ({sorted(kinds)})")
    accepted = FAMILY_FORMATS.get(reader_name)
    if accepted is None:
        raise SourceError(f"reader {reader_name!r} takes only our list format; got {sorted(kinds)}")
    for p, f, _ in loaded:
        if f not in accepted:
            raise SourceError(f"{p}: format {f!r} does not feed task {code} (reader {reader_name}); "
                              f"it takes {', '.join(accepted)} or our list format")
    if reader_name == "general_difference":
        return _general_difference(loaded, code)
    merged: dict[str, dict] = {}
    for p, f, data in loaded:
        try:
            _merge(merged, PARSERS[f](data, p, code, frames))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            if isinstance(e, SourceError):
                raise
            raise SourceError(f"{p}: not valid {f} data ({type(e).__name__}: {e})") from None
    if reader_name == "image_conversation" and not any("captions" in r or "conversation" in r
                                                       for r in merged.values()):
        raise SourceError("task LA needs COCO captions or LLaVA conversations (COCO instances alone give only boxes)")
    names = ", ".join(str(p) for p, _, _ in loaded)
    return [(f"{names} ({rid})", {"id": rid, **rec}) for rid, rec in merged.items()
            if reader_name != "image_conversation" or "captions" in rec or "conversation" in rec]


def _general_difference(loaded, code):
    caps: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    for p, f, data in loaded:
        (_merge(caps, _coco_captions(data, p, code, 0)) if f == "coco_captions"
         else _merge(pairs, _coco_pairs(data, p, code, 0)))
    if not caps or not pairs:
        raise SourceError("task CGD needs a COCO captions file and a pairs file ([[image_a, image_b], ...])")
    out = []
    for rid, r in pairs.items():
        a, b = r["pair"]
        for side, iid in (("first", a), ("second", b)):
            if iid not in caps:
                raise SourceError(f"{r['where']}: {side} image {iid!r} has no caption in the COCO captions file")
        out.append((r["where"], {"id": rid, "image_ids": [caps[a]["image_id"], caps[b]["image_id"]],
                                 "captions_a": caps[a]["captions"], "captions_b": caps[b]["captions"]}))
    return out
