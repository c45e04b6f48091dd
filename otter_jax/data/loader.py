"""Grain pipeline from a store to fixed-shape host batches, and their global-array form for a mesh.

Batch (per host): vision_x [B, T, F, 3, S, S] uint8 (or float32 if asked), input_ids / attention_mask / labels
[B, L] int32 (labels -100 = ignored), media_mask [B, T] bool, plus `_skipped` [len(REASONS)] int32, `_skip_examples`
{reason: message} and `_epoch` int32 bookkeeping (drop them with `split_meta`). As upstream, each batch comes from ONE group, chosen by a
deterministic weighted interleave (default weights = group sizes); shapes per group: image groups
T = max_media, F = 1; VIDEO_TEXT T = 1, F = num_frames; TEXT_ONLY T = 1, F = 1 with media_mask False.
Skipped records (lenient mode) travel inside the batch that was being filled when they were met, so counts survive
worker processes and checkpoints; `LoaderIterator` sums them, logs them at every epoch change, and saves them in
its state.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import grain
import numpy as np

from otter_jax.data import episodes, images
from otter_jax.data.bad_input import REASONS, BadRecord, SkipCounter
from otter_jax.data.mimicit import GROUPS
from otter_jax.data.store import Store
from otter_jax.data.tokenizer import special_ids

MODEL_KEYS = ("vision_x", "input_ids", "attention_mask", "labels", "media_mask")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 8                 # per host
    max_seq_len: int = 2048
    image_size: int = 224
    resize: str = "squash"              # "squash" (upstream training) or "crop" (shortest side + centre crop)
    resampler: str = "opencv"           # "opencv" (fast bicubic) or "pil" (upstream's exact kernel); see images.py
    max_media: int = 4                  # T for image groups
    num_frames: int = 32                # F for VIDEO_TEXT (upstream resample_frames)
    seed: int = 0
    num_epochs: int | None = None       # None: repeat forever
    group_weights: tuple[tuple[str, float], ...] | None = None  # None: proportional to group size
    num_samples: tuple[tuple[str, int], ...] = ()  # per-dataset override of the YAML's num_samples
    strict: bool = False                # strict: raise on the first bad record; lenient: skip and count
    pixel_dtype: str = "uint8"          # "uint8" (normalise on device) or "float32" (normalised on host)
    num_threads: int = 4                # read/decode threads per process
    num_workers: int = 0                # grain worker processes (mp_prefetch); 0 = in-process
    shard_index: int | None = None      # default jax.process_index()
    shard_count: int | None = None      # default jax.process_count()

    def media_shape(self, group: str) -> tuple[int, int]:
        if group in ("IMAGE_TEXT", "IMAGE_TEXT_IN_CONTEXT"):
            return self.max_media, 1
        return (1, self.num_frames) if group == "VIDEO_TEXT" else (1, 1)


def sample_queries(store: Store, dataset: dict, num_samples: int, seed: int, salt: int) -> np.ndarray:
    """Upstream num_samples: -1 all; fewer = random subset; more = whole copies plus a random remainder."""
    q = store.queries(dataset["name"])
    if num_samples < 0 or num_samples == len(q) or len(q) == 0:
        return q
    rng = np.random.default_rng([seed, salt])
    reps, rest = divmod(num_samples, len(q))
    return np.concatenate([np.tile(q, reps), np.sort(rng.choice(q, rest, replace=False))])


class MakeExample(grain.transforms.Map):
    """store query index -> padded example dict, or a skip marker {"_skip": reason id} in lenient mode."""

    def __init__(self, store: Store, tokenizer, cfg: LoaderConfig, group: str):
        self.store, self.tok, self.cfg, self.group = store, tokenizer, cfg, group
        self.sp = special_ids(tokenizer)

    def map(self, element):
        epoch, index = element
        try:
            return self._example(int(index)) | {"_epoch": np.int32(epoch)}
        except BadRecord as e:
            if self.cfg.strict:
                raise
            return {"_skip": np.int32(REASONS.index(e.reason)), "_skip_msg": str(e), "_epoch": np.int32(epoch)}

    def _example(self, index: int) -> dict[str, np.ndarray]:
        cfg, ins = self.cfg, self.store.instructions
        rec = ins[index]
        rid, src = rec["id"].decode(), rec["source"].decode()
        turns = [episodes.Turn(r["instruction"].decode(), r["answer"].decode(), tuple(int(i) for i in r["image_index"]))
                 for r in [ins[int(c)] for c in rec["context_index"]] + [rec]]
        ep = episodes.build_episode(self.group, turns, self.tok, self.sp, max_seq_len=cfg.max_seq_len,
                                    max_media=cfg.max_media if self.group != "VIDEO_TEXT" else 1,
                                    num_frames=cfg.num_frames, record_id=rid, file=src)
        T, F = cfg.media_shape(self.group)
        S = cfg.image_size
        vision = np.zeros((T, F, 3, S, S), np.uint8)
        decoded: dict[int, np.ndarray] = {}
        for t, frames in enumerate(ep.media):
            for f, image_index in enumerate(frames):
                if image_index not in decoded:
                    img = self.store.images[image_index]
                    try:
                        decoded[image_index] = images.decode_resize(img["image"], S, cfg.resize,
                                                                        cfg.resampler)
                    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad data
                        raise BadRecord("bad_image", img["id"].decode(), img["source"].decode(),
                                        f"cannot decode (used by {rid!r}): {e}") from None
                vision[t, f] = decoded[image_index]
        media_mask = np.zeros(T, bool)
        media_mask[:len(ep.media)] = True
        out = episodes.pad_to(ep, cfg.max_seq_len, self.sp.pad)
        out["vision_x"] = images.normalize_host(vision) if cfg.pixel_dtype == "float32" else vision
        out["media_mask"] = media_mask
        return out


class _SkipCountingBatchIterator(grain.DatasetIterator):
    def __init__(self, parent, batch_size: int):
        super().__init__(parent)
        self._batch_size = batch_size

    def __next__(self):
        rows, skipped, epoch, messages = [], np.zeros(len(REASONS), np.int32), 0, {}
        while len(rows) < self._batch_size:
            x = next(self._parent)  # StopIteration ends the stream; a partial batch is dropped (fixed shapes)
            epoch = max(epoch, int(x["_epoch"]))
            if "_skip" in x:
                skipped[int(x["_skip"])] += 1
                messages.setdefault(REASONS[int(x["_skip"])], x["_skip_msg"])
            else:
                rows.append(x)
        batch = {k: np.stack([r[k] for r in rows]) for k in MODEL_KEYS}
        return batch | {"_skipped": skipped, "_skip_examples": messages, "_epoch": np.int32(epoch)}

    def get_state(self):
        return self._parent.get_state()  # no state of its own between batches

    def set_state(self, state):
        self._parent.set_state(state)


class SkipCountingBatch(grain.IterDataset):
    """Batches valid examples to exactly batch_size and attaches the skip counts met while filling the batch."""

    def __init__(self, parent: grain.IterDataset, batch_size: int):
        super().__init__(parent)
        self._batch_size = batch_size

    def __iter__(self):
        return _SkipCountingBatchIterator(self._parent.__iter__(), self._batch_size)




class _TagEpoch(grain.transforms.MapWithIndex):
    def __init__(self, n: int):
        self.n = n

    def map_with_index(self, index, value):
        return (index // self.n, value)


def make_dataset(store: Store | str, tokenizer, cfg: LoaderConfig) -> grain.IterDataset:
    """The whole host pipeline as a grain IterDataset of batches (deterministic for cfg.seed)."""
    store = store if isinstance(store, Store) else Store(store)
    if cfg.shard_index is None or cfg.shard_count is None:
        import jax

        cfg = dataclasses.replace(cfg, shard_index=jax.process_index(), shard_count=jax.process_count())
    overrides = dict(cfg.num_samples)
    streams, sizes = {}, {}
    for g_i, group in enumerate(GROUPS):
        parts = [sample_queries(store, d, overrides.get(d["name"], d["num_samples"]), cfg.seed, k)
                 for k, d in enumerate(store.datasets) if d["group"] == group]
        if not parts or sum(len(p) for p in parts) == 0:
            continue
        indices = np.concatenate(parts)
        ds = grain.MapDataset.source(indices)[cfg.shard_index::cfg.shard_count]
        if len(ds) == 0:
            continue
        n = len(ds)
        ds = ds.shuffle(seed=cfg.seed * 1000 + g_i).repeat(cfg.num_epochs).map_with_index(_TagEpoch(n))
        ds = ds.map(MakeExample(store, tokenizer, cfg, group))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=max(
            2 * cfg.batch_size, cfg.num_threads)))
        streams[group] = SkipCountingBatch(it, cfg.batch_size)
        sizes[group] = n
    if not streams:
        raise ValueError(f"{store.path}: no query records for shard {cfg.shard_index}/{cfg.shard_count}")
    weights = dict(cfg.group_weights) if cfg.group_weights is not None else sizes
    unknown = set(weights) - set(GROUPS)
    if unknown:
        raise ValueError(f"group_weights names unknown groups {sorted(unknown)}")
    names = [g for g in streams if weights.get(g, 0) > 0]
    ds = grain.IterDataset.mix([streams[g] for g in names], [float(weights[g]) for g in names])
    if cfg.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=2))
    return ds


def split_meta(batch: dict) -> tuple[dict, dict]:
    """(model inputs, bookkeeping) of one batch."""
    return {k: batch[k] for k in MODEL_KEYS}, {k: batch[k] for k in batch if k not in MODEL_KEYS}


def batch_sharding(mesh, data_axes=("data",)):
    """Batch-dimension sharding over `data_axes` of `mesh` (all other dims replicated)."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(data_axes))


