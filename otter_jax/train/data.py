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
    import os

    if not os.path.isdir(c.data.tokenizer):
        raise TrainConfigError(f"config.data.tokenizer={c.data.tokenizer!r}: no such folder")
    tok = load_tokenizer(c.data.tokenizer)
    if len(tok) > vocab_size:
        raise TrainConfigError(f"config.model.text_config.vocab_size={vocab_size} is smaller than the tokenizer "
                               f"{c.data.tokenizer} ({len(tok)} tokens)")
    sp = special_ids(tok)
    return tok, SpecialTokens(media=sp.media, endofchunk=sp.endofchunk, answer=sp.answer, pad=sp.pad, bos=sp.bos,
                              eos=sp.eos)


def host_batch_size(c: ml_collections.ConfigDict) -> int:
    n = jax.process_count()
    if c.train.global_batch_size % n:
        raise TrainConfigError(f"config.train.global_batch_size={c.train.global_batch_size} is not divisible by "
                               f"the {n} processes")
    return c.train.global_batch_size // n


def loader_config(c: ml_collections.ConfigDict, seed: int, num_epochs: int | None = None):
    from otter_jax.data.loader import LoaderConfig

    d = c.data
    return LoaderConfig(batch_size=host_batch_size(c), max_seq_len=d.max_seq_len, image_size=d.image_size,
                        resize=d.resize, resampler=d.resampler, max_media=d.max_media, num_frames=d.num_frames,
                        seed=seed,
                        num_epochs=num_epochs, group_weights=parse_group_weights(d.group_weights), strict=d.strict,
                        num_threads=d.num_threads, num_workers=d.num_workers)


def _store(path: str, key: str) -> str:
    import os

    if not path:
        raise TrainConfigError(f"config.{key} is empty: set it to a store folder from `otter-jax data build`")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        raise TrainConfigError(f"config.{key}={path!r}: not a complete store (no manifest.json)")
    return path


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
    return loader.make_loader(store, tokenizer, loader_config(c, c.data.seed), sharding=sharding)


def eval_batches(c: ml_collections.ConfigDict, tokenizer, tokens: SpecialTokens, sharding: NamedSharding,
                 vocab_size: int) -> list[dict]:
    """The fixed validation set: the first `train.eval_batches` batches of the eval store (seed + 1), or synthetic
    batches of another seed. The same batches every time, so validation losses are comparable across steps."""
    n = c.train.eval_batches
    if c.data.source == "synthetic":
        it: Iterator = SyntheticBatches(c, tokens, sharding, vocab_size, seed=c.data.seed + 1)
    else:
        from otter_jax.data import loader

        store = _store(c.data.eval_store or c.data.store, "data.eval_store" if c.data.eval_store else "data.store")
        it = loader.make_loader(store, tokenizer, loader_config(c, c.data.seed + 1), sharding=sharding)
    return [next(it) for _ in range(n)]


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


def drop_bookkeeping(batch: dict) -> dict:
    """Only the arrays the step takes."""
    from otter_jax.train.step import MODEL_INPUTS

    return {k: batch[k] for k in MODEL_INPUTS}
