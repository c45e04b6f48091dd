"""The evaluation config: defaults for every knob, a `configs/eval/*.py` file merged over them (each task section
over the task defaults of its format), then absl-style `--config.a.b=v` overrides.

Why typed defaults ("" = unset, -1 = all): absl can only override keys that exist and parses by the default's
type, and merging over a schema rejects misspelt keys by name instead of silently ignoring them.
"""
from __future__ import annotations

import os
from typing import Sequence

import ml_collections

from otter_jax import config_files

FAMILIES = {"karpathy": "captioning", "vqa": "vqa", "mmbench": "multichoice", "scienceqa": "multichoice",
            "seedbench": "multichoice", "mme": "yesno", "pope": "yesno", "pairwise": "pairwise"}
# Decoding per family: OpenFlamingo's (3 beams, length_penalty 0; 20 / 5 new tokens) for captions / VQA; the
# instruction benchmarks use upstream Otter's 3 beams + no_repeat_ngram_size 3, with shorter answers.
GENERATION = {
    "captioning": dict(num_beams=3, max_new_tokens=20, length_penalty=0.0, no_repeat_ngram_size=0),
    "vqa": dict(num_beams=3, max_new_tokens=5, length_penalty=0.0, no_repeat_ngram_size=0),
    "multichoice": dict(num_beams=3, max_new_tokens=32, length_penalty=1.0, no_repeat_ngram_size=3),
    "yesno": dict(num_beams=3, max_new_tokens=16, length_penalty=1.0, no_repeat_ngram_size=3),
    "pairwise": dict(num_beams=3, max_new_tokens=256, length_penalty=1.0, no_repeat_ngram_size=3),
}
MODES = ("generate", "rank")


class EvalConfigError(ValueError):
    """A config value the evaluator cannot use (names the key)."""


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.checkpoint = ""            # otter-jax checkpoint folder, or an HF-layout PyTorch Otter folder
    c.tokenizer = ""             # tokenizer folder ("" = the checkpoint folder)
    c.output_dir = "runs/eval"   # predictions/ (resume state), results.json, report.md
    c.batch_size = 8             # rows per device step (rounded up to a multiple of the mesh's batch shards)
    c.length_bucket = 32         # prompt lengths are padded to a multiple of this (fewer compiled shapes)
    c.resize = "squash"          # image resize: squash (upstream) or crop (CLIP processor)
    c.policy = dict(dtype="float32", param_dtype="float32",
                    scan_layers=False)  # generation decodes layer by layer: load it that way (no per-call slicing)
    c.mesh = dict(enabled=False, data=-1, fsdp=1, tensor=1)
    c.shots = "0"                # comma-separated, e.g. "0,4,8,16,32"
    c.seeds = "42"               # comma-separated trial seeds (demonstration sampling)
    # rices_clip: HF CLIP folder whose projected pooled image embeddings rank RICES demonstrations (OpenFlamingo's
    # features); "" = the evaluated model's mean patch token. rices_cache: per-image embedding cache folder
    # ("" = <output_dir>/rices_cache).
    c.fewshot = dict(method="random", query_set_size=2048, zero_shot_text_demos=True, rices_clip="", rices_cache="")
    c.prompt_style = "otter"     # otter | openflamingo
    c.cider_tokenizer = "auto"   # auto (java if installed) | java | python
    c.judge = dict(base_url="", model="", api_key_env="OPENAI_API_KEY", concurrency=8, max_tokens=512,
                   temperature=0.0, timeout=120.0)
    c.data_root = "data/eval"    # replaces "{data_root}" in every task path
    c.write_tiny_sets = False    # first write the bundled tiny evaluation sets into data_root (when missing)
    c.overwrite = False          # discard existing predictions instead of resuming
    c.progress = True
    c.tasks = ml_collections.ConfigDict()  # name -> task section (see task_defaults)
    return c


