"""VQA sets: the VQAv2 question + annotation JSON pair (VQAv2, OK-VQA, and TextVQA / VizWiz as OpenFlamingo ships
them), plus TextVQA's own `{"data": [...]}` file and VizWiz's own list-of-records file (no annotation file)."""
from __future__ import annotations

import os

from otter_jax.evaluate.example import DataError, Example, TaskData, read_file_bytes
from otter_jax.evaluate.formats.common import limit, load_json, need

DEFAULT_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


def _answers(record: dict, path: str, rid) -> tuple[str, ...]:
    raw = need(record, "answers", path, rid)
    answers = tuple(a["answer"] if isinstance(a, dict) else str(a) for a in raw)
    if not answers:
        raise DataError(f"{path}: question {rid!r} has no answers")
    return answers


def _image(pattern: str, images_root: str, fields: dict, path: str, rid) -> str:
    try:
        return os.path.join(images_root, pattern.format(**fields))
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: question {rid!r}: image_pattern {pattern!r} does not fit the record ({e})") from None


def _pair(questions: str, annotations: str, images_root: str, pattern: str) -> list[Example]:
    q = load_json(questions)
    a = load_json(annotations)
    if not isinstance(q, dict) or "questions" not in q:
        raise DataError(f"{questions}: not a VQA question file (no 'questions' list)")
    if not isinstance(a, dict) or "annotations" not in a:
        raise DataError(f"{annotations}: not a VQA annotation file (no 'annotations' list)")
    by_id = {}
    for ann in a["annotations"]:
        by_id[need(ann, "question_id", annotations, "?")] = ann
    out = []
    for rec in q["questions"]:
        qid = need(rec, "question_id", questions, "?")
        if qid not in by_id:
            raise DataError(f"{annotations}: no annotation for question {qid!r} of {questions}")
        ann = by_id[qid]
        fields = {"data_subtype": q.get("data_subtype", ""), **rec}
        out.append(Example(id=str(qid), images=(_image(pattern, images_root, fields, questions, qid),),
                           question=need(rec, "question", questions, qid).strip(),
                           answers=_answers(ann, annotations, qid),
                           meta={"answer_type": ann.get("answer_type", ""),
                                 "question_type": ann.get("question_type", "")}))
    return out


def _single(path: str, images_root: str, pattern: str) -> list[Example]:
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # TextVQA
        rows, pattern = data["data"], pattern or "{image_id}.jpg"
    elif isinstance(data, list):  # VizWiz
        rows, pattern = data, pattern or "{image}"
    else:
        raise DataError(f"{path}: neither a TextVQA ({{'data': [...]}}) nor a VizWiz (list) file; for VQAv2 / OK-VQA "
                        f"give the annotation file as well")
    out = []
    for n, rec in enumerate(rows):
        qid = rec.get("question_id", rec.get("image", n))
        out.append(Example(id=str(qid), images=(_image(pattern, images_root, rec, path, qid),),
                           question=need(rec, "question", path, qid).strip(), answers=_answers(rec, path, qid),
                           meta={"answer_type": rec.get("answer_type", "")}))
    return out


def _read(questions: str, annotations: str, images_root: str, pattern: str) -> list[Example]:
    if annotations:
        return _pair(questions, annotations, images_root, pattern or DEFAULT_PATTERN)
    return _single(questions, images_root, pattern)


def read_vqa(questions: str, annotations: str, images_root: str, image_pattern: str = "",
             train_questions: str = "", train_annotations: str = "", train_images_root: str = "",
             max_examples: int = -1) -> TaskData:
    examples = _read(questions, annotations, images_root, image_pattern)
    pool = (_read(train_questions, train_annotations, train_images_root or images_root, image_pattern)
            if train_questions else [])
    return TaskData(limit(examples, max_examples), pool, read_file_bytes, questions)
