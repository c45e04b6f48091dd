"""MIMIC-IT on-disk format: instructions JSON, images (parquet / base64 JSON / a folder) and train configs.

Instructions: {"meta": {...}, "data": {INS_ID: {instruction, answer, image_ids, rel_ins_ids}}}. Images: a parquet
file indexed by image id with one `base64` column (urlsafe base64 of the encoded file), the older
{IMG_ID: base64} JSON, or (ours) a folder of <IMG_ID>.<ext> files. Writes are atomic (tmp + rename).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


class MimicItError(ValueError):
    pass


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_instructions(path: str | Path, data: dict[str, dict], author: str = "syphus") -> None:
    doc = {"meta": {"version": "0.0.1", "time": time.strftime("%Y-%m-%d"), "author": author}, "data": data}
    atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1))


def read_instructions(path: str | Path) -> dict[str, dict]:
    """Validated `data` mapping; errors name the file and instruction id."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MimicItError(f"{path}: cannot read instructions JSON: {e}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise MimicItError(f"{path}: expected an object with a 'data' mapping of instruction ids")
    for ins_id, rec in data.items():
        if not isinstance(rec, dict):
            raise MimicItError(f"{path}: {ins_id}: entry is not an object")
        for key, typ in (("instruction", str), ("answer", str), ("image_ids", list)):
            if not isinstance(rec.get(key), typ):
                raise MimicItError(f"{path}: {ins_id}: field {key!r} missing or not a {typ.__name__}")
        rec.setdefault("rel_ins_ids", [])
    return data


def read_train_config(path: str | Path) -> dict[str, list[str]]:
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MimicItError(f"{path}: cannot read train config: {e}") from None
    if not isinstance(cfg, dict) or not all(isinstance(v, list) for v in cfg.values()):
        raise MimicItError(f"{path}: train config must map query ids to lists of in-context ids")
    return cfg


def _b64decode(value: str, where: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError, TypeError) as e:
        raise MimicItError(f"{where}: invalid base64 ({e})") from None


class ImageStore:
    """Lazy lookup of encoded image bytes by id from a parquet file, a base64 JSON file, or a folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._map: dict[str, str] | None = None
        if not self.path.exists():
            raise MimicItError(f"{self.path}: images source does not exist")

    def _load(self):
        if self._map is None:
            if self.path.suffix == ".parquet":
                import pyarrow.parquet as pq
                table = pq.read_table(self.path)
                names = table.column_names
                if "base64" not in names:
                    raise MimicItError(f"{self.path}: parquet has no 'base64' column (columns: {names})")
                id_col = next((c for c in names if c != "base64"), None)
                if id_col is None:
                    raise MimicItError(f"{self.path}: parquet has no image-id index column")
                self._map = dict(zip(table.column(id_col).to_pylist(), table.column("base64").to_pylist()))
            elif self.path.suffix == ".json":
                self._map = json.loads(self.path.read_text(encoding="utf-8"))
            else:
                self._map = {}
        return self._map

    def get(self, image_id: str) -> bytes:
        if self.path.is_dir():
            for ext in IMAGE_EXTS:
                f = self.path / f"{image_id}{ext}"
                if f.exists():
                    return f.read_bytes()
            raise MimicItError(f"{self.path}: no image file for id {image_id!r}")
        m = self._load()
        if image_id not in m:
            raise MimicItError(f"{self.path}: image id {image_id!r} not found")
        return _b64decode(m[image_id], f"{self.path}: image {image_id!r}")


def write_images_parquet(path: str | Path, store: ImageStore, image_ids) -> int:
    """Upstream-style images parquet: index column `id`, column `base64`. Returns the number of images."""
    return write_parquet_b64(path, {i: base64.urlsafe_b64encode(store.get(i)).decode() for i in set(image_ids)})


def write_parquet_b64(path: str | Path, b64_by_id: dict[str, str]) -> int:
    """Write {image_id: base64} as an upstream-style parquet (sorted ids), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    ids = sorted(b64_by_id)
    b64 = [b64_by_id[i] for i in ids]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    table = pa.table({"base64": b64, "id": ids})
    # pandas metadata so `pd.read_parquet` (the upstream loader) sees `id` as the index, as upstream files have it
    col = {"metadata": None, "pandas_type": "unicode", "numpy_type": "object"}
    meta = {"index_columns": ["id"], "column_indexes": [], "pandas_version": "2.2.0",
            "columns": [{**col, "name": "base64", "field_name": "base64"}, {**col, "name": "id", "field_name": "id"}]}
    table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return len(ids)