def to_global(batch: dict, sharding) -> dict:
    """Host-local batch -> global jax.Arrays (each host passes its own shard of the global batch)."""
    import jax

    model, _ = split_meta(batch)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in model.items()}


class LoaderIterator(grain.DatasetIterator):
    """The loader's iterator: host batches (or global arrays with `sharding`), skip counts, exact save/restore.

    Checkpoint it with orbax as `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`.
    """

    def __init__(self, dataset: grain.IterDataset, strict: bool = False, sharding=None):
        super().__init__(dataset.__iter__())
        self.skips = SkipCounter(strict, "records")
        self.sharding, self.epoch = sharding, 0

    def __next__(self) -> dict:
        try:
            batch = next(self._parent)
        except StopIteration:
            self.skips.log(log)
            raise
        counts = batch["_skipped"]
        self.skips.merge({REASONS[i]: int(c) for i, c in enumerate(counts) if c})
        for reason, message in batch["_skip_examples"].items():
            self.skips.examples.setdefault(reason, message)
        if int(batch["_epoch"]) > self.epoch:
            self.epoch = int(batch["_epoch"])
            log.info("data epoch %d reached: %s", self.epoch, self.skips.report())
        if self.sharding is not None:
            return to_global(batch, self.sharding) | {k: batch[k] for k in batch if k not in MODEL_KEYS}
        return batch

    def metrics(self) -> dict[str, int]:
        """Cumulative skip counts for the metrics writer (`data/skipped_<reason>`)."""
        return {f"data/skipped_{k}": v for k, v in self.skips.counts.items()} | {"data/epoch": self.epoch}

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": self._parent.get_state(), "skipped": dict(self.skips.counts),
                "skip_examples": dict(self.skips.examples), "epoch": self.epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["pipeline"])
        self.skips.counts.clear()
        self.skips.merge(state["skipped"])
        self.skips.examples = dict(state["skip_examples"])
        self.epoch = int(state["epoch"])

    def close(self):
        close = getattr(self._parent, "close", None)
        if close:
            close()


def make_loader(store: Store | str, tokenizer, cfg: LoaderConfig, sharding=None) -> LoaderIterator:
    """Build the pipeline and return its iterator (see module docstring for the batch layout)."""
    return LoaderIterator(make_dataset(store, tokenizer, cfg), cfg.strict, sharding)
