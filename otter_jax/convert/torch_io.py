"""Reading and writing PyTorch-side weight files: safetensors (single or sharded with an index) and
`pytorch_model*.bin` shards. Tensors are read lazily, one at a time, so a 7B checkpoint is never held twice."""
from __future__ import annotations

import json
import os
from typing import Callable, Iterator, Mapping

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message lists every offending file or key."""


class TensorSource(Mapping[str, np.ndarray]):
    """Read-only mapping key -> numpy array over the weight files of one directory (or one file)."""

    def __init__(self, path: str):
        self.path = path
        self._files = _weight_files(path)
        self._where: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._bin_cache: dict[str, dict] = {}
        for f in self._files:
            for key, shape in _list_tensors(f, self._bin_cache).items():
                if key in self._where:
                    raise CheckpointError(f"{path}: key {key!r} appears in both {self._where[key]} and {f}")
                self._where[key] = f
                self._shapes[key] = shape

    def metadata(self) -> dict[str, str]:
        """The `__metadata__` of the first safetensors file (empty for .bin checkpoints)."""
        if not self._files[0].endswith(".safetensors"):
            return {}
        from safetensors import safe_open

        with safe_open(self._files[0], framework="np") as fh:
            return dict(fh.metadata() or {})

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def __getitem__(self, key: str) -> np.ndarray:
        f = self._where[key]
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(f, framework="np") as fh:
                return fh.get_tensor(key)
        return _torch_to_numpy(self._bin_cache[f][key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def files(self) -> list[str]:
        return list(self._files)


def _weight_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(path, index_name)
        if os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
            if missing:
                raise CheckpointError(f"{index}: shard files listed in the index are missing: {', '.join(missing)}")
            return [os.path.join(path, f) for f in files]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(path, single)):
            return [os.path.join(path, single)]
    found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin")))
    if found:
        return [os.path.join(path, f) for f in found]
    raise CheckpointError(f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json, "
                          f"pytorch_model.bin or pytorch_model.bin.index.json)")


def _list_tensors(f: str, bin_cache: dict) -> dict[str, tuple[int, ...]]:
    if f.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(f, framework="np") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{f}: cannot read safetensors file ({e})") from e
    import torch

    try:
        sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{f}: cannot read PyTorch checkpoint ({e})") from e
    for wrapper in ("state_dict", "model_state_dict"):  # Lightning-style / OpenFlamingo training checkpoints
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    bin_cache[f] = sd
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def save_safetensors(tensors: Mapping[str, np.ndarray], out_dir: str, max_shard_bytes: int | None = None,
                     metadata: dict[str, str] | None = None) -> list[str]:
    """Write `model.safetensors` (or shards + index when larger than `max_shard_bytes`); returns the files."""
    from safetensors.numpy import save_file

    metadata = {"format": "pt", **(metadata or {})}
    os.makedirs(out_dir, exist_ok=True)
    total = sum(a.nbytes for a in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        path = os.path.join(out_dir, "model.safetensors")
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)
        return [path]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        if size and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = np.ascontiguousarray(v)
        size += v.nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(out_dir, name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return [os.path.join(out_dir, n) for n in names]


def atomic_dir_write(out_dir: str, write: Callable[[str], None]) -> None:
    """Write into a sibling temporary directory and rename it into place, so a failure leaves nothing behind."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir}: output directory exists and is not empty")
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp-{os.getpid()}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        write(tmp)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
