"""Resumable, idempotent conversion of MIMIC-IT files (data YAML) into an episode store.

Why two phases: TFDS writes a split atomically (temp folder + rename), so a killed build restarts from zero. The
slow part -- streaming multi-GB base64 images -- is therefore done first into staging chunks of a fixed number of
source items, each committed atomically with a small JSON sidecar; a rerun skips committed chunks. The TFDS builds
that follow only copy staged bytes (images) or text (instructions) and are redone whole if killed. A finished store
has `manifest.json`; rerunning on it is a no-op, and a store folder refuses a different data YAML.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from otter_jax.data import mimicit, store as store_lib
from otter_jax.data.bad_input import BadRecord, SkipCounter

_SEP = b"\x00"  # staged image record = utf-8 id + NUL + encoded image bytes


def _atomic_write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _config_hash(specs: list[mimicit.DatasetSpec], val_fraction: float = 0.0) -> str:
    """Identity of a build: the resolved dataset specs plus each source file's size and mtime (and the validation
    fraction when there is one)."""
    h = hashlib.sha256()
    if val_fraction:
        h.update(f"val_fraction={val_fraction!r}".encode())
    for spec in specs:
        h.update(json.dumps(spec.__dict__, sort_keys=True).encode())
        for p in (spec.mimicit_path, spec.images_path, spec.train_config_path, spec.tfrecord_path):
            if p:
                st = os.stat(p)
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ---- phase 1: stage images -----------------------------------------------------------------------------------

def _image_sources(specs) -> list[tuple[str, str, str]]:
    """(staging name, kind, path) for every distinct images file / TFRecord (datasets often share one)."""
    out, seen = [], set()
    for spec in specs:
        for kind, path in (("images", spec.images_path), ("tfrecord", spec.tfrecord_path)):
            if path and path not in seen:
                seen.add(path)
                out.append((f"{len(out):03d}_{spec.name}_{kind}", kind, path))
    return out


def _image_items(kind: str, src: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(image id, thunk -> decoded bytes) for every image item of a source, in source order.

    Decoding is deferred so that resuming can skip committed items without decoding them.
    """
    if kind == "images":
        for image_id, b64 in mimicit.iter_images(src):
            yield image_id, (lambda b=b64, i=image_id: mimicit.decode_base64_image(b, i, src))
    else:
        from syphus import schema

        for data in schema.read_tfrecord_bytes(src):
            try:
                rec = schema.InstructionRecord.from_example_bytes(data)
            except (schema.SchemaError, UnicodeDecodeError):
                continue  # counted once, when instructions are read
            for image_id, image in zip(rec.image_ids, rec.images):
                yield image_id, (lambda b=image: b)


def _stage_images(name: str, kind: str, src: str, stage_dir: Path, counter: SkipCounter, chunk_items: int,
                  log) -> None:
    from array_record.python import array_record_module as ar

    done = stage_dir / "done.json"
    if done.exists():
        counter.merge(json.loads(done.read_text())["skipped"])
        log(f"[images] {name}: already staged")
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    committed = 0
    while (stage_dir / f"chunk_{committed:06d}.json").exists():
        committed += 1
    skip_items = committed * chunk_items
    if committed:
        log(f"[images] {name}: resuming after {committed} committed chunks ({skip_items} items)")
    chunk, n_items, t0 = committed, skip_items, time.time()
    writer, local, kept, nbytes = None, SkipCounter(counter.strict, "images"), 0, 0

    def commit():
        nonlocal writer, chunk, local, kept, nbytes
        stem = f"chunk_{chunk:06d}"
        writer.close()
        os.replace(stage_dir / f"{stem}.array_record.tmp", stage_dir / f"{stem}.array_record")
        _atomic_write_json(stage_dir / f"{stem}.json", {"kept": kept, "skipped": dict(local.counts),
                                                         "examples": local.examples})
        counter.merge(local.counts)
        counter.examples.update({k: v for k, v in local.examples.items() if k not in counter.examples})
        rate = (n_items - skip_items) / max(time.time() - t0, 1e-9)
        log(f"[images] {name}: {n_items} items staged ({nbytes / 2**20:.1f} MiB this chunk, {rate:.0f} items/s)")
        writer, chunk, local, kept, nbytes = None, chunk + 1, SkipCounter(counter.strict, "images"), 0, 0

    for i, (image_id, get_bytes) in enumerate(_image_items(kind, src)):
        if i < skip_items:
            continue
        if writer is None:
            writer = ar.ArrayRecordWriter(str(stage_dir / f"chunk_{chunk:06d}.array_record.tmp"), "group_size:1")
        try:
            data = get_bytes()
            mimicit.check_image_header(data, image_id, src)
            writer.write(image_id.encode("utf-8") + _SEP + data)
            kept, nbytes = kept + 1, nbytes + len(data)
        except BadRecord as e:
            local.skip(e)
        n_items = i + 1
        if n_items % chunk_items == 0:
            commit()
    if writer is not None:
        commit()
    _atomic_write_json(done, {"chunks": chunk, "items": n_items, "skipped": _sum_chunk_skips(stage_dir)})
    log(f"[images] {name}: staged {n_items} items in {chunk} chunks")


