"""Grain pipeline from a store to fixed-shape batches: one global data order, each host reading its rows of it.

Batch (per host): vision_x [B, T, F, 3, S, S] uint8 (or float32 if asked), input_ids / attention_mask / labels
[B, L] int32 (labels -100 = ignored), media_mask [B, T] bool, plus `_skipped` [len(REASONS)] int32, `_skip_examples`
{reason: message}, `_epoch` and `_step` int32 bookkeeping (drop them with `split_meta`). Shapes per group: image
groups T = max_media, F = 1; VIDEO_TEXT T = 1, F = num_frames; TEXT_ONLY T = 1, F = 1 with media_mask False.

Why one global order (`GlobalOrder`): every host must feed the same step the same group (the shapes of the global
arrays depend on it) and run out of data on the same step, and a run must be resumable on another number of hosts.
So which group fills global batch k and which records sit in its G rows are computed from the global group sizes,
the weights and the seed only; a host reads just the rows its devices hold (`host_rows`). Global batch k is the same
records whatever the number of hosts, and the data position is one number, the step.

A record that fails in the loader (lenient mode) leaves an empty row in its slot (no supervised token, so no loss),
never a shifted batch: shifting would move every later record to another step and desynchronise the hosts. Skip
counts travel inside the batch; `LoaderIterator` sums them, logs them at every epoch change and keeps them in its
state. Packing (several episodes per row) would go in `HostBatch.__call__`, between assembling the examples of a
host batch and stacking them.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from typing import Any, Callable

import grain
import numpy as np

from otter_jax.data import episodes, images, packing
from otter_jax.data.bad_input import REASONS, BadRecord, SkipCounter
from otter_jax.data.mimicit import GROUPS
from otter_jax.data.store import Store
from otter_jax.data.tokenizer import special_ids

MODEL_KEYS = ("vision_x", "input_ids", "attention_mask", "labels", "media_mask")
PACKED_KEYS = ("segment_ids", "positions")  # with pack_episodes > 1 (otter_jax/data/packing.py)
SPLITS = ("train", "val")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 8                 # rows this host reads per step (its part of the global batch)
    max_seq_len: int = 2048
    image_size: int = 224
    resize: str = "squash"              # "squash" (upstream training) or "crop" (shortest side + centre crop)
    resampler: str = "opencv"           # "opencv" (fast bicubic) or "pil" (upstream's exact kernel); see images.py
    max_media: int = 4                  # T for image groups
    num_frames: int = 32                # F for VIDEO_TEXT (upstream resample_frames)
    seed: int = 0
    num_epochs: int | None = None       # None: repeat forever
    group_weights: tuple[tuple[str, float], ...] | None = None  # None: proportional to group size
    num_samples: tuple[tuple[str, int], ...] = ()  # per-dataset override of the YAML's num_samples (train split)
    strict: bool = False                # strict: raise on the first bad record; lenient: empty row and count
    pixel_dtype: str = "uint8"          # "uint8" (normalise on device) or "float32" (normalised on host)
    num_threads: int = 4                # host batches assembled in parallel per process
    num_workers: int = 0                # grain worker processes (mp_prefetch); 0 = in-process
    shard_index: int | None = None      # default jax.process_index()
    shard_count: int | None = None      # default jax.process_count()
    global_batch_size: int | None = None  # None: batch_size * shard_count
    split: str = "train"                # "val": the held-out queries of a store built with --val-fraction
    once: bool = False                  # every record exactly once, group after group, last batches padded (eval)
    pack_episodes: int = 1              # > 1: each row packs this many consecutive records of the global order

    def media_shape(self, group: str) -> tuple[int, int]:
        if group in ("IMAGE_TEXT", "IMAGE_TEXT_IN_CONTEXT"):
            return self.max_media, 1
        return (1, self.num_frames) if group == "VIDEO_TEXT" else (1, 1)


def sample_queries(store: Store, dataset: dict, num_samples: int, seed: int, salt: int, split: str = "train"
                   ) -> np.ndarray:
    """Upstream num_samples: -1 all; fewer = random subset; more = whole copies plus a random remainder."""
    q = store.queries(dataset["name"], split)
    if num_samples < 0 or num_samples == len(q) or len(q) == 0:
        return q
    rng = np.random.default_rng([seed, salt])
    reps, rest = divmod(num_samples, len(q))
    return np.concatenate([np.tile(q, reps), np.sort(rng.choice(q, rest, replace=False))])


class GlobalOrder:
    """Which group and which records make global batch k; a function of (group sizes, weights, G, seed) only.

    Training order: the group of step k is drawn with probabilities proportional to the weights (blocks of
    BLOCK steps, one RNG per block, so step k is found without replaying a stream); a group's batches are consecutive
    windows of G records over its epochs, each epoch a fresh permutation. With `num_epochs` the data ends at the
    first step whose group has no full window left. `once`: each group's records once in a fixed permutation, group
    after group, the last window of a group padded with empty slots (-1) -- a validation pass.
    """

    BLOCK = 4096

    def __init__(self, groups: dict[str, np.ndarray], weights: dict[str, float], global_batch: int, seed: int,
                 num_epochs: int | None = None, once: bool = False):
        self.names = [g for g in GROUPS if len(groups.get(g, ())) and (once or weights.get(g, 0) > 0)]
        if not self.names:
            raise ValueError("no group has both records and a positive weight")
        self.records = [np.asarray(groups[g], np.int64) for g in self.names]
        self.G, self.seed, self.num_epochs, self.once = int(global_batch), int(seed), num_epochs, once
        p = np.array([float(weights.get(g, 0)) for g in self.names]) if not once else np.ones(len(self.names))
        self.p = p / p.sum()
        self._lock = threading.Lock()
        self._blocks: list[np.ndarray] = []   # group choice per step, block by block
        self._before: list[np.ndarray] = []   # per block: batches each group had before it
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        if once:
            counts = [-(-len(r) // self.G) for r in self.records]
            self._once_start = np.concatenate([[0], np.cumsum(counts)])
            self.num_steps: int | None = int(self._once_start[-1])
        else:
            self.num_steps = None if num_epochs is None else self._end_step()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            while len(self._blocks) <= b:
                i = len(self._blocks)
                rng = np.random.default_rng([self.seed, 0x6F74746572, i])
                choice = rng.choice(len(self.names), self.BLOCK, p=self.p).astype(np.int8)
                before = (np.zeros(len(self.names), np.int64) if i == 0 else
                          self._before[-1] + np.bincount(self._blocks[-1], minlength=len(self.names)))
                self._blocks.append(choice)
                self._before.append(before)
            return self._blocks[b], self._before[b]

    def _perm(self, g: int, epoch: int) -> np.ndarray:
        key = (g, epoch)
        with self._lock:
            perm = self._perms.get(key)
            if perm is None:
                if len(self._perms) > 3 * len(self.names):  # a window spans at most two epochs of a group
                    self._perms.clear()
                perm = np.random.default_rng([self.seed, g, epoch]).permutation(len(self.records[g]))
                self._perms[key] = perm
            return perm

    def _end_step(self) -> int:
        """First step whose group has no full window of G records left in num_epochs passes."""
        limit = [self.num_epochs * len(r) // self.G for r in self.records]  # full windows per group
        b = 0
        while True:
            choice, before = self._block(b)
            ends = []
            for g in range(len(self.names)):
                steps = np.flatnonzero(choice == g)
                over = np.flatnonzero(before[g] + np.arange(len(steps)) >= limit[g])
                if len(over):
                    ends.append(int(steps[over[0]]))
            if ends:
                return b * self.BLOCK + min(ends)
            b += 1

    def batch(self, k: int) -> tuple[str, int, np.ndarray]:
        """(group, epoch, G store query indices; -1 = an empty slot) of global batch k."""
        if self.num_steps is not None and not 0 <= k < self.num_steps:
            raise IndexError(f"global batch {k} is past the end of the data ({self.num_steps} batches)")
        if self.once:
            g = int(np.searchsorted(self._once_start, k, side="right")) - 1
            start = (k - int(self._once_start[g])) * self.G
            perm = self._perm(g, 0)[start:start + self.G]
            out = np.full(self.G, -1, np.int64)
            out[:len(perm)] = self.records[g][perm]
            return self.names[g], 0, out
        b, o = divmod(k, self.BLOCK)
        choice, before = self._block(b)
        g = int(choice[o])
        window = int(before[g] + np.count_nonzero(choice[:o] == g))
        n = len(self.records[g])
        pos = window * self.G + np.arange(self.G)
        epochs = pos // n
        out = np.empty(self.G, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.records[g][self._perm(g, int(e))[pos[sel] % n]]
        return self.names[g], int(epochs[-1]), out


class MakeExample:
    """store query index -> padded example dict of one group; raises BadRecord for a record that cannot be used."""

    def __init__(self, store: Store, tokenizer, cfg: LoaderConfig, group: str):
        self.store, self.tok, self.cfg, self.group = store, tokenizer, cfg, group
        self.sp = special_ids(tokenizer)

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        ep, vision = self.episode(index)
        media_mask = np.zeros(len(self._zeros_vision()), bool)
        media_mask[:len(vision)] = True
        out = episodes.pad_to(ep, self.cfg.max_seq_len, self.sp.pad)
        out["vision_x"] = self._pixels(np.concatenate([vision, self._zeros_vision()[len(vision):]]))
        out["media_mask"] = media_mask
        return out

    def _pixels(self, vision: np.ndarray) -> np.ndarray:
        return images.normalize_host(vision) if self.cfg.pixel_dtype == "float32" else vision

    def packed(self, indices) -> tuple[dict[str, np.ndarray], list[BadRecord]]:
        """One packed row from consecutive records (first fit); records that cannot be used or do not fit the row
        come back as BadRecords (counted like skipped records)."""
        eps, bad = [], []
        for index in indices:
            if index < 0:
                continue
            try:
                ep, vision = self.episode(int(index))
            except BadRecord as e:
                bad.append(e)
                continue
            eps.append((ep, vision))
        keep = packing.fits([len(e.input_ids) for e, _ in eps], [len(v) for _, v in eps], self.cfg.max_seq_len,
                            len(self._zeros_vision()))
        for (ep, _), ok in zip(eps, keep):
            if not ok:
                bad.append(BadRecord("pack_overflow", ep.record_id, ep.file,
                                     f"{len(ep.input_ids)} tokens / {len(ep.media)} media did not fit the packed row "
                                     f"(lower data.pack_episodes, or raise max_seq_len / max_media)"))
        row = packing.pack_row([{"input_ids": e.input_ids, "labels": e.labels, "vision": v}
                                for (e, v), ok in zip(eps, keep) if ok], self.cfg.max_seq_len,
                               self._zeros_vision().shape, self.sp.pad)
        row["vision_x"] = self._pixels(row["vision_x"])
        return row, bad

    def episode(self, index: int) -> tuple[episodes.Episode, np.ndarray]:
        """(unpadded episode, its media [m, F, 3, S, S] uint8) of store query `index`."""
        cfg, ins = self.cfg, self.store.instructions
        rec = ins[index]
        rid, src = rec["id"].decode(), rec["source"].decode()
        turns = [episodes.Turn(r["instruction"].decode(), r["answer"].decode(), tuple(int(i) for i in r["image_index"]))
                 for r in [ins[int(c)] for c in rec["context_index"]] + [rec]]
        ep = episodes.build_episode(self.group, turns, self.tok, self.sp, max_seq_len=cfg.max_seq_len,
                                    max_media=cfg.max_media if self.group != "VIDEO_TEXT" else 1,
                                    num_frames=cfg.num_frames, record_id=rid, file=src)
        vision = self._zeros_vision()[:len(ep.media)]
        decoded: dict[int, np.ndarray] = {}
        for t, frames in enumerate(ep.media):
            for f, image_index in enumerate(frames):
                if image_index not in decoded:
                    img = self.store.images[image_index]
                    try:
                        decoded[image_index] = images.decode_resize(img["image"], cfg.image_size, cfg.resize,
                                                                    cfg.resampler)
                    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad data
                        raise BadRecord("bad_image", img["id"].decode(), img["source"].decode(),
                                        f"cannot decode (used by {rid!r}): {e}") from None
                vision[t, f] = decoded[image_index]
        return ep, vision

    def _zeros_vision(self) -> np.ndarray:
        T, F = self.cfg.media_shape(self.group)
        return np.zeros((T, F, 3, self.cfg.image_size, self.cfg.image_size), np.uint8)

    def empty(self) -> dict[str, np.ndarray]:
        """A row that supervises nothing (labels all ignored): what a padded or skipped slot holds. One attended
        token keeps every attention row non-empty (no NaN from a fully masked softmax)."""
        if self.cfg.pack_episodes > 1:
            return self.packed([])[0]
        L = self.cfg.max_seq_len
        mask = np.zeros(L, np.int32)
        mask[0] = 1
        vision = self._zeros_vision()
        return {"input_ids": np.full(L, self.sp.pad, np.int32), "attention_mask": mask,
                "labels": np.full(L, episodes.IGNORE, np.int32), "vision_x": self._pixels(vision),
                "media_mask": np.zeros(len(vision), bool)}


class HostBatch(grain.transforms.Map):
    """global step k -> this host's rows of global batch k, stacked (skipped records counted, their rows empty)."""

    def __init__(self, store: Store, tokenizer, cfg: LoaderConfig, order: GlobalOrder, rows: np.ndarray):
        self.order, self.rows, self.strict = order, np.asarray(rows), cfg.strict
        self.pack = cfg.pack_episodes
        self.make = {g: MakeExample(store, tokenizer, cfg, g) for g in order.names}

    def map(self, k):
        group, epoch, records = self.order.batch(int(k))
        make = self.make[group]
        skipped, messages, rows = np.zeros(len(REASONS), np.int32), {}, []
        if self.pack > 1:  # row r packs records [r * pack, (r + 1) * pack) of the global batch
            for indices in records.reshape(-1, self.pack)[self.rows]:
                row, bad = make.packed(indices)
                if bad and self.strict:
                    raise bad[0]
                for e in bad:
                    skipped[REASONS.index(e.reason)] += 1
                    messages.setdefault(e.reason, str(e))
                rows.append(row)
            batch = {key: np.stack([r[key] for r in rows]) for key in MODEL_KEYS + PACKED_KEYS}
            return batch | {"_skipped": skipped, "_skip_examples": messages, "_epoch": np.int32(epoch),
                            "_step": np.int32(k)}
        for index in records[self.rows]:
            if index < 0:
                rows.append(make.empty())
                continue
            try:
                rows.append(make(int(index)))
            except BadRecord as e:
                if self.strict:
                    raise
                skipped[REASONS.index(e.reason)] += 1
                messages.setdefault(e.reason, str(e))
                rows.append(make.empty())
        batch = {key: np.stack([r[key] for r in rows]) for key in MODEL_KEYS}
        return batch | {"_skipped": skipped, "_skip_examples": messages, "_epoch": np.int32(epoch),
                        "_step": np.int32(k)}


