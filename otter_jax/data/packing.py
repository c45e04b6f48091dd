"""Sequence packing: several MIMIC-IT episodes in one `max_seq_len` row, each attending only to itself.

A packed row lays its episodes end to end; `segment_ids` numbers them 1, 2, ... (0 on padding), `positions`
restart at 0 for each, and the row's media slots hold the episodes' media in the same order with no gap, so the
model's per-row `<image>` count indexes an episode's own media (`models.cross_attention.text_time` gives a token
of an episode that has shown no image yet no media). The loss of each episode is unchanged (tests/
test_packing_model.py); training on MIMIC-IT's short episodes then spends its FLOPs on tokens, not padding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from otter_jax.data.episodes import IGNORE


def fits(lengths: Sequence[int], media: Sequence[int], max_seq_len: int, max_media: int) -> list[bool]:
    """Which episodes enter the row, in order (first fit: an episode that does not fit is left out, the next may)."""
    used_t = used_m = 0
    keep = []
    for n, m in zip(lengths, media):
        ok = used_t + n <= max_seq_len and used_m + m <= max_media
        keep.append(ok)
        if ok:
            used_t, used_m = used_t + n, used_m + m
    return keep


def pack_row(episodes: Sequence[dict[str, np.ndarray]], max_seq_len: int, vision_shape: tuple[int, ...],
             pad_id: int, vision_dtype=np.uint8) -> dict[str, np.ndarray]:
    """One row from unpadded episodes {input_ids, labels [n], vision [m, F, 3, S, S]} that fit (see `fits`).

    Returns input_ids / attention_mask / labels / segment_ids / positions [max_seq_len], vision_x `vision_shape`
    ([T, F, 3, S, S]) and media_mask [T]."""
    L, T = max_seq_len, vision_shape[0]
    row = {"input_ids": np.full(L, pad_id, np.int32), "attention_mask": np.zeros(L, np.int32),
           "labels": np.full(L, IGNORE, np.int32), "segment_ids": np.zeros(L, np.int32),
           "positions": np.zeros(L, np.int32), "vision_x": np.zeros(vision_shape, vision_dtype),
           "media_mask": np.zeros(T, bool)}
    at = media = 0
    for seg, ep in enumerate(episodes, start=1):
        n, m = len(ep["input_ids"]), len(ep["vision"])
        if at + n > L or media + m > T:
            raise ValueError(f"episodes do not fit one row: {at + n} tokens > {L} or {media + m} media > {T}")
        row["input_ids"][at:at + n] = ep["input_ids"]
        row["labels"][at:at + n] = ep["labels"]
        row["attention_mask"][at:at + n] = 1
        row["segment_ids"][at:at + n] = seg
        row["positions"][at:at + n] = np.arange(n)
        row["vision_x"][media:media + m] = ep["vision"]
        row["media_mask"][media:media + m] = True
        at, media = at + n, media + m
    if at == 0:
        row["attention_mask"][0] = 1  # an empty row still attends somewhere (no fully masked softmax)
    return row
