"""Multiple-choice sets: MMBench TSV (base64 images inside), ScienceQA (problems.json + pid_splits.json + images
folder), SEED-Bench (SEED-Bench.json + image folder; video questions are skipped and counted)."""
from __future__ import annotations

import base64
import binascii
import csv
import io
import os
import sys

from etils import epath

from otter_jax.evaluate.choice import LETTERS
from otter_jax.evaluate.example import DataError, Example, TaskData, read_file_bytes
from otter_jax.evaluate.formats.common import limit, load_json, need


def _blank(v) -> bool:
    return v is None or str(v).strip() in ("", "nan", "NaN", "None")


def read_mmbench(path: str, max_examples: int = -1) -> TaskData:
    """MMBench's TSV: index, question, hint, A..E, answer (absent in the test split), category, image (base64)."""
    if not epath.Path(path).exists():
        raise DataError(f"{path}: no such file")
    csv.field_size_limit(sys.maxsize)
    images: dict[str, str] = {}
    examples = []
    # bytes decoded by hand: epath's open() takes no newline="" (csv needs quoted line breaks kept as they are)
    with io.StringIO(epath.Path(path).read_bytes().decode("utf-8"), newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        for col in ("index", "question", "image", "A", "B"):
            if col not in (reader.fieldnames or []):
                raise DataError(f"{path}: not an MMBench TSV (no column {col!r})")
        for n, row in enumerate(reader, 2):
            rid = row["index"]
            options = []
            for letter in LETTERS:
                if letter not in row or _blank(row[letter]):
                    break
                options.append(row[letter].strip())
            answer = (row.get("answer") or "").strip()
            if answer and (answer not in LETTERS[:len(options)]):
                raise DataError(f"{path}:{n}: index {rid!r}: answer {answer!r} is not one of the option letters")
            images[f"mmbench:{rid}"] = row["image"]
            hint = "" if _blank(row.get("hint")) else row["hint"].strip()
            examples.append(Example(id=rid, images=(f"mmbench:{rid}",), question=row["question"].strip(),
                                    options=tuple(options), gold=LETTERS.index(answer) if answer else -1,
                                    meta={"hint": hint, "category": row.get("category", ""),
                                          "l2_category": row.get("l2-category", ""), "row": n}))

    def read_image(key: str) -> bytes:
        try:
            return base64.b64decode(images[key], validate=False)
        except (KeyError, binascii.Error) as e:
            raise DataError(f"{path}: image of {key!r} is not valid base64 ({e})") from None

    return TaskData(limit(examples, max_examples), [], read_image, path)


def read_scienceqa(problems: str, images_root: str, split: str = "test", pid_splits: str = "",
                   max_examples: int = -1) -> TaskData:
    data = load_json(problems)
    if not isinstance(data, dict):
        raise DataError(f"{problems}: not a ScienceQA problems file (expected an object keyed by problem id)")
    pids = load_json(pid_splits).get(split) if pid_splits else [k for k, v in data.items() if v.get("split") == split]
    if not pids:
        raise DataError(f"{pid_splits or problems}: no problems in split {split!r}")
    examples = []
    for pid in pids:
        if pid not in data:
            raise DataError(f"{pid_splits}: problem {pid!r} is not in {problems}")
        p = data[pid]
        choices = tuple(str(c) for c in need(p, "choices", problems, pid))
        gold = int(need(p, "answer", problems, pid))
        if not 0 <= gold < len(choices):
            raise DataError(f"{problems}: problem {pid!r}: answer {gold} out of range for {len(choices)} choices")
        image = p.get("image")
        images = (os.path.join(images_root, split, pid, image),) if image else ()
        examples.append(Example(id=str(pid), images=images, question=need(p, "question", problems, pid).strip(),
                                options=choices, gold=gold,
                                meta={"hint": (p.get("hint") or "").strip(), "subject": p.get("subject", ""),
                                      "grade": p.get("grade", "")}))
    return TaskData(limit(examples, max_examples), [], read_file_bytes, problems)


def read_seedbench(path: str, images_root: str, image_pattern: str = "{data_id}", max_examples: int = -1
                   ) -> TaskData:
    data = load_json(path)
    if not isinstance(data, dict) or "questions" not in data:
        raise DataError(f"{path}: not a SEED-Bench file (no 'questions' list)")
    type_names = {v: k for k, v in (data.get("question_type") or {}).items()}
    examples, skipped = [], 0
    for q in data["questions"]:
        qid = need(q, "question_id", path, "?")
        if q.get("data_type", "image") != "image":
            skipped += 1
            continue
        options = tuple(str(need(q, f"choice_{c}", path, qid)).strip() for c in "abcd")
        answer = str(need(q, "answer", path, qid)).strip()
        if answer not in "ABCD" or not answer:
            raise DataError(f"{path}: question {qid!r}: answer {answer!r} is not A-D")
        image = os.path.join(images_root, image_pattern.format(**q))
        examples.append(Example(id=str(qid), images=(image,), question=need(q, "question", path, qid).strip(),
                                options=options, gold="ABCD".index(answer),
                                meta={"category": type_names.get(q.get("question_type_id"),
                                                                 str(q.get("question_type_id", "")))}))
    td = TaskData(limit(examples, max_examples), [], read_file_bytes, path)
    td.skipped = skipped  # type: ignore[attr-defined]
    return td
