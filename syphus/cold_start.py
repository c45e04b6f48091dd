"""`syphus cold-start`: bootstrap in-context examples for a new task, then promote the approved ones.

Generate: a few annotations are sent with the system message alone (no examples); the candidate pairs go to a
review YAML with `approved: false`. A person edits the pairs and flips `approved` to true. Promote: approved
candidates are appended to the prompt spec's examples (written to a new spec file, or in place with
--in-place), ready for `syphus run`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from syphus.dispatch import Gen, Mode, journaled_run
from syphus.engine import Endpoint
from syphus.generate import plan
from syphus.mimicit import atomic_write_text
from syphus.parse import parse_pairs
from syphus.prompt import PromptError, PromptSpec


def generate_candidates(spec: PromptSpec, annotations, review_path: str | Path, gen: Gen, ep: Endpoint,
                        n: int = 4, mode: Mode = Mode(), fmt: str | None = None, frames: int | None = None) -> dict:
    review_path = Path(review_path)
    entries = plan(spec, annotations, gen, limit=n, with_examples=False, fmt=fmt,
                   **({"frames": frames} if frames else {}))
    task = f"cold-start:{spec.code}"
    with journaled_run(review_path.parent, task, entries, ep, mode) as (journal, _):
        candidates = []
        wanted = {e[0] for e in entries}
        for item_id, meta, status, response, finish, error in journal.items(task):
            if item_id not in wanted:
                continue
            pairs, reason = parse_pairs(response, finish) if status == "done" else (None, error)
            cand = {"item_id": item_id, "approved": False, "user": meta["query"], "pairs": pairs or []}
            if reason:
                cand["problem"] = reason
                cand["raw"] = response
            candidates.append(cand)
    doc = {"task": spec.code, "prompt": str(spec.path), "candidates": candidates}
    atomic_write_text(review_path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110))
    return {"candidates": len(candidates), "with_problems": sum("problem" in c for c in candidates),
            "review_file": str(review_path)}


def promote(review_path: str | Path, spec: PromptSpec, out_path: str | Path) -> int:
    """Append approved candidates to the spec's examples and write it to out_path; returns how many."""
    doc = yaml.safe_load(Path(review_path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list):
        raise PromptError(f"{review_path}: not a cold-start review file (no 'candidates' list)")
    if doc.get("task") != spec.code:
        raise PromptError(f"{review_path}: review is for task {doc.get('task')!r}, spec is {spec.code!r}")
    added = 0
    known = {ex["user"].strip() for ex in spec.examples}
    for c in doc["candidates"]:
        if c.get("approved") is not True:
            continue
        pairs = c.get("pairs") or []
        if not pairs or not all(p.get("question") and p.get("answer") for p in pairs):
            raise PromptError(f"{review_path}: approved candidate {c.get('item_id')!r} has no complete pairs")
        if c["user"].strip() in known:
            continue
        spec.examples.append({"user": c["user"].strip() + "\n", "pairs": [
            {"question": p["question"], "answer": p["answer"]} for p in pairs]})
        known.add(c["user"].strip())
        added += 1
    spec.dump(out_path)
    PromptSpec.load(out_path)  # the result must load, or the error names the file now
    return added
