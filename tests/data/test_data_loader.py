"""The grain loader: batch layout per group, determinism, exact resume, lenient/strict, workers, global arrays."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from data_helpers import (absl_flags_parsed, b64, demo_dir, demo_store, demo_tokenizer, first_batches,  # noqa: F401
                          ins, photo_jpeg, write_dataset, write_yaml)
from otter_jax.data import ingest, loader
from otter_jax.sharding import batch_sharding
from otter_jax.data.bad_input import REASONS, BadRecord
from otter_jax.data.store import Store
from otter_jax.data.tokenizer import special_ids

CFG = loader.LoaderConfig(batch_size=2, max_seq_len=160, image_size=28, max_media=4, num_frames=8, seed=3,
                          num_threads=2, shard_index=0, shard_count=1)


def test_batches_have_the_model_layout_for_every_group(demo_store, demo_tokenizer):
    it = loader.make_loader(demo_store, demo_tokenizer, CFG)
    sp = special_ids(demo_tokenizer)
    seen = set()
    for batch in first_batches(it, 16):
        T, F = batch["vision_x"].shape[1:3]
        assert batch["vision_x"].shape[0] == 2 and batch["vision_x"].shape[3:] == (3, 28, 28)
        assert batch["vision_x"].dtype == np.uint8 and batch["media_mask"].dtype == bool
        for k in ("input_ids", "attention_mask", "labels"):
            assert batch[k].shape == (2, 160) and batch[k].dtype == np.int32
        n_tokens = (batch["input_ids"] == sp.media).sum(1)
        np.testing.assert_array_equal(n_tokens, batch["media_mask"].sum(1))  # one <image> per media item
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
        for b in range(2):  # unused media slots are zero, used ones hold a picture
            used = batch["media_mask"][b]
            assert (batch["vision_x"][b, ~used] == 0).all() and all(batch["vision_x"][b, t].std() > 1
                                                                    for t in np.flatnonzero(used))
        seen.add((T, F, bool(n_tokens.any())))
    assert seen == {(4, 1, True), (1, 8, True), (1, 1, False)}  # image groups, video, text-only


def test_deterministic_and_exact_resume(demo_store, demo_tokenizer):
    a = first_batches(loader.make_loader(demo_store, demo_tokenizer, CFG), 7)
    it = loader.make_loader(demo_store, demo_tokenizer, CFG)
    first_batches(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what grain.checkpoint writes
    resumed = loader.make_loader(demo_store, demo_tokenizer, CFG)
    resumed.set_state(state)
    b = first_batches(resumed, 4)
    for x, y in zip(a[3:], b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    other_seed = first_batches(loader.make_loader(demo_store, demo_tokenizer, dataclasses.replace(CFG, seed=4)), 7)
    assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, other_seed))


def test_orbax_checkpoint_restores_the_iterator(demo_store, demo_tokenizer, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = loader.make_loader(demo_store, demo_tokenizer, CFG)
    first_batches(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",)) as mngr:
        mngr.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = first_batches(it, 2)
    fresh = loader.make_loader(demo_store, demo_tokenizer, CFG)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",)) as mngr:
        mngr.restore(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    for x, y in zip(expected, first_batches(fresh, 2)):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
        np.testing.assert_array_equal(x["vision_x"], y["vision_x"])


def test_host_shards_are_disjoint_and_cover_the_queries(demo_store, demo_tokenizer):
    cfg = dataclasses.replace(CFG, batch_size=1, num_epochs=1, group_weights=(("IMAGE_TEXT_IN_CONTEXT", 1.0),))
    texts = []
    for shard in range(2):
        it = loader.make_loader(demo_store, demo_tokenizer, dataclasses.replace(cfg, shard_index=shard,
                                                                               shard_count=2))
        texts.append({demo_tokenizer.decode(b["input_ids"][0]) for b in it})
    assert len(texts[0]) == len(texts[1]) == 4 and not texts[0] & texts[1]


def test_group_weights_and_num_samples(demo_store, demo_tokenizer):
    cfg = dataclasses.replace(CFG, batch_size=1, num_epochs=1, group_weights=(("TEXT_ONLY", 1.0),),
                              num_samples=(("DEMO_TXT", 12),))
    batches = list(loader.make_loader(demo_store, demo_tokenizer, cfg))
    assert len(batches) == 12 and all(not b["media_mask"].any() for b in batches)
    assert len({demo_tokenizer.decode(b["input_ids"][0]) for b in batches}) == 5  # up-sampled from 5 records


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory):
    """A store whose records pass ingestion but fail in the loader: a truncated JPEG and an over-long episode."""
    root = tmp_path_factory.mktemp("bad")
    jpg = photo_jpeg(size=96)
    images = {f"I{i}": b64(photo_jpeg(size=40 + i)) for i in range(6)} | {"I_trunc": b64(jpg[: len(jpg) // 2])}
    data = {f"Q{i}": ins(f"what is {i}?", f"it is {i}.", [f"I{i}"]) for i in range(6)}
    data["Q_trunc"] = ins("broken?", "yes.", ["I_trunc"])
    data["Q_long"] = ins("long " * 300 + "?", "no.", ["I0"])
    doc = write_dataset(root, "B", "IMAGE_TEXT", data, images)
    ingest.build_store(write_yaml(root, doc), root / "store", strict=True, log=lambda s: None)
    return root / "store"


def test_lenient_skips_and_counts_loader_time_bad_records(bad_store, demo_tokenizer):
    cfg = dataclasses.replace(CFG, batch_size=2, num_epochs=2)
    it = loader.make_loader(bad_store, demo_tokenizer, cfg)
    batches = list(it)
    assert len(batches) == 8  # 2 epochs x 8 records / batch 2: never a crash, never a short or shifted batch
    total = np.sum([b["_skipped"] for b in batches], axis=0)
    assert total[REASONS.index("bad_image")] == 2 and total[REASONS.index("too_long")] == 2 and total.sum() == 4
    empty = [r for b in batches for r in range(2) if (b["labels"][r] == -100).all()]
    assert len(empty) == 4  # a skipped record leaves a row that supervises nothing, in its own slot
    assert all(b["attention_mask"].sum(1).min() >= 1 for b in batches)  # no fully masked row (NaN-free attention)
    assert it.skips.counts == {"bad_image": 2, "too_long": 2}
    assert it.metrics()["data/skipped_bad_image"] == 2 and it.epoch == 1
    assert "I_trunc" in it.skips.report()  # the report names a record


def test_strict_raises_naming_record_and_file(bad_store, demo_tokenizer):
    store = Store(bad_store)
    make = loader.MakeExample(store, demo_tokenizer, dataclasses.replace(CFG, strict=True), "IMAGE_TEXT")
    with pytest.raises(BadRecord, match=r"bad_image: record 'I_trunc' in .*B_img\.json"):
        make(store.instruction_index("Q_trunc"))
    with pytest.raises(BadRecord, match=r"too_long: record 'Q_long' in .*B_ins\.json"):
        make(store.instruction_index("Q_long"))
    with pytest.raises(Exception, match="I_trunc|Q_long"):
        list(loader.make_loader(bad_store, demo_tokenizer, dataclasses.replace(CFG, strict=True, num_epochs=1)))


def test_float32_host_pixels_equal_device_normalisation(demo_store, demo_tokenizer):
    from otter_jax.data.images import normalize_on_device

    u8 = first_batches(loader.make_loader(demo_store, demo_tokenizer, CFG), 2)
    f32 = first_batches(loader.make_loader(demo_store, demo_tokenizer, dataclasses.replace(CFG, pixel_dtype="float32")),
                        2)
    for a, b in zip(u8, f32):
        assert b["vision_x"].dtype == np.float32
        used = a["media_mask"]
        np.testing.assert_allclose(np.asarray(normalize_on_device(a["vision_x"]))[used], b["vision_x"][used],
                                   atol=1e-5)


def test_multiprocess_workers_match_in_process_content(demo_store, demo_tokenizer):
    absl_flags_parsed()
    cfg = dataclasses.replace(CFG, num_workers=1, num_threads=1)
    it = loader.make_loader(demo_store, demo_tokenizer, cfg)
    try:
        got = first_batches(it, 3)
    finally:
        it.close()
    ref = first_batches(loader.make_loader(demo_store, demo_tokenizer, CFG), 3)
    for x, y in zip(got, ref):  # one worker sees the whole dataset in the same order
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])


def test_global_arrays_on_eight_devices(demo_store, demo_tokenizer):
    import jax

    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by tests/conftest.py)")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = batch_sharding(mesh)
    cfg = dataclasses.replace(CFG, batch_size=8)
    host = next(loader.make_loader(demo_store, demo_tokenizer, cfg))
    batch = next(loader.make_loader(demo_store, demo_tokenizer, cfg, sharding=sharding))
    assert set(batch) == set(loader.MODEL_KEYS) | {"_skipped", "_skip_examples", "_epoch", "_step"}
    for k in loader.MODEL_KEYS:
        arr = batch[k]
        assert isinstance(arr, jax.Array) and arr.sharding == sharding and arr.shape == host[k].shape
        assert len(arr.addressable_shards) == 8 and arr.addressable_shards[0].data.shape[0] == 1
        np.testing.assert_array_equal(np.asarray(arr), host[k])


def test_global_order_covers_each_group_once_per_epoch_and_ends_on_a_global_step():
    groups = {"IMAGE_TEXT": np.arange(7) * 10, "TEXT_ONLY": np.arange(3) * 10 + 1, "VIDEO_TEXT": np.arange(5) * 10 + 2}
    order = loader.GlobalOrder(groups, {g: len(v) for g, v in groups.items()}, global_batch=2, seed=5, num_epochs=3)
    seen = {g: [] for g in groups}
    for k in range(order.num_steps):
        g, epoch, records = order.batch(k)
        seen[g].extend(records.tolist())
    ends = [len(seen[g]) + 2 > 3 * len(v) for g, v in groups.items()]
    assert any(ends)  # the data ended because a group had no full window left
    for g, v in groups.items():
        for e in range(len(seen[g]) // len(v)):  # every complete epoch of a group is a permutation of it
            assert sorted(seen[g][e * len(v):(e + 1) * len(v)]) == sorted(v.tolist())
    with pytest.raises(IndexError, match="past the end"):
        order.batch(order.num_steps)
    # Random access equals sequential, from a fresh object (what a resumed run does).
    fresh = loader.GlobalOrder(groups, {g: len(v) for g, v in groups.items()}, global_batch=2, seed=5, num_epochs=3)
    for k in reversed(range(order.num_steps)):
        a, b = order.batch(k), fresh.batch(k)
        assert a[:2] == b[:2] and np.array_equal(a[2], b[2])
    once = loader.GlobalOrder(groups, {}, global_batch=2, seed=5, once=True)
    rows = np.concatenate([once.batch(k)[2] for k in range(once.num_steps)])
    assert once.num_steps == 4 + 2 + 3 and sorted(rows[rows >= 0].tolist()) == sorted(np.concatenate(
        list(groups.values())).tolist()) and (rows < 0).sum() == 3  # each record once, last windows padded


def test_global_batches_do_not_depend_on_the_host_count(demo_store, demo_tokenizer):
    """Unequal, odd group sizes: 2 or 4 hosts read exactly the rows of the 1-host global batches, end on the same
    step, and a state saved on 1 host resumes on 2 hosts in the same global order."""
    store = Store(demo_store)
    odd = tuple((d["name"], 2 * i + 3) for i, d in enumerate(store.datasets))
    base = dataclasses.replace(CFG, num_samples=odd, num_epochs=2, global_batch_size=4, num_threads=1)

    def loaders(hosts):
        return [loader.make_loader(store, demo_tokenizer, dataclasses.replace(
            base, batch_size=4 // hosts, shard_index=h, shard_count=hosts)) for h in range(hosts)]

    one = list(loaders(1)[0])
    assert len(one) >= 4 and len({b["vision_x"].shape for b in one}) > 1  # several groups take turns
    for hosts in (2, 4):
        per_host = [list(it) for it in loaders(hosts)]
        assert [len(p) for p in per_host] == [len(one)] * hosts  # the same epoch end on every host
        for k, batch in enumerate(one):
            for key in loader.MODEL_KEYS:
                np.testing.assert_array_equal(np.concatenate([p[k][key] for p in per_host]), batch[key])
    first = loaders(1)[0]
    first_batches(first, 2)
    state = json.loads(json.dumps(first.get_state()))
    for h, it in enumerate(loaders(2)):
        it.set_state(state)
        rest = list(it)
        assert len(rest) == len(one) - 2
        for k, batch in enumerate(rest):
            np.testing.assert_array_equal(batch["input_ids"], one[k + 2]["input_ids"][2 * h:2 * h + 2])


def test_host_batch_is_checked_against_the_mesh_batch_axes(demo_store, demo_tokenizer):
    import jax

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py)")
    mesh = jax.make_mesh((4, 2), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    sharding = batch_sharding(mesh)  # one process holds all 8 rows
    with pytest.raises(ValueError, match="devices hold 8 rows of the batch split over mesh axes"):
        loader.make_loader(demo_store, demo_tokenizer, dataclasses.replace(CFG, batch_size=4, global_batch_size=8),
                           sharding=sharding)


@pytest.fixture(scope="module")
def val_store(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "store"
    ingest.build_store(demo_dir / "demo.yaml", out, strict=True, log=lambda s: None, val_fraction=0.3)
    return out


def test_validation_split_is_disjoint_from_training(val_store, demo_store, demo_tokenizer):
    store, full = Store(val_store), Store(demo_store)
    ins_ = store.instructions
    n_val = 0
    for d in store.datasets:
        train, val = set(store.queries(d["name"]).tolist()), set(store.queries(d["name"], "val").tolist())
        assert not train & val and train | val == set(full.queries(d["name"]).tolist())
        assert d["n_val"] == len(val) and d["n_queries"] == len(train)
        contexts = {int(c) for q in train for c in ins_[q]["context_index"]}
        held_contexts = {int(c) for q in val for c in ins_[q]["context_index"]}
        assert not contexts & (val | held_contexts)  # no held-out record is in a training episode, even as context
        n_val += len(val)
    assert n_val > 0 and store.val_fraction == 0.3
    with pytest.raises(ValueError, match="no validation split.*--val-fraction"):
        full.queries(full.datasets[0]["name"], "val")
    # The validation pass: each held-out query exactly once (padded rows supervise nothing), on every host count.
    cfg = dataclasses.replace(CFG, split="val", once=True, batch_size=2)
    texts = [demo_tokenizer.decode(b["input_ids"][r]) for b in loader.make_loader(store, demo_tokenizer, cfg)
             for r in range(2) if (b["labels"][r] != -100).any()]
    assert len(texts) == n_val
    queries = {ins_[q]["instruction"].decode() for d in store.datasets for q in store.queries(d["name"], "val")}
    assert all(any(q.strip() in t for t in texts) for q in queries)
    with pytest.raises(ValueError, match="config hash differs"):  # another fraction is another store
        ingest.build_store(Path(store.manifest["yaml"]), val_store, log=lambda s: None, val_fraction=0.5)


def test_trainer_validates_on_the_held_out_split(val_store, demo_dir, demo_tokenizer):
    import jax

    from otter_jax.train import config as C, data

    c = C.defaults()
    c.data.update(store=str(val_store), tokenizer=str(demo_dir / "tokenizer"), max_seq_len=160, image_size=28,
                  max_media=4, num_frames=8, num_threads=1)
    c.train.update(global_batch_size=2, eval_batches=50)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    batches = data.eval_batches(c, demo_tokenizer, None, batch_sharding(mesh), 700)
    store = Store(val_store)
    n_val = sum(len(store.queries(d["name"], "val")) for d in store.datasets)
    rows = sum(int((np.asarray(b["labels"]) != -100).any(1).sum()) for b in batches)
    assert rows == n_val  # every held-out query once, nothing from the training split