def _sum_chunk_skips(stage_dir: Path) -> dict:
    total: dict[str, int] = {}
    for p in sorted(stage_dir.glob("chunk_*.json")):
        for k, v in json.loads(p.read_text())["skipped"].items():
            total[k] = total.get(k, 0) + v
    return total


def _staged_images(stage_root: Path, specs) -> Iterator[tuple[str, bytes, str]]:
    from array_record.python import array_record_module as ar

    for name, _, src in _image_sources(specs):
        d = stage_root / name
        for p in sorted(d.glob("chunk_*.array_record")):
            reader = ar.ArrayRecordReader(str(p))
            try:
                for i in range(reader.num_records()):
                    raw = reader.read([i])[0]
                    image_id, data = raw.split(_SEP, 1)
                    yield image_id.decode("utf-8"), data, src
            finally:
                reader.close()


# ---- phase 2/3: TFDS builds -----------------------------------------------------------------------------------

def _clean_incomplete(tfds_dir: Path, name: str) -> None:
    d = tfds_dir / name
    if d.exists():
        for p in d.iterdir():
            if p.name.startswith("incomplete.") or ".incomplete" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def _build_images(out: Path, specs, counter: SkipCounter, chunk_items: int, log) -> None:
    """Stage then write the images store; its report file marks it done (and carries the skip counts)."""
    index_base, report = out / "index" / "images", out / "index" / "images_build.json"
    if report.exists():
        done = json.loads(report.read_text())
        counter.merge(done["skipped"])
        counter.examples.update({k: v for k, v in done["examples"].items() if k not in counter.examples})
        log("[images] store already built")
        return
    for name, kind, src in _image_sources(specs):
        _stage_images(name, kind, src, out / "staging" / "images" / name, counter, chunk_items, log)
    ids: list[str] = []
    digests: dict[str, bytes] = {}
    local = SkipCounter(counter.strict, "images")

    def generate():
        ids.clear(), digests.clear()
        local.counts.clear()
        for image_id, data, src in _staged_images(out / "staging" / "images", specs):
            digest = hashlib.blake2b(data, digest_size=8).digest()
            if image_id in digests:
                if digests[image_id] != digest:
                    local.skip(BadRecord("duplicate_id", image_id, src, "same image id with different bytes; "
                                         "keeping the first"))
                continue
            digests[image_id] = digest
            ids.append(image_id)
            yield len(ids) - 1, {"id": image_id, "image": data, "source": src}

    _clean_incomplete(out / "tfds", "mimicit_images")
    b = store_lib.builder("images", out / "tfds", generate)
    if b.is_prepared():
        # Killed after TFDS finished but before the index was written: recover ids by a scan.
        src = b.as_data_source("train")
        ids = [src[i]["id"].decode("utf-8") for i in range(len(src))]
    else:
        log(f"[images] writing ArrayRecord store under {out / 'tfds'}")
        b.download_and_prepare()
    store_lib.write_id_index(index_base, ids)
    counter.merge(local.counts)
    counter.examples.update({k: v for k, v in local.examples.items() if k not in counter.examples})
    _atomic_write_json(report, {"n": len(ids), "skipped": dict(counter.counts), "examples": counter.examples})
    shutil.rmtree(out / "staging", ignore_errors=True)  # the store now holds every staged byte
    log(f"[images] {len(ids)} unique images in the store")


