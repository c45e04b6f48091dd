"""Packed rows: episodes end to end with their own segment, restarting positions and their media in order."""
import numpy as np
import pytest

from otter_jax.data.episodes import IGNORE
from otter_jax.data.packing import fits, pack_row


def ep(n, m, start):
    ids = np.arange(start, start + n, dtype=np.int32)
    return {"input_ids": ids, "labels": np.where(ids % 2 == 0, ids, IGNORE).astype(np.int32),
            "vision": np.full((m, 1, 3, 2, 2), start, np.uint8)}


def test_pack_row_layout():
    row = pack_row([ep(5, 2, 10), ep(3, 0, 20), ep(4, 1, 30)], 16, (4, 1, 3, 2, 2), pad_id=0)
    assert row["segment_ids"].tolist() == [1] * 5 + [2] * 3 + [3] * 4 + [0] * 4
    assert row["positions"].tolist() == list(range(5)) + list(range(3)) + list(range(4)) + [0] * 4
    assert row["attention_mask"].tolist() == [1] * 12 + [0] * 4
    assert row["input_ids"][:12].tolist() == list(range(10, 15)) + list(range(20, 23)) + list(range(30, 34))
    assert (row["labels"][12:] == IGNORE).all()
    assert row["vision_x"][:, 0, 0, 0, 0].tolist() == [10, 10, 30, 0]
    assert row["media_mask"].tolist() == [True, True, True, False]


def test_first_fit_and_overflow():
    assert fits([5, 9, 3], [1, 0, 1], max_seq_len=10, max_media=4) == [True, False, True]
    assert fits([2, 2, 2], [2, 2, 1], max_seq_len=10, max_media=3) == [True, False, True]
    with pytest.raises(ValueError, match="do not fit"):
        pack_row([ep(8, 0, 0), ep(8, 0, 0)], 10, (1, 1, 3, 2, 2), pad_id=0)


def test_empty_row_attends_somewhere():
    row = pack_row([], 8, (2, 1, 3, 2, 2), pad_id=7)
    assert row["attention_mask"].sum() == 1 and (row["labels"] == IGNORE).all()


def test_loader_packs_consecutive_records_of_the_global_order(demo_store, demo_tokenizer):
    """pack_episodes=2: row r of step k holds global-order records 2r and 2r+1 of step k, each exactly as the
    unpacked loader would give it (tokens, labels, media), one after the other."""
    import dataclasses

    from otter_jax.data import loader
    from otter_jax.data.store import Store

    cfg = loader.LoaderConfig(batch_size=2, max_seq_len=320, image_size=28, max_media=8, num_frames=8, seed=3,
                              num_threads=1, shard_index=0, shard_count=1, pack_episodes=2)
    store = Store(demo_store)
    order = loader.global_order(store, cfg)
    batches = first_batches(loader.make_loader(store, demo_tokenizer, cfg), 6)
    packed_rows = overflow = 0
    for k, batch in enumerate(batches):
        group, _, records = order.batch(k)
        make = loader.MakeExample(store, demo_tokenizer, dataclasses.replace(cfg, pack_episodes=1), group)
        T = cfg.media_shape(group)[0]  # a video row holds one clip: its second episode overflows
        dropped = 0
        for r in range(2):
            seg = batch["segment_ids"][r]
            at = media = 0
            eps = [make.episode(int(i)) for i in records[2 * r:2 * r + 2]]
            keep = fits([len(e.input_ids) for e, _ in eps], [len(v) for _, v in eps], cfg.max_seq_len, T)
            dropped += keep.count(False)
            for s, (ep, vision) in enumerate([e for e, ok in zip(eps, keep) if ok], start=1):
                n, m = len(ep.input_ids), len(vision)
                assert (seg[at:at + n] == s).all()
                np.testing.assert_array_equal(batch["input_ids"][r, at:at + n], ep.input_ids)
                np.testing.assert_array_equal(batch["labels"][r, at:at + n], ep.labels)
                np.testing.assert_array_equal(batch["positions"][r, at:at + n], np.arange(n))
                np.testing.assert_array_equal(batch["vision_x"][r, media:media + m], vision)
                at, media = at + n, media + m
            assert (seg[at:] == 0).all() and batch["media_mask"][r].sum() == media
            packed_rows += 1
        assert batch["_skipped"][REASONS.index("pack_overflow")] == dropped  # counted, never silent
        overflow += dropped
    assert packed_rows == 12 and overflow < 12


from data_helpers import demo_dir, demo_store, demo_tokenizer, first_batches  # noqa: E402,F401
from otter_jax.data.bad_input import REASONS  # noqa: E402
