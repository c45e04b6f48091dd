"""`syphus mm-instruct`: the MM-Instruct recipe, as five journaled stages over one journal.

1 augment    seed instructions -> many new, varied instructions (writing, analysis, planning, not only QA)
2 summarize  exact duplicates dropped locally, near-duplicates condensed by the LLM in chunks
3 match      each image gets a few candidate instructions; the LLM keeps those its detailed caption can serve
4 answer     an (open) model answers from the caption alone, behind its own OpenAI-compatible endpoint
5 filter     a judge keeps answers that are coherent and faithful to the caption
Every rejection is written to mmi_rejected.jsonl with its stage and reason. Each stage is resumable: a killed
run re-pays nothing that finished. Output: MMI_instructions.json (MIMIC-IT), one image id per pair.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from syphus.dispatch import Gen, Mode, dispatch, dry_run
from syphus.engine import Endpoint
from syphus.generate import jsonl
from syphus.journal import JOURNAL_NAME
from syphus.journal import Journal
from syphus.mimicit import atomic_write_text, write_instructions
from syphus.parse import extract_json, json_instruction
from syphus.readers import AnnotationError, load_records

LIST_SCHEMA = {"name": "instruction_list", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["instructions"],
    "properties": {"instructions": {"type": "array", "items": {"type": "string"}}}}}
VERDICT_SCHEMA = {"name": "verdict", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["ok", "reason"],
    "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}}}}

AUGMENT = ("You help build a diverse instruction set for a vision-language assistant. Each instruction is "
           "something a user could ask about a single photo. From the examples given, write {n} NEW instructions "
           "that differ in task type (creative writing, description, reasoning, planning, comparison with common "
           "knowledge, advice, summarisation) and in wording. Keep each one self-contained and answerable from a "
           "photo; do not number them.\n")
SUMMARIZE = ("You curate an instruction set for a vision-language assistant. The user lists instructions, one per "
             "line starting with '-'. Merge instructions that ask for essentially the same thing, keeping the "
             "clearest wording, and drop ones that cannot be answered from a photo. Return the resulting list.\n")
MATCH = ("You decide whether an instruction suits a photo. You cannot see the photo; you get its detailed "
         "description. Answer ok=true only if the instruction makes sense for this photo and a good answer can be "
         "given from what the photo shows; give a one-sentence reason.\n")
ANSWER = ("You are a helpful vision-language assistant. You are given a detailed description of a photo in place "
          "of the photo itself. Follow the user's instruction about the photo as if you were looking at it: be "
          "specific, stay faithful to what the description supports, and never mention the description.")
FILTER = ("You review training data for a vision-language assistant. Given a photo's detailed description, an "
          "instruction and a response, answer ok=true only if the response follows the instruction, is coherent, "
          "and claims nothing about the photo that the description does not support; give a one-sentence "
          "reason.\n")


def _norm(s: str) -> str:
    return re.sub(r"[^\w]+", " ", s.lower()).strip()


def dedupe(items) -> list[str]:
    seen, out = set(), []
    for s in items:
        s = s.strip()
        if s and _norm(s) not in seen:
            seen.add(_norm(s))
            out.append(s)
    return out


def _h(*parts) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


class MMInstruct:
    def __init__(self, out_dir: str | Path, gen: Gen, ep: Endpoint, answer_gen: Gen, answer_ep: Endpoint,
                 mode: Mode = Mode(), dry: bool = False):
        self.out_dir, self.gen, self.ep, self.agen, self.aep, self.mode, self.dry = (
            Path(out_dir), gen, ep, answer_gen, answer_ep, mode, dry)
        self.rejected: list[dict] = []
        self.journal = None

    def _stage(self, task: str, entries, ep: Endpoint) -> dict[str, tuple]:
        """Register, send what is outstanding, return item_id -> (status, response, finish, error)."""
        if self.dry:
            dry_run([(e[0], e[2]) for e in entries], ep, show=1)
            return {}
        self.journal.add_many(task, entries)
        dispatch(self.journal, task, ep, self.mode)
        wanted = {e[0] for e in entries}
        return {i: (s, r, f, e) for i, _, s, r, f, e in self.journal.items(task) if i in wanted}

    def _json_results(self, stage: str, results: dict, check) -> dict[str, object]:
        good = {}
        for item_id, (status, response, finish, error) in results.items():
            if status != "done":
                self.rejected.append({"stage": stage, "item_id": item_id, "reason": error or status})
                continue
            try:
                if finish == "length":
                    raise ValueError("truncated by the model (finish_reason=length)")
                good[item_id] = check(extract_json(response))
            except (ValueError, KeyError, TypeError) as e:
                self.rejected.append({"stage": stage, "item_id": item_id, "reason": f"invalid response: {e}",
                                      "raw": response})
        return good

    @staticmethod
    def _list(obj) -> list[str]:
        items = obj["instructions"]
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError("'instructions' is not a list of strings")
        return items

    @staticmethod
    def _verdict(obj) -> tuple[bool, str]:
        if not isinstance(obj.get("ok"), bool):
            raise ValueError("'ok' is not a boolean")
        return obj["ok"], str(obj.get("reason", ""))

    def _sys(self, text: str, schema: dict) -> dict:
        return {"role": "system", "content": text + json_instruction(schema)}

    def run(self, seeds: list[str], captions: dict[str, str], new_per_chunk: int = 8, chunk: int = 5,
            candidates: int = 4, summarize_chunk: int = 20) -> dict:
        if not self.dry:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.journal = Journal(self.out_dir / JOURNAL_NAME)
        try:
            return self._run(dedupe(seeds), captions, new_per_chunk, chunk, candidates, summarize_chunk)
        finally:
            if self.journal:
                self.journal.close()

    def _run(self, seeds, captions, new_per_chunk, chunk, candidates, summarize_chunk) -> dict:
        # 1 augment
        groups = [seeds[i: i + chunk] for i in range(0, len(seeds), chunk)]
        entries = [(f"aug-{_h(*g)}", n, self.gen.body(
            [self._sys(AUGMENT.format(n=new_per_chunk), LIST_SCHEMA),
             {"role": "user", "content": "Examples:\n" + "\n".join(f"- {s}" for s in g)}], LIST_SCHEMA), {})
            for n, g in enumerate(groups)]
        res = self._json_results("augment", self._stage("mmi:augment", entries, self.ep), self._list)
        pool = dedupe(seeds + [s for e in entries for s in res.get(e[0], [])])
        # 2 summarize
        groups = [pool[i: i + summarize_chunk] for i in range(0, len(pool), summarize_chunk)]
        entries = [(f"sum-{_h(*g)}", n, self.gen.body(
            [self._sys(SUMMARIZE, LIST_SCHEMA), {"role": "user", "content": "\n".join(f"- {s}" for s in g)}],
            LIST_SCHEMA), {"fallback": g}) for n, g in enumerate(groups)]
        res = self._json_results("summarize", self._stage("mmi:summarize", entries, self.ep), self._list)
        # a chunk whose condensation failed keeps its instructions rather than losing them
        pool = dedupe(s for e in entries for s in res.get(e[0], e[3]["fallback"]))
        # 3 match
        entries, pairs = [], {}
        for image_id in sorted(captions):
            rng = random.Random(_h(image_id))
            for ins in rng.sample(pool, min(candidates, len(pool))):
                item = f"{image_id}|{_h(image_id, ins)}"
                pairs[item] = (image_id, ins)
                entries.append((item, len(entries), self.gen.body(
                    [self._sys(MATCH, VERDICT_SCHEMA),
                     {"role": "user", "content": f"Photo description:\n{captions[image_id]}\n\nInstruction: {ins}"}],
                    VERDICT_SCHEMA, temperature=0.0), {}))
        res = self._json_results("match", self._stage("mmi:match", entries, self.ep), self._verdict)
        matched = [e[0] for e in entries if e[0] in res and res[e[0]][0]]
        self.rejected += [{"stage": "match", "item_id": i, "reason": res[i][1]} for i in res if not res[i][0]]
        # 4 answer (open model, caption-grounded, plain text)
        entries = [(i, n, self.agen.body([{"role": "system", "content": ANSWER}, {"role": "user", "content":
                   f"Photo description:\n{captions[pairs[i][0]]}\n\nInstruction: {pairs[i][1]}"}]), {})
                   for n, i in enumerate(matched)]
        answers = {}
        for item, (status, response, finish, error) in self._stage("mmi:answer", entries, self.aep).items():
            reason = error if status != "done" else ("truncated by the model (finish_reason=length)"
                                                     if finish == "length" else
                                                     "empty answer" if not (response or "").strip() else None)
            if reason:
                self.rejected.append({"stage": "answer", "item_id": item, "reason": reason})
            else:
                answers[item] = response.strip()
        # 5 filter
        entries = [(i, n, self.gen.body([self._sys(FILTER, VERDICT_SCHEMA), {"role": "user", "content":
                   f"Photo description:\n{captions[pairs[i][0]]}\n\nInstruction: {pairs[i][1]}\n\n"
                   f"Response: {answers[i]}"}], VERDICT_SCHEMA, temperature=0.0), {})
                   for n, i in enumerate(i for i in matched if i in answers)]
        res = self._json_results("filter", self._stage("mmi:filter", entries, self.ep), self._verdict)
        kept = [e[0] for e in entries if e[0] in res and res[e[0]][0]]
        self.rejected += [{"stage": "filter", "item_id": i, "reason": res[i][1]} for i in res if not res[i][0]]
        if self.dry:
            return {"dry_run": True}
        data, by_image = {}, {}
        for n, item in enumerate(kept, 1):
            ins_id = f"MMI_INS_{n:05d}"
            image_id, ins = pairs[item]
            by_image.setdefault(image_id, []).append(ins_id)
            data[ins_id] = {"instruction": ins, "answer": answers[item], "image_ids": [image_id]}
        for ins_id, rec in data.items():
            rec["rel_ins_ids"] = [i for i in by_image[rec["image_ids"][0]] if i != ins_id]
        write_instructions(self.out_dir / "MMI_instructions.json", data)
        jsonl(self.out_dir / "mmi_rejected.jsonl", self.rejected)
        summary = {"seeds": len(seeds), "pool": len(pool), "candidates": len(pairs), "matched": len(matched),
                   "answered": len(answers), "kept": len(kept),
                   "accounting": {k: v for k, v in self.journal.accounting().items() if k.startswith("mmi:")}}
        atomic_write_text(self.out_dir / "mmi_meta.json", json.dumps(summary, indent=1))
        return summary


def load_captions(path: str | Path) -> dict[str, str]:
    """{image_id: caption} from JSON Lines / a JSON list of {image_id, caption}."""
    out = {}
    for n, rec in load_records(path):
        if not isinstance(rec, dict) or not rec.get("image_id") or not rec.get("caption"):
            raise AnnotationError(f"{path}:{n}: expected {{image_id, caption}}")
        out[str(rec["image_id"])] = rec["caption"]
    return out
