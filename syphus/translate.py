"""`syphus translate`: an instructions JSON -> one instructions JSON per language, one request per pair.

The instruction goes in <a>...</a> and the answer in <b>...</b>; the model returns
{"a": {lang: text}, "b": {lang: text}} for all languages at once. A reply missing a language is invalid
(kept with its reason), so every output file has exactly the same ids, image_ids and rel_ins_ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from syphus.dispatch import Gen, Mode, dry_run, journaled_run
from syphus.engine import Endpoint
from syphus.generate import jsonl
from syphus.mimicit import atomic_write_text, read_instructions, write_instructions
from syphus.parse import extract_json, json_instruction

LANGS = ("zh", "es", "ja", "de", "fr", "ko", "ar")
LANG_NAMES = {"zh": "Simplified Chinese", "es": "Spanish", "ja": "Japanese", "de": "German", "fr": "French",
              "ko": "Korean", "ar": "Arabic"}


def translation_schema(langs) -> dict:
    per_lang = {"type": "object", "additionalProperties": False, "required": list(langs),
                "properties": {k: {"type": "string"} for k in langs}}
    return {"name": "translation", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["a", "b"],
        "properties": {"a": per_lang, "b": per_lang}}}


def system_message(langs) -> str:
    names = ", ".join(f"{k} ({LANG_NAMES.get(k, k)})" for k in langs)
    return ("You translate training data for a multilingual vision-language assistant. The user message holds an "
            "instruction inside <a></a> and its answer inside <b></b>. Translate both into each of these languages: "
            f"{names}. Keep the meaning, tone and formatting; keep numbers, names and code unchanged; do not add "
            "explanations. Under key 'a' put the instruction translations and under key 'b' the answer "
            "translations, each keyed by language code.\n" + json_instruction(translation_schema(langs)))


def parse_translation(text: str, langs) -> tuple[dict | None, str | None]:
    try:
        obj = extract_json(text)
    except ValueError as e:
        return None, f"not JSON: {e}"
    for part in ("a", "b"):
        block = obj.get(part) if isinstance(obj, dict) else None
        if not isinstance(block, dict):
            return None, f"missing object {part!r}"
        bad = [k for k in langs if not isinstance(block.get(k), str) or not block[k].strip()]
        if bad:
            return None, f"{part!r} lacks translations for {bad}"
    return obj, None


def translate(instructions: str | Path, out_dir: str | Path, gen: Gen, ep: Endpoint, mode: Mode = Mode(),
              langs=LANGS, dry: bool = False, show: int = 3) -> dict:
    data = read_instructions(instructions)
    stem = Path(instructions).stem.removesuffix("_instructions")
    task = f"translate:{stem}"
    system = system_message(langs)
    schema = translation_schema(langs)
    entries = [(ins_id, seq, gen.body([{"role": "system", "content": system},
                                       {"role": "user", "content": f"<a>{r['instruction']}</a>\n<b>{r['answer']}</b>"}],
                                      schema), {})
               for seq, (ins_id, r) in enumerate(data.items())]
    if dry:
        return dry_run([(e[0], e[2]) for e in entries], ep, show)
    out_dir = Path(out_dir)
    with journaled_run(out_dir, task, entries, ep, mode) as (journal, sent):
        per_lang = {k: {} for k in langs}
        invalid, failed = [], []
        for ins_id, _, status, response, finish, error in journal.items(task):
            if ins_id not in data:
                continue
            if status == "failed":
                failed.append({"item_id": ins_id, "reason": error})
                continue
            if status != "done":
                continue
            obj, reason = (None, "truncated by the model (finish_reason=length)") if finish == "length" else \
                parse_translation(response, langs)
            if reason:
                invalid.append({"item_id": ins_id, "reason": reason, "raw": response})
                continue
            src = data[ins_id]
            for k in langs:
                per_lang[k][ins_id] = {"instruction": obj["a"][k].strip(), "answer": obj["b"][k].strip(),
                                       "image_ids": src["image_ids"], "rel_ins_ids": src["rel_ins_ids"]}
        for k in langs:
            write_instructions(out_dir / f"{stem}_{k}_instructions.json", per_lang[k])
        jsonl(out_dir / f"{stem}_translate_invalid.jsonl", invalid)
        jsonl(out_dir / f"{stem}_translate_failed.jsonl", failed)
        summary = {"task": task, "translated": len(per_lang[langs[0]]) if langs else 0, "invalid_responses":
                   len(invalid), "failed_requests": len(failed), "langs": list(langs),
                   "accounting": journal.accounting().get(task, {}), "this_run": sent}
        atomic_write_text(out_dir / f"{stem}_translate_meta.json", json.dumps(summary, indent=1, ensure_ascii=False))
        return summary
