"""Per-example predictions of one (task, shots, seed) run as JSON Lines, the resume state of an evaluation.

Why JSONL appended per batch: after an interruption the finished examples are read back and skipped; a line cut
short by a kill is dropped (and the file trimmed to the last whole line) so later appends stay valid. A sidecar
`.meta.json` holds the settings that decide the predictions; resuming under different settings is refused.
"""
from __future__ import annotations

import json
import os
from typing import Iterable


class ResumeError(RuntimeError):
    """Existing predictions were made under different settings."""


class PredictionJournal:
    def __init__(self, path: str, settings: dict):
        self.path = path
        self.meta_path = path[:-len(".jsonl")] + ".meta.json" if path.endswith(".jsonl") else path + ".meta.json"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        canon = json.loads(json.dumps(settings, sort_keys=True))
        if os.path.exists(self.meta_path):
            with open(self.meta_path) as fh:
                old = json.load(fh)
            if old != canon:
                diff = sorted(k for k in set(old) | set(canon) if old.get(k) != canon.get(k))
                raise ResumeError(f"{path}: existing predictions were made with different settings ({', '.join(diff)});"
                                  f" use another output_dir or set overwrite=True")
        else:
            with open(self.meta_path, "w") as fh:
                json.dump(canon, fh, indent=1, sort_keys=True)
        self.records: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as fh:
            data = fh.read()
        good = 0
        for line in data.split(b"\n"):
            end = good + len(line) + 1
            if end > len(data):  # last piece without a newline: cut short
                break
            try:
                rec = json.loads(line)
            except ValueError:
                break
            self.records[str(rec["id"])] = rec
            good = end
        if good < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def done(self, example_id: str) -> bool:
        return example_id in self.records

    def append(self, records: Iterable[dict]) -> None:
        lines = []
        for r in records:
            self.records[str(r["id"])] = r
            lines.append(json.dumps(r, ensure_ascii=False))
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
