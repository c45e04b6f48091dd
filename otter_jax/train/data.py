"""Where training batches come from: the MIMIC-IT store loader (otter_jax.data) or synthetic batches, delivered as
global jax.Arrays built from each host's rows, behind one checkpointable iterator interface.

Synthetic batches exist for throughput work (bench, plan-sized runs without data) and for checks that need the same
global batch whatever the number of processes: row r of step s depends only on (seed, s, r), and each host makes
exactly the rows its devices hold.
"""
from __future__ import annotations

from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from otter_jax.models.config import SpecialTokens
from otter_jax.train.config import TrainConfigError, parse_group_weights


def tokenizer_and_tokens(c: ml_collections.ConfigDict, vocab_size: int):
    """(tokenizer or None, SpecialTokens) for the configured data source; checks that the ids fit the vocabulary."""
    if c.data.source == "synthetic":
        # Otter-LLaMA layout: the added tokens sit at the end of the vocabulary.
        v = vocab_size
        return None, SpecialTokens(media=v - 3, endofchunk=v - 4, answer=v - 2, pad=v - 1, bos=1, eos=2)
    from otter_jax.data.tokenizer import load_tokenizer, special_ids

    if not c.data.tokenizer:
        raise TrainConfigError("config.data.tokenizer is empty: set it to the HF tokenizer folder of the data")
    from etils import epath

    if not epath.Path(c.data.tokenizer).is_dir():
        raise TrainConfigError(f"config.data.tokenizer={c.data.tokenizer!r}: no such folder")
    tok = load_tokenizer(local_dir(c.data.tokenizer))
    if len(tok) > vocab_size:
        raise TrainConfigError(f"config.model.text_config.vocab_size={vocab_size} is smaller than the tokenizer "
                               f"{c.data.tokenizer} ({len(tok)} tokens)")
    sp = special_ids(tok)
    return tok, SpecialTokens(media=sp.media, endofchunk=sp.endofchunk, answer=sp.answer, pad=sp.pad, bos=sp.bos,
                              eos=sp.eos)