def host_rows(sharding, global_batch: int) -> np.ndarray:
    """Rows of the global batch held by this process's devices, in order (what make_array_from_process_local_data
    takes from this process)."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((global_batch, 1)).values():
        rows.update(range(*index[0].indices(global_batch)))
    return np.array(sorted(rows), np.int64)


def global_order(store: Store, cfg: LoaderConfig) -> GlobalOrder:
    """The global order of `cfg.split` of `store` for a global batch of `cfg.global_batch_size` rows."""
    if cfg.split not in SPLITS:
        raise ValueError(f"loader split {cfg.split!r}: must be one of {SPLITS}")
    overrides = dict(cfg.num_samples) if cfg.split == "train" else {}
    groups: dict[str, np.ndarray] = {}
    for group in GROUPS:
        parts = [sample_queries(store, d, overrides.get(d["name"], d["num_samples"] if cfg.split == "train" else -1),
                                cfg.seed, k, cfg.split)
                 for k, d in enumerate(store.datasets) if d["group"] == group]
        if parts and sum(len(p) for p in parts):
            groups[group] = np.concatenate(parts)
    if not groups:
        raise ValueError(f"{store.path}: no {cfg.split} query records")
    weights = dict(cfg.group_weights) if cfg.group_weights is not None else {g: len(v) for g, v in groups.items()}
    unknown = set(weights) - set(GROUPS)
    if unknown:
        raise ValueError(f"group_weights names unknown groups {sorted(unknown)}")
    G = cfg.global_batch_size or cfg.batch_size * (cfg.shard_count or 1)
    return GlobalOrder(groups, weights, G * max(cfg.pack_episodes, 1), cfg.seed, cfg.num_epochs, once=cfg.once)


def _resolve(cfg: LoaderConfig) -> LoaderConfig:
    if cfg.shard_index is None or cfg.shard_count is None:
        import jax

        cfg = dataclasses.replace(cfg, shard_index=jax.process_index(), shard_count=jax.process_count())
    if cfg.global_batch_size is None:
        cfg = dataclasses.replace(cfg, global_batch_size=cfg.batch_size * cfg.shard_count)
    return cfg


def _plan(store: Store, cfg: LoaderConfig, sharding=None) -> tuple[LoaderConfig, GlobalOrder, np.ndarray]:
    """(resolved config, global order, this host's rows); checks the host batch against the mesh's batch axes."""
    cfg = _resolve(cfg)
    G = cfg.global_batch_size
    if sharding is not None:
        rows = host_rows(sharding, G)
        if len(rows) != cfg.batch_size:
            axes = sharding.spec[0] if len(sharding.spec) else None
            raise ValueError(f"host batch of {cfg.batch_size} rows (global batch {G} / {cfg.shard_count} processes), "
                             f"but this process's devices hold {len(rows)} rows of the batch split over mesh axes "
                             f"{axes} {dict(sharding.mesh.shape)}: put the batch axes across the processes")
    else:
        if G % cfg.shard_count or G // cfg.shard_count != cfg.batch_size:
            raise ValueError(f"global batch {G} is not {cfg.shard_count} host batches of {cfg.batch_size}")
        rows = np.arange(cfg.shard_index * cfg.batch_size, (cfg.shard_index + 1) * cfg.batch_size)
    return cfg, global_order(store, cfg), rows


def _pipeline(store: Store, tokenizer, cfg: LoaderConfig, order: GlobalOrder, rows: np.ndarray, start: int
              ) -> grain.IterDataset:
    stop = order.num_steps if order.num_steps is not None else sys.maxsize
    ds = grain.MapDataset.range(min(start, stop), stop).map(HostBatch(store, tokenizer, cfg, order, rows))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads,
                                              prefetch_buffer_size=max(2, cfg.num_threads)))
    if cfg.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=2))
    return ds


def make_dataset(store: Store | str, tokenizer, cfg: LoaderConfig, sharding=None, start: int = 0
                 ) -> grain.IterDataset:
    """This host's batches from global step `start` on, as a grain IterDataset (deterministic for cfg.seed).

    Rows: those its devices hold under `sharding`, else the contiguous slice `shard_index` of `shard_count`; their
    number must be `cfg.batch_size`."""
    store = store if isinstance(store, Store) else Store(store)
    return _pipeline(store, tokenizer, *_plan(store, cfg, sharding), start)


def split_meta(batch: dict) -> tuple[dict, dict]:
    """(model inputs, bookkeeping) of one batch."""
    keys = [k for k in MODEL_KEYS + PACKED_KEYS if k in batch]
    return {k: batch[k] for k in keys}, {k: batch[k] for k in batch if k not in keys}


def to_global(batch: dict, sharding, global_batch: int | None = None) -> dict:
    """Host-local batch -> global jax.Arrays (each host passes its own rows of the global batch)."""
    import jax

    model, _ = split_meta(batch)
    return {k: jax.make_array_from_process_local_data(
        sharding, v, None if global_batch is None else (global_batch,) + v.shape[1:]) for k, v in model.items()}


class LoaderIterator(grain.DatasetIterator):
    """The loader's iterator: host batches (or global arrays with `sharding`), skip counts, exact save/restore.

    Its state is global: the next global step (plus skip counts), so it restores on any number of processes
    (`set_state` rebuilds the pipeline from that step). Orbax can also save it per process with
    `grain.checkpoint.CheckpointSave(it)`; the trainer keeps `global_state()` in its checkpoint metadata instead.
    """

    def __init__(self, build: Callable[[int], grain.IterDataset], strict: bool = False, sharding=None,
                 global_batch: int | None = None):
        super().__init__()
        self._build, self._it = build, None
        self.skips = SkipCounter(strict, "records")
        self.sharding, self.global_batch, self.epoch, self.step = sharding, global_batch, 0, 0

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self._build(self.step))
        try:
            batch = next(self._it)
        except StopIteration:
            self.skips.log(log)
            raise
        assert int(batch["_step"]) == self.step, (int(batch["_step"]), self.step)
        self.step += 1
        counts = batch["_skipped"]
        self.skips.merge({REASONS[i]: int(c) for i, c in enumerate(counts) if c})
        for reason, message in batch["_skip_examples"].items():
            self.skips.examples.setdefault(reason, message)
        if int(batch["_epoch"]) > self.epoch:
            self.epoch = int(batch["_epoch"])
            log.info("data epoch %d reached at step %d: %s", self.epoch, self.step, self.skips.report())
        if self.sharding is not None:
            return to_global(batch, self.sharding, self.global_batch) | split_meta(batch)[1]
        return batch

    def metrics(self) -> dict[str, int]:
        """Cumulative skip counts for the metrics writer (`data/skipped_<reason>`)."""
        return {f"data/skipped_{k}": v for k, v in self.skips.counts.items()} | {"data/epoch": self.epoch}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "skipped": dict(self.skips.counts), "skip_examples": dict(self.skips.examples),
                "epoch": self.epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self.step = int(state["step"])
        self.skips.counts.clear()
        self.skips.merge(state["skipped"])
        self.skips.examples = dict(state["skip_examples"])
        self.epoch = int(state["epoch"])

    def global_state(self) -> dict[str, Any]:
        """The state with skip counts summed over all processes (a collective: every process calls it)."""
        import jax

        state = self.get_state()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            local = np.array([self.skips.counts.get(r, 0) for r in REASONS], np.int64)
            total = np.asarray(multihost_utils.process_allgather(local)).sum(0)
            state["skipped"] = {r: int(c) for r, c in zip(REASONS, total) if c}
        return state

    def set_global_state(self, state: dict[str, Any]) -> None:
        """Restore a `global_state()`: process 0 carries the restored totals, the others start counting from 0."""
        import jax

        self.set_state(state if jax.process_index() == 0 else state | {"skipped": {}})

    def close(self):
        close = getattr(self._it, "close", None)
        if close:
            close()
        self._it = None


def make_loader(store: Store | str, tokenizer, cfg: LoaderConfig, sharding=None) -> LoaderIterator:
    """Build the pipeline and return its iterator (see module docstring for the batch layout)."""
    store = store if isinstance(store, Store) else Store(store)
    cfg, order, rows = _plan(store, cfg, sharding)  # config errors now, not at the first next()
    it = LoaderIterator(lambda start: _pipeline(store, tokenizer, cfg, order, rows, start), cfg.strict, sharding,
                        cfg.global_batch_size)
    it.num_steps = order.num_steps
    return it
