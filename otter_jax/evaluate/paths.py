"""Evaluation files through `etils.epath`, so benchmark inputs and the output folder may be `gs://` (or any file
system epath knows) as well as local paths.

Why a local working folder for a remote output folder: object stores cannot append, and the prediction journals
are appended per batch. So `OutputDir` copies an existing remote output folder down at start (a rerun resumes from
it), the evaluation writes locally, and new or changed files are copied up after every finished (task, shots, seed)
run and when the evaluation ends or stops on an error. A SIGKILL loses at most the run in progress.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from etils import epath


def is_remote(path) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """os.path.abspath for local paths; remote URLs are already absolute."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def _files(root: epath.Path, rel: str = ""):
    """(relative path, Path) of every file below `root`; walked by hand since object stores have no real dirs."""
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        r = f"{rel}/{p.name}" if rel else p.name
        if p.is_dir():
            yield from _files(p, r)
        else:
            yield r, p


class OutputDir:
    """Where an evaluation writes. A local output_dir is used as is; a remote one through a local working folder
    (`local`) that `sync()` copies up. `fresh` folders are deleted first (overwrite=True starts over)."""

    def __init__(self, output_dir: str, fresh: tuple[str, ...] = ()):
        self.output_dir = str(output_dir)
        self.remote = epath.Path(output_dir) if is_remote(output_dir) else None
        self._stamps: dict[str, tuple[int, int]] = {}
        if self.remote is None:
            self.local = self.output_dir
            for d in fresh:
                shutil.rmtree(os.path.join(self.local, d), ignore_errors=True)
            return
        for d in fresh:
            if (self.remote / d).exists():
                (self.remote / d).rmtree()
        self.local = tempfile.mkdtemp(prefix="otter_eval_")
        if self.remote.exists():
            for rel, src in _files(self.remote):
                dst = os.path.join(self.local, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, "wb") as fh:
                    fh.write(src.read_bytes())
                self._stamps[rel] = self._stamp(dst)

    @staticmethod
    def _stamp(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def sync(self) -> int:
        """Copy new or changed local files to the remote folder; returns how many were copied."""
        if self.remote is None or not os.path.isdir(self.local):
            return 0
        n = 0
        for dirpath, _, names in os.walk(self.local):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, self.local).replace(os.sep, "/")
                stamp = self._stamp(path)
                if self._stamps.get(rel) == stamp:
                    continue
                dst = self.remote / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "rb") as fh:
                    dst.write_bytes(fh.read())
                self._stamps[rel] = stamp
                n += 1
        return n

    def shown(self, path: str) -> str:
        """A path under the working folder as the user knows it (under output_dir)."""
        if self.remote is None or not path or not path.startswith(self.local):
            return path
        return str(self.remote / os.path.relpath(path, self.local).replace(os.sep, "/"))

    def close(self) -> None:
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)