def local_dir(path: str) -> str:
    """A local folder with the files of `path` (itself when local; a per-process cached copy of a gs:// or other
    remote folder, for readers such as HF tokenizers that only open local files)."""
    import hashlib
    import os
    import tempfile

    from etils import epath

    if "://" not in path:
        return path
    local = os.path.join(tempfile.gettempdir(), "otter-jax-remote", hashlib.sha256(path.encode()).hexdigest()[:16])
    os.makedirs(local, exist_ok=True)
    for f in epath.Path(path).iterdir():
        if f.is_file():  # atomically: processes sharing a host copy the same files at once
            tmp = os.path.join(local, f"{f.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(f.read_bytes())
            os.replace(tmp, os.path.join(local, f.name))
    return local


def host_batch_size(c: ml_collections.ConfigDict) -> int:
    n = jax.process_count()
    if c.train.global_batch_size % n:
        raise TrainConfigError(f"config.train.global_batch_size={c.train.global_batch_size} is not divisible by "
                               f"the {n} processes")
    return c.train.global_batch_size // n


def loader_config(c: ml_collections.ConfigDict, seed: int, num_epochs: int | None = None, split: str = "train",
                  once: bool = False):
    """The loader settings of config.data; the global batch is config.train.global_batch_size whatever the number
    of processes (each reads its rows), so the data order does not depend on it."""
    from otter_jax.data.loader import LoaderConfig

    d = c.data
    return LoaderConfig(batch_size=host_batch_size(c), global_batch_size=c.train.global_batch_size,
                        max_seq_len=d.max_seq_len, image_size=d.image_size, resize=d.resize, resampler=d.resampler,
                        max_media=d.max_media, num_frames=d.num_frames, seed=seed, num_epochs=num_epochs,
                        group_weights=parse_group_weights(d.group_weights), strict=d.strict,
                        num_threads=d.num_threads, num_workers=d.num_workers, split=split, once=once,
                        pack_episodes=1 if once else d.pack_episodes)  # validation passes stay unpacked


def _store(path: str, key: str):
    from otter_jax.data.store import Store

    if not path:
        raise TrainConfigError(f"config.{key} is empty: set it to a store folder from `otter-jax data build`")
    try:
        return Store(path)
    except FileNotFoundError:
        raise TrainConfigError(f"config.{key}={path!r}: not a complete store (no manifest.json)") from None


def train_batches(c: ml_collections.ConfigDict, tokenizer, tokens: SpecialTokens, sharding: NamedSharding,
                  vocab_size: int):
    """The training iterator: yields dicts of global arrays (+ bookkeeping), has get_state/set_state/metrics."""
    if c.data.source == "synthetic":
        return SyntheticBatches(c, tokens, sharding, vocab_size, seed=c.data.seed)
    from otter_jax.data import loader

    if c.data.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
            flags.FLAGS.mark_as_parsed()
    store = _store(c.data.store, "data.store")
    try:
        return loader.make_loader(store, tokenizer, loader_config(c, c.data.seed), sharding=sharding)
    except ValueError as e:
        raise TrainConfigError(f"config.data.store={c.data.store!r}, config.train.global_batch_size="
                               f"{c.train.global_batch_size}: {e}") from None


def eval_batches(c: ml_collections.ConfigDict, tokenizer, tokens: SpecialTokens, sharding: NamedSharding,
                  vocab_size: int) -> list[dict]:
    """The fixed validation set, the same batches every time so that validation losses compare across steps: up to
    `train.eval_batches` batches holding each held-out example once (padded rows supervise nothing), from
    config.data.eval_store, else the store's validation split (`data build --val-fraction`). A store without one
    falls back to training examples of another seed, with a warning: that loss is not a held-out loss."""
    import logging

    n = c.train.eval_batches
    if c.data.source == "synthetic":
        it: Iterator = SyntheticBatches(c, tokens, sharding, vocab_size, seed=c.data.seed + 1)
        return [next(it) for _ in range(n)]
    from otter_jax.data import loader

    if c.data.eval_store:
        store, split = _store(c.data.eval_store, "data.eval_store"), "train"
    else:
        store = _store(c.data.store, "data.store")
        split = "val" if store.val_fraction > 0 else "train"
    if split == "train" and not c.data.eval_store:
        logging.getLogger(__name__).warning(
            "validation loss on TRAINING examples: %s has no validation split (build it with `otter-jax data build "
            "--val-fraction F`, or set config.data.eval_store)", c.data.store)
        it = loader.make_loader(store, tokenizer, loader_config(c, c.data.seed + 1), sharding=sharding)
    else:
        it = loader.make_loader(store, tokenizer, loader_config(c, c.data.seed + 1, split=split, once=True),
                                sharding=sharding)
    out = []
    for batch in it:
        out.append(batch)
        if len(out) == n:
            break
    return out


class SyntheticBatches(grain.DatasetIterator):
    """Random Otter-shaped batches: `<image>` tokens for each media item, answers supervised after `<answer>`."""

    def __init__(self, c: ml_collections.ConfigDict, tokens: SpecialTokens, sharding: NamedSharding,
                 vocab_size: int, seed: int):
        super().__init__()
        self.global_batch, self.seq_len = c.train.global_batch_size, c.data.max_seq_len
        self.images, self.image_size = c.data.synthetic_images, c.data.image_size
        self.tokens, self.vocab, self.seed, self.sharding = tokens, vocab_size, seed, sharding
        self.step = 0
        self.rows = self._host_rows()

    def _host_rows(self) -> np.ndarray:
        """Global row indices held by this host's devices, in order (what make_array_from_process_local_data wants)."""
        shape = (self.global_batch, self.seq_len)
        rows = set()
        for index in self.sharding.addressable_devices_indices_map(shape).values():
            rows.update(range(*index[0].indices(self.global_batch)))
        return np.array(sorted(rows))

    def row(self, step: int, r: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, r])
        t, L, S = self.images, self.seq_len, self.image_size
        normal = self.vocab - 4  # ids below the special tokens
        ids = rng.integers(3, normal, L).astype(np.int32)
        chunk = L // max(t, 1)
        labels = np.full(L, -100, np.int32)
        for i in range(max(t, 1)):  # each chunk: <image> question <answer> answer <|endofchunk|>
            start = i * chunk
            ids[start] = self.tokens.media if t else ids[start]
            ans = start + chunk // 2
            ids[ans] = self.tokens.answer
            ids[start + chunk - 1] = self.tokens.endofchunk
            labels[ans + 1:start + chunk] = ids[ans + 1:start + chunk]
        ids[0] = self.tokens.bos if self.tokens.bos is not None else ids[0]
        vision = rng.integers(0, 256, (max(t, 1), 1, 3, S, S), dtype=np.uint8)
        return {"vision_x": vision, "input_ids": ids, "attention_mask": np.ones(L, np.int32), "labels": labels,
                "media_mask": np.full(max(t, 1), t > 0)}

    def __next__(self) -> dict[str, Any]:
        rows = [self.row(self.step, int(r)) for r in self.rows]
        local = {k: np.stack([x[k] for x in rows]) for k in rows[0]}
        self.step += 1
        return {k: jax.make_array_from_process_local_data(self.sharding, v, (self.global_batch,) + v.shape[1:])
                for k, v in local.items()}

    def metrics(self) -> dict[str, int]:
        return {}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    global_state, set_global_state = get_state, set_state  # row r of step s is the same for any process count


def drop_bookkeeping(batch: dict) -> dict:
    """Only the arrays the step takes."""
    from otter_jax.train.step import model_inputs

    return model_inputs(batch)
