"""Choosing in-context demonstrations: random from a seeded query set, or RICES (retrieval by image similarity).

Random (OpenFlamingo's protocol): a query set of `query_set_size` pool examples is drawn once with the trial seed;
each test example then draws its own demonstrations from it with a generator seeded by (seed, crc32(example id)),
so the choice does not depend on batching, sharding or resuming.
RICES: cosine similarity of L2-normalised image features (ours: mean of the CLIP encoder's last-layer patch tokens);
the k most similar query-set examples, ordered so that the MOST similar comes LAST (next to the query).
"""
from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

from otter_jax.evaluate.example import Example

METHODS = ("random", "rices")


class DemoSelector:
    def __init__(self, pool: Sequence[Example], method: str = "random", seed: int = 42, query_set_size: int = 2048,
                 features: Callable[[Sequence[Example]], np.ndarray] | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown few-shot method {method!r} (one of {METHODS})")
        self.method, self.seed = method, seed
        n = len(pool)
        size = n if query_set_size < 0 else min(query_set_size, n)
        idx = np.random.default_rng(seed).choice(n, size=size, replace=False) if n else np.zeros(0, int)
        self.query_set = [pool[i] for i in np.sort(idx)]
        self._features = features
        self._pool_features: np.ndarray | None = None

    def _rng(self, ex: Example) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(ex.id.encode())])

    def select(self, ex: Example, k: int, query_feature: np.ndarray | None = None) -> list[Example]:
        if k == 0:
            return []
        if k > len(self.query_set):
            raise ValueError(f"{k} demonstrations requested but the query set has {len(self.query_set)} examples")
        if self.method == "random":
            picks = self._rng(ex).choice(len(self.query_set), size=k, replace=False)
            return [self.query_set[i] for i in picks]
        if query_feature is None:
            raise ValueError("RICES needs the query image's feature")
        if self._pool_features is None:
            self._pool_features = np.asarray(self._features(self.query_set), np.float32)
        sims = self._pool_features @ np.asarray(query_feature, np.float32)
        return [self.query_set[i] for i in rices_order(sims, k)]


def rices_order(similarities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar items, least similar first (so the most similar sits next to the query)."""
    return np.argsort(-np.asarray(similarities), kind="stable")[:k][::-1]
