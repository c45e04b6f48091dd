"""Readers for the MIMIC-IT files users download, taken as they are.

The base64 images JSON can be many GB, so it is scanned as a stream of `"id": "base64"` pairs and never loaded
whole; parquet is read in record batches. Instruction JSONs, train configs and the data YAML are small enough to
load. Everything yields plain Python values; validation of content happens in `ingest`.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Iterator

import yaml

from otter_jax.data.bad_input import BadRecord

GROUPS = ("IMAGE_TEXT", "IMAGE_TEXT_IN_CONTEXT", "VIDEO_TEXT", "TEXT_ONLY")
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset entry of the data YAML (paths already resolved against the YAML's folder)."""

    name: str
    group: str
    mimicit_path: str | None = None       # instructions JSON
    images_path: str | None = None        # base64 JSON object or parquet
    train_config_path: str | None = None  # {query_id: [in_context_id, ...]}
    tfrecord_path: str | None = None      # Syphus TFRecord (our extension), images may be inline
    num_samples: int = -1                 # -1 = all; else down/up-sampled by the loader
    task_description: str = ""


def read_data_yaml(path: str | os.PathLike) -> list[DatasetSpec]:
    """Parse the upstream data YAML: `{GROUP: {DATASET: {mimicit_path, images_path, ...}}}`."""
    path = Path(path)
    with open(path, "rb") as fh:
        doc = yaml.safe_load(fh) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of groups, got {type(doc).__name__}")
    specs, seen = [], {}
    for group, datasets in doc.items():
        if group not in GROUPS:
            raise ValueError(f"{path}: unknown group {group!r}; expected one of {GROUPS}")
        for name, entry in (datasets or {}).items():
            if name in seen:
                raise ValueError(f"{path}: dataset {name!r} listed twice ({seen[name]} and {group}); the same files "
                                 f"may appear under several names, e.g. {name}_{group.lower()}")
            seen[name] = group
            entry = dict(entry or {})
            unknown = set(entry) - {f.name for f in dataclasses.fields(DatasetSpec)}
            if unknown:
                raise ValueError(f"{path}: dataset {name!r} has unknown keys {sorted(unknown)}")

            def resolve(key):
                value = entry.get(key)
                return None if value in (None, "") else str((path.parent / os.path.expanduser(value)).resolve())

            spec = DatasetSpec(
                name=str(name), group=group,
                mimicit_path=resolve("mimicit_path"), images_path=resolve("images_path"),
                train_config_path=resolve("train_config_path"), tfrecord_path=resolve("tfrecord_path"),
                num_samples=int(entry.get("num_samples", -1)), task_description=str(entry.get("task_description", "")))
            if not (spec.mimicit_path or spec.tfrecord_path):
                raise ValueError(f"{path}: dataset {name!r} needs mimicit_path or tfrecord_path")
            if group != "TEXT_ONLY" and spec.mimicit_path and not spec.images_path:
                raise ValueError(f"{path}: dataset {name!r} in group {group} needs images_path")
            specs.append(spec)
    if not specs:
        raise ValueError(f"{path}: no datasets")
    return specs


