"""Yes/no benchmarks: answer parsing and scores of MME (acc + acc+ per task, Perception / Cognition totals) and POPE
(accuracy, precision, recall, F1, yes-ratio), each following its official evaluation script's rules."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_label(answer: str) -> str:
    """MME: "yes"/"no" if the (lowercased) answer is exactly that or its first 4 characters contain it (yes first),
    else "other" (always wrong)."""
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return a
    head = a[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def pope_label(answer: str) -> str:
    """POPE: "no" if the first sentence (commas removed) contains the word No / no / not, else "yes"."""
    first = answer.split(".")[0] if "." in answer else answer
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def mme_scores(rows: Iterable[dict]) -> dict:
    """rows: {"task", "image", "label" ("yes"/"no"), "prediction"}. Returns per-task acc, acc_plus, score
    (= 100 acc + 100 acc+) and Perception / Cognition totals (sums of task scores, over the tasks present)."""
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        label = r["label"].strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"MME task {r['task']!r} image {r['image']!r}: ground truth {r['label']!r} is not yes/no")
        by_task[r["task"]][r["image"]].append(mme_label(r["prediction"]) == label)
    tasks = {}
    for task, images in sorted(by_task.items()):
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in images.values()) / len(images)
        tasks[task] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus),
                       "questions": len(answers), "images": len(images)}
    out = {"tasks": tasks}
    for name, group in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [t for t in group if t in tasks]
        if present:
            out[name] = sum(tasks[t]["score"] for t in present)
    other = sorted(set(tasks) - set(MME_PERCEPTION) - set(MME_COGNITION))
    if other:
        out["unlisted_tasks"] = other
    return out


def pope_scores(labels: list[str], predictions: list[str]) -> dict:
    """Binary scores with "yes" as the positive class, all in percent."""
    if len(labels) != len(predictions) or not labels:
        raise ValueError(f"POPE: {len(labels)} labels for {len(predictions)} predictions")
    pred = [pope_label(p) == "yes" for p in predictions]
    gold = []
    for i, label in enumerate(labels):
        label = label.strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"POPE row {i}: label {label!r} is not yes/no")
        gold.append(label == "yes")
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum(not p and not g for p, g in zip(pred, gold))
    fn = sum(not p and g for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pred)
    return {"accuracy": 100 * (tp + tn) / n, "precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1,
            "yes_ratio": 100 * sum(pred) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}
