"""`syphus run`: visual annotations -> instruction-response pairs in MIMIC-IT format, via the journal.

Outputs in the run folder are rebuilt from the journal after every run (never appended), so they hold each
pair exactly once however often the run was killed and resumed:
  <CODE>_instructions.json  MIMIC-IT instructions; ids <CODE>_INS_00001.. in annotation order, rel_ins_ids =
                            the other pairs generated from the same annotation
  <CODE>_invalid.jsonl      answered but unusable responses, with the reason and the raw text
  <CODE>_failed.jsonl       requests that never got an answer, with the reason of the last attempt
  <CODE>_meta.json          counts, tokens, cost, model and timing
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from syphus.dispatch import Gen, Mode, dry_run, journaled_run
from syphus.engine import Endpoint
from syphus.journal import Journal
from syphus.mimicit import atomic_write_text, write_instructions
from syphus.parse import QA_SCHEMA, parse_pairs
from syphus.prompt import PromptSpec
from syphus.readers import read_annotations
from syphus.sources import DEFAULT_FRAMES



def plan(spec: PromptSpec, annotations, gen: Gen, limit: int | None = None,
         with_examples: bool = True, fmt: str | None = None, frames: int = DEFAULT_FRAMES):
    """(item_id, seq, body, meta) for each annotation; `annotations` is one path or several (public formats)."""
    queries = read_annotations(annotations, spec.reader, spec.code, fmt, frames)[:limit]
    as_json = gen.structured
    return [(q.item_id, seq, gen.body(spec.messages(q.text, as_json, with_examples), QA_SCHEMA if as_json else None),
             {"image_ids": q.image_ids, "query": q.text}) for seq, q in enumerate(queries)]


def jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_outputs(journal: Journal, task: str, code: str, out_dir: Path, extra_meta: dict | None = None) -> dict:
    data, invalid, failed, pending = {}, [], [], 0
    n = 0
    for item_id, meta, status, response, finish, error in journal.items(task):
        if status == "pending":
            pending += 1
            continue
        if status == "failed":
            failed.append({"item_id": item_id, "reason": error})
            continue
        pairs, reason = parse_pairs(response, finish)
        if reason:
            invalid.append({"item_id": item_id, "reason": reason, "raw": response})
            continue
        ids = [f"{code}_INS_{n + i + 1:05d}" for i in range(len(pairs))]
        n += len(pairs)
        for ins_id, p in zip(ids, pairs):
            data[ins_id] = {"instruction": p["question"], "answer": p["answer"], "image_ids": meta["image_ids"],
                            "rel_ins_ids": [i for i in ids if i != ins_id]}
    write_instructions(out_dir / f"{code}_instructions.json", data)
    jsonl(out_dir / f"{code}_invalid.jsonl", invalid)
    jsonl(out_dir / f"{code}_failed.jsonl", failed)
    summary = {"task": task, "instructions": len(data), "invalid_responses": len(invalid),
               "failed_requests": len(failed), "pending_requests": pending,
               "accounting": journal.accounting().get(task, {}), **(extra_meta or {})}
    atomic_write_text(out_dir / f"{code}_meta.json", json.dumps(summary, indent=1))
    return summary


def run_task(spec: PromptSpec, annotations, out_dir: str | Path, gen: Gen, ep: Endpoint,
             mode: Mode = Mode(), dry: bool = False, limit: int | None = None, show: int = 3,
             fmt: str | None = None, frames: int = DEFAULT_FRAMES) -> dict:
    entries = plan(spec, annotations, gen, limit, fmt=fmt, frames=frames)
    if dry:
        return dry_run([(e[0], e[2]) for e in entries], ep, show)
    out_dir = Path(out_dir)
    t0 = time.time()
    with journaled_run(out_dir, spec.code, entries, ep, mode) as (journal, sent):
        return write_outputs(journal, spec.code, spec.code, out_dir, {
            "model": gen.model, "base_url": ep.base_url, "prompt": str(spec.path),
            "annotations": [str(p) for p in ([annotations] if isinstance(annotations, (str, Path)) else annotations)],
            "params": {"temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_tokens,
                       "structured": gen.structured, "batch": mode.batch},
            "annotation_format": fmt or "detected", "frames_per_clip": frames,   # `syphus frames` must use the same N
            "this_run": {**sent, "wall_s": round(time.time() - t0, 3)}})
