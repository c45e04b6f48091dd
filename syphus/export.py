"""`syphus export`: instructions JSON (+ images, + train config) -> MIMIC-IT bundle or TFRecords.

mimicit: validated instructions JSON and an upstream-style images parquet of exactly the referenced images.
tfrecord: one tf.train.Example per instruction-response pair in the schema of syphus/schema.py, which the
training loader reads; sharded as <out>-00000-of-0000N.tfrecord when --shards > 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from syphus.mimicit import ImageStore, MimicItError, read_instructions, read_train_config, write_images_parquet
from syphus.schema import GROUPS, InstructionRecord, write_tfrecord

VIDEO_TASKS = {"DC", "TVC", "E4D"}


def task_of(ins_id: str) -> str:
    return ins_id.split("_INS_")[0] if "_INS_" in ins_id else ins_id.split("_")[0]


def infer_group(task: str, image_ids: list[str], in_context_ids: list[str]) -> str:
    if not image_ids:
        return "TEXT_ONLY"
    if in_context_ids:
        return "IMAGE_TEXT_IN_CONTEXT"
    return "VIDEO_TEXT" if task in VIDEO_TASKS else "IMAGE_TEXT"


def records(instructions: str | Path, images: str | Path | None = None, train_config: str | Path | None = None,
            group: str | None = None, lang: str = "en", task: str | None = None):
    if group is not None and group not in GROUPS:
        raise MimicItError(f"group {group!r} is not one of {GROUPS}")
    data = read_instructions(instructions)
    cfg = read_train_config(train_config) if train_config else {}
    store = ImageStore(images) if images else None
    for ins_id, rec in data.items():
        ctx = [str(i) for i in cfg.get(ins_id, [])]
        unknown = [i for i in ctx if i not in data]
        if unknown:
            raise MimicItError(f"{train_config}: {ins_id}: in-context ids {unknown[:3]} are not in {instructions}")
        t = task or task_of(ins_id)
        try:
            blobs = [store.get(i) for i in rec["image_ids"]] if store else []
        except MimicItError as e:
            raise MimicItError(f"{instructions}: {ins_id}: {e}") from None
        yield InstructionRecord(ins_id=ins_id, instruction=rec["instruction"], answer=rec["answer"],
                                image_ids=list(rec["image_ids"]), images=blobs,
                                rel_ins_ids=list(rec["rel_ins_ids"]), in_context_ids=ctx, task=t,
                                group=group or infer_group(t, rec["image_ids"], ctx), lang=lang)


def export_tfrecord(out: str | Path, shards: int = 1, **kw) -> dict:
    recs = list(records(**kw))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if shards <= 1:
        return {"records": write_tfrecord(out, recs), "files": [str(out)]}
    stem = str(out.with_suffix(""))
    files = [f"{stem}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    n = sum(write_tfrecord(f, recs[i::shards]) for i, f in enumerate(files))
    return {"records": n, "files": files}


def export_mimicit(instructions: str | Path, out_dir: str | Path, images: str | Path | None = None) -> dict:
    data = read_instructions(instructions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(instructions).stem.removesuffix("_instructions")
    target = out_dir / f"{stem}_instructions.json"
    if Path(instructions).resolve() != target.resolve():
        shutil.copyfile(instructions, target)
    result = {"instructions": len(data), "files": [str(target)]}
    if images:
        ids = {i for rec in data.values() for i in rec["image_ids"]}
        path = out_dir / f"{stem}_images.parquet"
        result["images"] = write_images_parquet(path, ImageStore(images), ids)
        result["files"].append(str(path))
    return result