def read_instructions(path: str | os.PathLike) -> dict[str, dict]:
    """The `data` mapping of an instructions JSON: {ins_id: {instruction, answer, image_ids, rel_ins_ids}}."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid UTF-8 JSON file: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ValueError(f"{path}: expected {{'meta': ..., 'data': {{ins_id: {{...}}}}}}")
    return doc["data"]


def read_train_config(path: str | os.PathLike) -> dict[str, list[str]]:
    """{query_id: [in_context_id, ...]}; the keys are the queries of the dataset."""
    with open(path, "rb") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise ValueError(f"{path}: expected {{query_id: [in_context_id, ...]}}")
    return {str(k): [str(x) for x in v] for k, v in doc.items()}


def decode_base64_image(b64: bytes | str, image_id: str, file: str) -> bytes:
    """Strict (url-safe or standard) base64 -> bytes; the check PIL would otherwise fail on much later."""
    if b64 is None:
        raise BadRecord("corrupt_base64", image_id, file, "null base64 value")
    if isinstance(b64, str):
        b64 = b64.encode("ascii", "replace")
    b64 = b64.strip().translate(_URLSAFE_TO_STD)
    if len(b64) % 4:
        b64 += b"=" * (-len(b64) % 4)  # upstream writers sometimes drop padding
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRecord("corrupt_base64", image_id, file, str(e)) from None


def iter_images_json(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> Iterator[tuple[str, bytes]]:
    """Stream `{"IMG_ID": "base64", ...}` as (id, base64 bytes) pairs with memory bounded by the largest value."""
    path = str(path)
    with open(path, "rb") as fh:
        buf, pos, eof = b"", 0, False

        def fill(need_pos):
            nonlocal buf, pos, eof
            # Make buf[pos:] hold at least up to need_pos (relative), reading more input as needed.
            while not eof and len(buf) - pos <= need_pos:
                more = fh.read(chunk_bytes)
                if not more:
                    eof = True
                    break
                buf = buf[pos:] + more
                pos = 0

        def skip_ws():
            nonlocal pos
            while True:
                fill(0)
                while pos < len(buf) and buf[pos] in b" \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    return

        def expect(ch: bytes):
            nonlocal pos
            skip_ws()
            if buf[pos:pos + 1] != ch:
                raise ValueError(f"{path}: malformed images JSON near byte {fh.tell() - len(buf) + pos}: "
                                 f"expected {ch!r}, got {bytes(buf[pos:pos + 20])!r}")
            pos += 1

        def read_string() -> bytes:
            nonlocal pos
            expect(b'"')
            start, search = pos, pos
            while True:
                end = buf.find(b'"', search)
                if end < 0:
                    if eof:
                        raise ValueError(f"{path}: unterminated string in images JSON")
                    rel_start, rel_search = start - pos, len(buf) - pos
                    fill(len(buf) - pos + chunk_bytes)
                    start, search = pos + rel_start, pos + rel_search
                    continue
                n_bs = 0
                while end - 1 - n_bs >= start and buf[end - 1 - n_bs] == 0x5C:
                    n_bs += 1
                if n_bs % 2 == 0:
                    break
                search = end + 1
            raw = buf[start:end]
            pos = end + 1
            return json.loads(b'"' + raw + b'"').encode("utf-8") if b"\\" in raw else raw

        expect(b"{")
        skip_ws()
        if buf[pos:pos + 1] == b"}":
            return
        while True:
            key = read_string().decode("utf-8", "replace")
            expect(b":")
            skip_ws()
            if buf[pos:pos + 1] != b'"':
                raise BadRecord("corrupt_base64", key, path, "value is not a JSON string")
            yield key, read_string()
            skip_ws()
            if buf[pos:pos + 1] == b",":
                pos += 1
                continue
            expect(b"}")
            return


def parquet_id_column(pf, path: str = "?") -> str:
    """Upstream writes a pandas DataFrame indexed by image id: find that index column."""
    names = pf.schema_arrow.names
    meta = pf.schema_arrow.pandas_metadata or {}
    for col in meta.get("index_columns", []):
        if isinstance(col, str) and col in names:
            return col
    for col in ("id", "image_id", "ids"):
        if col in names:
            return col
    raise ValueError(f"{path}: parquet has no image-id index column (columns: {names})")


def iter_images_parquet(path: str | os.PathLike, batch_size: int = 256) -> Iterator[tuple[str, bytes]]:
    """Stream (id, base64 bytes) from a parquet file with a `base64` column indexed by image id."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if "base64" not in pf.schema_arrow.names:
        raise ValueError(f"{path}: parquet has no 'base64' column (columns: {pf.schema_arrow.names})")
    id_col = parquet_id_column(pf, str(path))
    for batch in pf.iter_batches(batch_size=batch_size, columns=[id_col, "base64"]):
        ids, values = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for image_id, value in zip(ids, values):
            # A null value is yielded as None so that decode_base64_image reports it per record.
            yield str(image_id), value.encode("ascii", "replace") if isinstance(value, str) else value


def iter_images(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(id, base64) pairs from either upstream images format, chosen by extension."""
    return iter_images_parquet(path) if str(path).endswith(".parquet") else iter_images_json(path)


def check_image_header(data: bytes, image_id: str, file: str) -> None:
    """Cheap ingestion-time check that the bytes are an image PIL can open (full decode happens in the loader)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.size  # noqa: B018  (header parsed)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadRecord("bad_image", image_id, file, f"not an image PIL can open: {e}") from None