def task_defaults(fmt: str) -> ml_collections.ConfigDict:
    if fmt not in FAMILIES:
        raise EvalConfigError(f"task format {fmt!r} is not one of {', '.join(FAMILIES)}")
    t = ml_collections.ConfigDict(dict(
        format=fmt, enabled=True,
        annotations="",          # Karpathy JSON / VQA annotation JSON / SEED-Bench JSON / ScienceQA problems.json
        questions="",            # VQA questions JSON (or TextVQA / VizWiz file) / MMBench TSV / POPE files
                                 # (comma-separated) / pairwise JSONL
        images="",               # image folder (MME: the release folder)
        split="test", image_pattern="", pid_splits="", mme_tasks="",
        train_questions="", train_annotations="", train_images="",  # VQA few-shot pool
        mode="generate",         # multiple choice: generate + parse, or rank the options by likelihood
        rank_normalize="mean",   # rank: mean (lowest answer loss) or sum of option-token log-probs
        shots="", seeds="", fewshot_method="", prompt_style="",  # "" = the global value
        max_examples=-1,
    ))
    t.update(GENERATION[FAMILIES[fmt]])
    return t


def merge(user: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    user = ml_collections.ConfigDict(user.to_dict() if hasattr(user, "to_dict") else dict(user))
    tasks = user.get("tasks", ml_collections.ConfigDict())
    if "tasks" in user:
        del user["tasks"]
    c = config_files.merge_strict(defaults(), user, EvalConfigError, "config")
    for name, section in tasks.items():
        section = dict(section)
        if "format" not in section:
            raise EvalConfigError(f"config.tasks.{name}: no format (one of {', '.join(FAMILIES)})")
        c.tasks[name] = config_files.merge_strict(task_defaults(section["format"]),
                                                  ml_collections.ConfigDict(section), EvalConfigError,
                                                  f"config.tasks.{name}")
    return c


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`configs/eval/x.py[:arg]` merged over the defaults, then `--config.a.b=v` overrides."""
    return validate(config_files.apply_overrides(merge(config_files.load(spec)), overrides, EvalConfigError))


PATH_KEYS = ("annotations", "questions", "images", "pid_splits", "train_questions", "train_annotations",
             "train_images")


def resolve_paths(t: ml_collections.ConfigDict, data_root: str) -> ml_collections.ConfigDict:
    """A copy of task section `t` with "{data_root}" replaced in its paths (other braces, as in image_pattern's
    "{image_id}", are left alone)."""
    out = ml_collections.ConfigDict(t.to_dict())
    for k in PATH_KEYS:
        out[k] = out[k].replace("{data_root}", data_root)
    return out


def int_list(text: str, key: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise EvalConfigError(f"config.{key}={text!r}: expected comma-separated integers") from None
    if not values:
        raise EvalConfigError(f"config.{key} is empty")
    return values


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise EvalConfigError(f"config.{key}: {msg}")

    need(bool(c.checkpoint), "checkpoint", "not set: give a checkpoint folder (config arg or --config.checkpoint=)")
    need(c.batch_size >= 1, "batch_size", "must be >= 1")
    need(c.length_bucket >= 1, "length_bucket", "must be >= 1")
    need(c.prompt_style in ("otter", "openflamingo"), "prompt_style", "must be otter or openflamingo")
    need(c.fewshot.method in ("random", "rices"), "fewshot.method", "must be random or rices")
    need(not c.fewshot.rices_clip or os.path.isdir(c.fewshot.rices_clip), "fewshot.rices_clip",
         f"{c.fewshot.rices_clip}: no such CLIP folder")
    need(c.cider_tokenizer in ("auto", "java", "python"), "cider_tokenizer", "must be auto, java or python")
    need(len(c.tasks) > 0, "tasks", "no tasks configured")
    int_list(c.shots, "shots")
    int_list(c.seeds, "seeds")
    for name, t in c.tasks.items():
        key = f"tasks.{name}"
        need(t.mode in MODES, f"{key}.mode", f"must be one of {MODES}")
        need(t.mode == "generate" or FAMILIES[t.format] == "multichoice", f"{key}.mode",
             "likelihood ranking is for multiple-choice tasks")
        need(t.rank_normalize in ("mean", "sum"), f"{key}.rank_normalize", "must be mean or sum")
        need(t.fewshot_method in ("", "random", "rices"), f"{key}.fewshot_method", "must be random or rices")
        need(t.prompt_style in ("", "otter", "openflamingo"), f"{key}.prompt_style", "must be otter or openflamingo")
        need(t.num_beams >= 1 and t.max_new_tokens >= 1, key, "num_beams and max_new_tokens must be >= 1")
        if t.shots:
            int_list(t.shots, f"{key}.shots")
        if t.seeds:
            int_list(t.seeds, f"{key}.seeds")
    return c
