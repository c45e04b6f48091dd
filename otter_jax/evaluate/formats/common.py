"""JSON / JSONL helpers that name the file on every error; files are read through etils.epath (gs:// works)."""
from __future__ import annotations

import json
from typing import Any

from etils import epath

from otter_jax.evaluate.example import DataError


def load_json(path: str) -> Any:
    if not epath.Path(path).exists():
        raise DataError(f"{path}: no such file")
    try:
        return json.loads(epath.Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None


def load_jsonl(path: str) -> list[dict]:
    """JSON Lines (POPE's files); also accepts a file holding one JSON list."""
    if not epath.Path(path).exists():
        raise DataError(f"{path}: no such file")
    text = epath.Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return load_json(path)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON line ({e})") from None
    return rows


def need(record: dict, key: str, path: str, rid: Any) -> Any:
    if key not in record:
        raise DataError(f"{path}: record {rid!r} has no field {key!r}")
    return record[key]


def limit(examples: list, n: int) -> list:
    return examples if n is None or n < 0 else examples[:n]
