"""Yes/no sets: MME's release folder and POPE's JSONL files.

MME: one folder per task; either `<task>/images/*.jpg` + `<task>/questions_answers_YN/*.txt`, or image and txt
side by side in `<task>/`. Each txt holds one "question<TAB>Yes|No" line per question (two per image).
POPE: `coco_pope_{random,popular,adversarial}.json`, one {"question_id", "image", "text", "label"} per line.
"""
from __future__ import annotations

import os

from etils import epath

from otter_jax.evaluate.example import DataError, Example, TaskData, read_file_bytes
from otter_jax.evaluate.formats.common import limit, load_jsonl, need
from otter_jax.evaluate.yesno import MME_COGNITION, MME_PERCEPTION

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def _mme_task(root: str, task: str) -> list[Example]:
    base = os.path.join(root, task)
    qa_dir = os.path.join(base, "questions_answers_YN")
    img_dir = os.path.join(base, "images")
    if not epath.Path(qa_dir).is_dir():
        qa_dir = img_dir = base
    out = []
    # one listing per folder (a remote file system answers each exists() with a request)
    present = {p.name for p in epath.Path(img_dir).iterdir()} if epath.Path(img_dir).is_dir() else set()
    for name in sorted(p.name for p in epath.Path(qa_dir).iterdir()):
        if not name.endswith(".txt"):
            continue
        stem = name[:-4]
        image = next((os.path.join(img_dir, stem + e) for e in IMAGE_EXTS if stem + e in present), None)
        if image is None:
            raise DataError(f"{os.path.join(qa_dir, name)}: no image {stem}.jpg/.png in {img_dir}")
        text = epath.Path(os.path.join(qa_dir, name)).read_text(encoding="utf-8")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        for k, line in enumerate(lines):
            q, sep, a = line.rpartition("\t")
            if not sep or a.strip().lower() not in ("yes", "no"):
                raise DataError(f"{os.path.join(qa_dir, name)}:{k + 1}: expected 'question<TAB>Yes|No', got {line!r}")
            out.append(Example(id=f"{task}/{stem}/{k}", images=(image,), question=q.strip(), answers=(a.strip(),),
                               meta={"task": task, "image": stem}))
    return out


def read_mme(root: str, tasks: tuple[str, ...] = (), max_examples: int = -1) -> TaskData:
    """All task folders present under `root` (or the listed ones); max_examples applies per task."""
    if not epath.Path(root).is_dir():
        raise DataError(f"{root}: MME folder does not exist")
    known = MME_PERCEPTION + MME_COGNITION
    names = list(tasks) or [t for t in known if epath.Path(os.path.join(root, t)).is_dir()]
    if not names:
        raise DataError(f"{root}: no MME task folders (expected some of {', '.join(known)})")
    examples = []
    for task in names:
        if not epath.Path(os.path.join(root, task)).is_dir():
            raise DataError(f"{root}: no folder for MME task {task!r}")
        rows = _mme_task(root, task)
        if max_examples is not None and max_examples >= 0:  # keep whole images (acc+ needs both questions)
            keep = {r.meta["image"] for r in rows[:max_examples]}
            rows = [r for r in rows if r.meta["image"] in keep]
        examples += rows
    return TaskData(examples, [], read_file_bytes, root)


def read_pope(files: dict[str, str], images_root: str, max_examples: int = -1) -> TaskData:
    """`files`: split name (random / popular / adversarial) -> JSONL path."""
    examples = []
    for split, path in files.items():
        rows = limit(load_jsonl(path), max_examples)
        for n, r in enumerate(rows):
            qid = r.get("question_id", n)
            label = str(need(r, "label", path, qid)).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"{path}: question {qid!r}: label {label!r} is not yes/no")
            examples.append(Example(id=f"{split}/{qid}", images=(os.path.join(images_root, need(r, "image", path, qid)),),
                                    question=str(need(r, "text", path, qid)).strip(), answers=(label,),
                                    meta={"split": split}))
    if not examples:
        raise DataError(f"POPE: no questions in {', '.join(files.values()) or '(no files given)'}")
    return TaskData(examples, [], read_file_bytes, ", ".join(files.values()))
