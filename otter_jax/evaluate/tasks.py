"""Task families: which reader a configured task uses, and how its predictions are scored."""
from __future__ import annotations

import csv
import os
from collections import defaultdict

import ml_collections

from otter_jax.evaluate import choice, vqa_metric, yesno
from otter_jax.evaluate.cider import cider
from otter_jax.evaluate.config import FAMILIES
from otter_jax.evaluate.example import DataError, Example, TaskData
from otter_jax.evaluate.formats import captioning, multichoice, pairwise, vqa
from otter_jax.evaluate.formats import yesno as yesno_formats


def pope_split_name(path: str) -> str:
    """coco_pope_adversarial.json -> adversarial."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem.rsplit("_", 1)[-1] if "pope_" in stem else stem


def read(t: ml_collections.ConfigDict) -> TaskData:
    n = t.max_examples
    if t.format == "karpathy":
        return captioning.read_karpathy(t.annotations, t.images, t.split, n)
    if t.format == "vqa":
        return vqa.read_vqa(t.questions, t.annotations, t.images, t.image_pattern, t.train_questions,
                            t.train_annotations, t.train_images, n)
    if t.format == "mmbench":
        return multichoice.read_mmbench(t.questions, n)
    if t.format == "scienceqa":
        return multichoice.read_scienceqa(t.annotations, t.images, t.split, t.pid_splits, n)
    if t.format == "seedbench":
        return multichoice.read_seedbench(t.annotations, t.images, t.image_pattern or "{data_id}", n)
    if t.format == "mme":
        tasks = tuple(x.strip() for x in t.mme_tasks.split(",") if x.strip())
        return yesno_formats.read_mme(t.images, tasks, n)
    if t.format == "pope":
        files = [p.strip() for p in t.questions.split(",") if p.strip()]
        return yesno_formats.read_pope({pope_split_name(p): p for p in files}, t.images, n)
    if t.format == "pairwise":
        return pairwise.read_pairwise(t.questions, t.images, n)
    raise DataError(f"unknown task format {t.format!r}")


def _chosen(ex: Example, rec: dict, t) -> int | None:
    if "logprobs" in rec:
        return choice.rank_choice(rec["logprobs"], rec["ntokens"], t.rank_normalize)
    return choice.parse_choice(rec["prediction"], ex.options)


def score(t: ml_collections.ConfigDict, examples: list[Example], records: dict[str, dict], *,
          cider_tokenizer: str = "auto", judge_fn=None, submission_path: str = "") -> tuple[dict, dict]:
    """(summary: flat numeric metrics for the tables, details: breakdowns) of one run's predictions."""
    family = FAMILIES[t.format]
    missing = [ex.id for ex in examples if ex.id not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} example(s) have no prediction, e.g. {missing[0]!r}")
    if family == "captioning":
        value, backend = cider({ex.id: records[ex.id]["prediction"] for ex in examples},
                               {ex.id: list(ex.answers) for ex in examples}, cider_tokenizer)
        return {"cider": value}, {"tokenizer": backend}
    if family == "vqa":
        accs = {ex.id: vqa_metric.vqa_accuracy(records[ex.id]["prediction"], ex.answers) for ex in examples}
        by_type = defaultdict(list)
        for ex in examples:
            by_type[ex.meta.get("answer_type") or "all"].append(accs[ex.id])
        return ({"accuracy": 100 * sum(accs.values()) / len(accs)},
                {"per_answer_type": {k: 100 * sum(v) / len(v) for k, v in sorted(by_type.items())}})
    if family == "multichoice":
        picks = {ex.id: _chosen(ex, records[ex.id], t) for ex in examples}
        details = {"unparsed": sum(p is None for p in picks.values())}
        if submission_path:  # MMBench: predictions in the layout the official server takes (as TSV)
            _write_submission(submission_path, examples, picks, records)
            details["submission"] = submission_path
        graded = [ex for ex in examples if ex.gold >= 0]
        if not graded:
            return {}, details
        per_cat = defaultdict(list)
        for ex in graded:
            ok = picks[ex.id] == ex.gold
            per_cat[ex.meta.get("category") or ex.meta.get("subject") or "all"].append(ok)
        details["per_category"] = {k: 100 * sum(v) / len(v) for k, v in sorted(per_cat.items())}
        return {"accuracy": 100 * sum(picks[ex.id] == ex.gold for ex in graded) / len(graded)}, details
    if t.format == "mme":
        rows = [{"task": ex.meta["task"], "image": ex.meta["image"], "label": ex.answers[0],
                 "prediction": records[ex.id]["prediction"]} for ex in examples]
        s = yesno.mme_scores(rows)
        summary = {k: s[k] for k in ("perception", "cognition") if k in s}
        summary.update({f"{task}": v["score"] for task, v in s["tasks"].items()})
        return summary, s
    if t.format == "pope":
        by_split = defaultdict(list)
        for ex in examples:
            by_split[ex.meta["split"]].append(ex)
        details, summary = {}, {}
        for split, exs in sorted(by_split.items()):
            s = yesno.pope_scores([e.answers[0] for e in exs], [records[e.id]["prediction"] for e in exs])
            details[split] = s
            for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                summary[f"{split}/{k}"] = s[k]
        return summary, details
    if family == "pairwise":
        if judge_fn is None:
            raise RuntimeError("pairwise task without a judge")
        res = judge_fn(examples, {ex.id: records[ex.id]["prediction"] for ex in examples})
        return {"win": res["win"], "lose": res["lose"], "tie": res["tie"]}, res
    raise DataError(f"no scorer for format {t.format!r}")


def _write_submission(path: str, examples, picks, records) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    letters = choice.LETTERS
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["index", "question"] + list(letters[:4]) + ["prediction", "raw"])
        for ex in examples:
            opts = list(ex.options) + [""] * (4 - len(ex.options))
            p = picks[ex.id]
            w.writerow([ex.id, ex.question] + opts[:4] + [letters[p] if p is not None else "",
                                                          records[ex.id].get("prediction", "")])