def _text(value, field: str, rec_id: str, file: str) -> str:
    if not isinstance(value, str):
        raise BadRecord("bad_record", rec_id, file, f"{field} is {type(value).__name__}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRecord("bad_utf8", rec_id, file, f"{field}: {e}") from None
    if not value.strip():
        raise BadRecord("empty_text", rec_id, file, f"empty {field}")
    return value


def _read_spec_instructions(spec, counter: SkipCounter) -> Iterator[dict]:
    """Normalised instruction dicts of one dataset (context = train config, else rel_ins_ids)."""
    if spec.mimicit_path:
        file = spec.mimicit_path
        data = mimicit.read_instructions(file)
        config = mimicit.read_train_config(spec.train_config_path) if spec.train_config_path else None
        if config is not None:
            for q in config:
                if q not in data:
                    counter.skip(BadRecord("dangling_context", q, spec.train_config_path,
                                           "train-config query is not in the instructions file"))
        for ins_id, entry in data.items():
            try:
                if not isinstance(entry, dict):
                    raise BadRecord("bad_record", ins_id, file, "entry is not an object")
                image_ids = entry.get("image_ids") or []
                rel = entry.get("rel_ins_ids") or []
                yield {
                    "id": ins_id, "dataset": spec.name, "group": spec.group, "source": file,
                    "instruction": _text(entry.get("instruction"), "instruction", ins_id, file),
                    "answer": _text(entry.get("answer"), "answer", ins_id, file),
                    "image_ids": [str(x) for x in image_ids],
                    "context_ids": [str(x) for x in (config.get(ins_id, []) if config is not None else rel)],
                    "is_query": config is None or ins_id in config, "task": spec.name, "lang": "en",
                }
            except BadRecord as e:
                counter.skip(e)
    if spec.tfrecord_path:
        from syphus import schema

        file = spec.tfrecord_path
        for n, data in enumerate(schema.read_tfrecord_bytes(file)):
            try:
                try:
                    rec = schema.InstructionRecord.from_example_bytes(data)
                except UnicodeDecodeError as e:
                    ex = schema.Example.FromString(data)
                    rid = (list(ex.features.feature["ins_id"].bytes_list.value[:1]) or [b"#%d" % n])[0]
                    raise BadRecord("bad_utf8", rid.decode("utf-8", "replace"), file, str(e)) from None
                except schema.SchemaError as e:
                    raise BadRecord("bad_record", f"#{n}", file, str(e)) from None
                if rec.group != spec.group:
                    raise BadRecord("bad_record", rec.ins_id, file,
                                    f"group {rec.group} but the data YAML lists this file under {spec.group}")
                yield {
                    "id": rec.ins_id, "dataset": spec.name, "group": spec.group, "source": file,
                    "instruction": _text(rec.instruction, "instruction", rec.ins_id, file),
                    "answer": _text(rec.answer, "answer", rec.ins_id, file),
                    "image_ids": list(rec.image_ids), "context_ids": list(rec.in_context_ids or rec.rel_ins_ids),
                    "is_query": True, "task": rec.task or spec.name, "lang": rec.lang or "en",
                }
            except BadRecord as e:
                counter.skip(e)


def held_out(record_id: str, fraction: float) -> bool:
    """A stable draw per id (blake2b of the id): a record stays held out whatever else the store holds."""
    h = int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2.0**64


def split_queries(records: dict[tuple[str, str], dict], fraction: float) -> set[tuple[str, str]]:
    """Keys (dataset, id) of the validation queries. Records linked as in-context examples (a conversation, an
    in-context set) form one group held out or kept whole, drawn by its smallest id with probability `fraction`:
    so no held-out record is ever part of a training episode, as query or as context. By id, so an instructions
    file listed under several datasets holds the same records out in all of them."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for k, r in records.items():
        if r["is_query"]:
            for c in r["context_ids"]:
                a, b = find(k[1]), find(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the group's smallest id
    return {k for k, r in records.items() if r["is_query"] and held_out(find(k[1]), fraction)}


def _build_instructions(out: Path, specs, counter: SkipCounter, log, val_fraction: float = 0.0
                        ) -> tuple[dict, dict]:
    images = store_lib.IdIndex(out / "index" / "images")
    # Keyed by (dataset, id): ids are unique within a dataset, not across them, since upstream YAMLs list the
    # same instructions file under several groups (e.g. IMAGE_TEXT and, with a train config, IN_CONTEXT).
    records: dict[tuple[str, str], dict] = {}
    for spec in specs:
        n0 = len(records)
        for rec in _read_spec_instructions(spec, counter):
            key = (spec.name, rec["id"])
            if key in records:
                counter.skip(BadRecord("duplicate_id", rec["id"], rec["source"],
                                       f"instruction id already read from {records[key]['source']}"))
                continue
            try:
                if spec.group != "TEXT_ONLY" and not rec["image_ids"]:
                    raise BadRecord("missing_image", rec["id"], rec["source"], f"no image_ids in group {spec.group}")
                index = [images.get(i) for i in rec["image_ids"]]
                missing = [i for i, x in zip(rec["image_ids"], index) if x is None]
                if missing and spec.group != "TEXT_ONLY":
                    raise BadRecord("missing_image", rec["id"], rec["source"], f"image ids not in any images file: "
                                    f"{missing[:3]}")
                rec["image_index"] = [] if spec.group == "TEXT_ONLY" else index
                rec["context_ids"] = [c for c in rec["context_ids"] if c != rec["id"]]
                records[key] = rec
            except BadRecord as e:
                counter.skip(e)
        log(f"[instructions] {spec.name} ({spec.group}): read {len(records) - n0} records")
    # Drop records whose in-context examples are gone, until nothing changes (a dropped record may be context).
    while True:
        dangling = [(k, r) for k, r in records.items()
                    if any((k[0], c) not in records for c in r["context_ids"])]
        if not dangling:
            break
        for k, r in dangling:
            gone = [c for c in r["context_ids"] if (k[0], c) not in records]
            counter.skip(BadRecord("dangling_context", r["id"], r["source"], f"in-context ids not found: {gone[:3]}"))
            del records[k]
    order = list(records)
    position = {key: i for i, key in enumerate(order)}

    def generate():
        for i, rid in enumerate(order):
            r = records[rid]
            yield i, {k: r[k] for k in ("id", "dataset", "group", "instruction", "answer", "image_ids", "image_index",
                                        "context_ids", "task", "lang", "source")} | {
                "context_index": [position[(rid[0], c)] for c in r["context_ids"]]}

    _clean_incomplete(out / "tfds", "mimicit_instructions")
    log(f"[instructions] writing {len(order)} records")
    store_lib.builder("instructions", out / "tfds", generate).download_and_prepare()
    # an id listed by several datasets resolves to its first dataset's record (the same file gives the same text)
    store_lib.write_id_index(out / "index" / "instructions", [rid for _, rid in order])
    stats = {}
    val = split_queries(records, val_fraction) if val_fraction > 0 else set()
    for spec in specs:
        queries = [r for r in order if records[r]["dataset"] == spec.name and records[r]["is_query"]]
        q = np.array([position[r] for r in queries if r not in val], dtype=np.int64)
        np.save(out / "index" / f"queries_{spec.name}.npy", q)
        stats[spec.name] = {"n_instructions": sum(1 for r in order if records[r]["dataset"] == spec.name),
                            "n_queries": int(len(q))}
        if val_fraction > 0:
            v = np.array([position[r] for r in queries if r in val], dtype=np.int64)
            np.save(out / "index" / f"queries_{spec.name}.val.npy", v)
            stats[spec.name]["n_val"] = int(len(v))
    return stats, {"n_instructions": len(order), "n_images": len(images)}


def build_store(yaml_path: str | os.PathLike, out: str | os.PathLike, strict: bool = False,
                chunk_items: int = 1000, log: Callable[[str], None] = print, val_fraction: float = 0.0) -> dict:
    """Convert the datasets of a data YAML into a store at `out`; returns the manifest. Safe to rerun.
    `val_fraction` > 0 holds that share of each dataset's queries out of training (the store's "val" split)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    out = Path(out)
    specs = mimicit.read_data_yaml(yaml_path)
    config_hash = _config_hash(specs, val_fraction)
    manifest_path = out / store_lib.MANIFEST
    build_json = out / "build.json"
    for p in (manifest_path, build_json):
        if p.exists() and json.loads(p.read_text())["config_hash"] != config_hash:
            raise ValueError(f"{out} holds a store built from other inputs (config hash differs from "
                             f"{config_hash}); use another --out or delete it")
    if manifest_path.exists():
        log(f"{out}: store complete, nothing to do")
        return json.loads(manifest_path.read_text())
    (out / "index").mkdir(parents=True, exist_ok=True)
    _atomic_write_json(build_json, {"config_hash": config_hash, "yaml": str(Path(yaml_path).resolve())})
    counter = SkipCounter(strict, "records")
    _build_images(out, specs, counter, chunk_items, log)
    stats, totals = _build_instructions(out, specs, counter, log, val_fraction)
    manifest = {
        "version": store_lib.STORE_VERSION, "config_hash": config_hash, "yaml": str(Path(yaml_path).resolve()),
        "datasets": [{"name": s.name, "group": s.group, "num_samples": s.num_samples,
                      "task_description": s.task_description, **stats[s.name],
                      "sources": [p for p in (s.mimicit_path, s.images_path, s.train_config_path, s.tfrecord_path)
                                  if p]} for s in specs],
        **totals, "skipped": dict(sorted(counter.counts.items())), "skip_examples": counter.examples,
        "val_fraction": val_fraction,
    }
    _atomic_write_json(manifest_path, manifest)
    held = sum(d.get("n_val", 0) for d in stats.values())
    log(f"{out}: {totals['n_instructions']} instructions, {totals['n_images']} images"
        + (f", {held} validation queries held out" if val_fraction else "") + f"; {counter.report()}")
    return manifest
