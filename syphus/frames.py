"""`syphus frames`: videos -> a MIMIC-IT images parquet of N frames per video or per annotated clip.

The video families (DC, TVC, E4D, and SN scenes given as videos) reference frames by id, `<CODE>_IMG_<clip>_<k:04d>`
(sources.py); this command writes exactly those ids, so Syphus output plus this parquet build a store directly.
With --annotations, the clips are the ones the readers produce (e.g. one per Ego4D summary window, sampled inside
its span); without, every video in --videos is one clip named by its file stem. Frames are taken at the centres of
N equal slices of the clip (the same uniform spacing as the training loader's resampling), decoded with OpenCV,
optionally shrunk, and stored as base64 (urlsafe) JPEG under an `id` index column, as upstream parquet files are.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from syphus.mimicit import MimicItError
from syphus.sources import DEFAULT_FRAMES, frame_ids, public_records

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass
class Clip:
    clip_id: str
    video: str                       # file stem inside the videos folder
    span: tuple[float, float] | None  # seconds; None = the whole video
    image_ids: list[str]
    where: str                       # for error messages


def clips_from_annotations(paths, reader_name: str, code: str, fmt: str | None, frames: int) -> list[Clip]:
    from syphus.readers import load_records
    public = public_records([Path(p) for p in paths], reader_name, code, fmt, frames)
    if public is None:   # our list format: {id, image_ids, video (default: id), span (optional)}
        rows = [(f"{p}:{n}", r) for p in paths for n, r in load_records(p)]
    else:
        rows = public
    out = []
    for where, r in rows:
        if not isinstance(r, dict) or not r.get("id") or not r.get("image_ids"):
            raise MimicItError(f"{where}: a video record needs 'id' and 'image_ids'")
        span = r.get("span")
        if span is not None and not (isinstance(span, list) and len(span) == 2):
            raise MimicItError(f"{where}: field 'span' must be [start_s, end_s]")
        out.append(Clip(str(r["id"]), str(r.get("video") or r["id"]), tuple(map(float, span)) if span else None,
                        [str(i) for i in r["image_ids"]], where))
    return out


def clips_from_folder(videos: Path, code: str, frames: int) -> list[Clip]:
    files = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    if not files:
        raise MimicItError(f"{videos}: no video files ({', '.join(VIDEO_EXTS)})")
    return [Clip(p.stem, p.stem, None, frame_ids(code, p.stem, frames), str(p)) for p in files]


def find_video(videos: Path, stem: str) -> Path | None:
    """`<stem>.<ext>`; ActivityNet ids carry a `v_` prefix its video files may not have."""
    for s in dict.fromkeys([stem, stem.removeprefix("v_")]):
        for ext in VIDEO_EXTS:
            if (videos / f"{s}{ext}").exists():
                return videos / f"{s}{ext}"
    return None


def sample_times(span: tuple[float, float], n: int) -> list[float]:
    s, e = span
    return [s + (k + 0.5) * (e - s) / n for k in range(n)]


def read_frames(path: Path, span: tuple[float, float] | None, n: int, max_side: int = 0, quality: int = 90,
                where: str = "") -> list[bytes]:
    """n JPEG frames at the centres of n equal slices of `span` (clamped to the video), decoded in one pass."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MimicItError(f"{path}: OpenCV cannot open this video ({where})")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if fps <= 0 or count <= 0:
            raise MimicItError(f"{path}: video reports no frame rate or frame count ({where})")
        duration = count / fps
        s, e = span if span is not None else (0.0, duration)
        s, e = max(0.0, min(s, duration)), max(0.0, min(e, duration))
        if e <= s:
            raise MimicItError(f"{path}: clip span {span} is empty within the video's {duration:.2f} s ({where})")
        wanted = [min(count - 1, int(t * fps)) for t in sample_times((s, e), n)]
        out: dict[int, bytes] = {}
        idx = 0
        for target in sorted(set(wanted)):
            while idx < target:          # grab() skips without the colour conversion
                if not cap.grab():
                    break
                idx += 1
            ok, frame = cap.read()
            if not ok:
                raise MimicItError(f"{path}: could not decode frame {target} of {count} ({where})")
            idx += 1
            if max_side and max(frame.shape[:2]) > max_side:
                scale = max_side / max(frame.shape[:2])
                frame = cv2.resize(frame, (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))),
                                   interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise MimicItError(f"{path}: JPEG encoding failed for frame {target}")
            out[target] = buf.tobytes()
        return [out[w] for w in wanted]
    finally:
        cap.release()


def write_b64_parquet(path: Path, images: dict[str, bytes]) -> int:
    from syphus.mimicit import write_parquet_b64
    return write_parquet_b64(path, {k: base64.urlsafe_b64encode(v).decode() for k, v in images.items()})


def extract(videos: str | Path, out: str | Path, code: str, reader_name: str, annotations=None, fmt=None,
            frames: int = DEFAULT_FRAMES, max_side: int = 0, quality: int = 90, skip_missing: bool = False) -> dict:
    videos = Path(videos)
    if not videos.is_dir():
        raise MimicItError(f"{videos}: videos folder does not exist")
    if frames < 1:
        raise MimicItError(f"--frames must be >= 1, got {frames}")
    clips = (clips_from_annotations(annotations, reader_name, code, fmt, frames) if annotations
             else clips_from_folder(videos, code, frames))
    images: dict[str, bytes] = {}
    missing = []
    for c in clips:
        path = find_video(videos, c.video)
        if path is None:
            if skip_missing:
                missing.append(c.clip_id)
                continue
            raise MimicItError(f"{c.where}: no video file {c.video}.<{'|'.join(e[1:] for e in VIDEO_EXTS)}> in "
                               f"{videos} (--skip-missing to leave the clip out)")
        for image_id, jpg in zip(c.image_ids, read_frames(path, c.span, len(c.image_ids), max_side, quality,
                                                          c.where)):
            images[image_id] = jpg
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_b64_parquet(out, images)
    return {"clips": len(clips) - len(missing), "frames": len(images), "missing_videos": missing, "out": str(out)}
