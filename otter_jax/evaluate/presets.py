"""Task sections for the standard benchmarks in their usual download layouts under one data root, and for the tiny
bundled sets; the `configs/eval/*.py` files assemble these. Paths start with "{data_root}" (config.data_root, filled
in at run time) so one override moves a whole suite; every path can still be overridden per key."""
from __future__ import annotations

import os


def coco(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "coco")
    return dict(format="karpathy", annotations=os.path.join(d, "dataset_coco.json"), images=d, split="test")


def flickr30k(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "flickr30k")
    return dict(format="karpathy", annotations=os.path.join(d, "dataset_flickr30k.json"),
                images=os.path.join(d, "flickr30k-images"), split="test")


def _coco_vqa(d: str, questions: str, annotations: str) -> dict:
    """VQAv2 / OK-VQA layout: official question and annotation JSONs per split over the COCO 2014 image folders."""
    def split(name: str) -> dict:
        return dict(questions=os.path.join(d, questions.format(split=name)),
                    annotations=os.path.join(d, annotations.format(split=name)), images=os.path.join(d, name))

    val, train = split("val2014"), split("train2014")
    return dict(format="vqa", **val, **{f"train_{k}": v for k, v in train.items()})


def vqav2(root: str = "{data_root}") -> dict:
    return _coco_vqa(os.path.join(root, "vqav2"), "v2_OpenEnded_mscoco_{split}_questions.json",
                     "v2_mscoco_{split}_annotations.json")


def okvqa(root: str = "{data_root}") -> dict:
    return _coco_vqa(os.path.join(root, "okvqa"), "OpenEnded_mscoco_{split}_questions.json",
                     "mscoco_{split}_annotations.json")


def textvqa(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "textvqa")
    return dict(format="vqa", questions=os.path.join(d, "TextVQA_0.5.1_val.json"),
                images=os.path.join(d, "train_images"), image_pattern="{image_id}.jpg",
                train_questions=os.path.join(d, "TextVQA_0.5.1_train.json"))


def vizwiz(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "vizwiz")
    return dict(format="vqa", questions=os.path.join(d, "val.json"), images=os.path.join(d, "val"),
                image_pattern="{image}", train_questions=os.path.join(d, "train.json"),
                train_images=os.path.join(d, "train"))


def mmbench(root: str = "{data_root}") -> dict:
    return dict(format="mmbench", questions=os.path.join(root, "mmbench", "mmbench_dev_20230712.tsv"))


def scienceqa(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "scienceqa")
    return dict(format="scienceqa", annotations=os.path.join(d, "problems.json"),
                pid_splits=os.path.join(d, "pid_splits.json"), images=os.path.join(d, "images"), split="test")


def seedbench(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "seedbench")
    return dict(format="seedbench", annotations=os.path.join(d, "SEED-Bench.json"),
                images=os.path.join(d, "SEED-Bench-image"), mode="rank")


def mme(root: str = "{data_root}") -> dict:
    return dict(format="mme", images=os.path.join(root, "MME_Benchmark_release_version"))


def pope(root: str = "{data_root}") -> dict:
    d = os.path.join(root, "pope")
    files = [os.path.join(d, f"coco_pope_{s}.json") for s in ("random", "popular", "adversarial")]
    return dict(format="pope", questions=",".join(files), images=os.path.join(root, "coco", "val2014"))


def tiny(root: str = "{data_root}") -> dict[str, dict]:
    """Every task on the bundled tiny sets written by `otter_jax.evaluate.tiny_sets` into `root`."""
    j = os.path.join
    return {
        "coco": dict(format="karpathy", annotations=j(root, "coco", "dataset_coco.json"), images=j(root, "coco")),
        "flickr30k": dict(format="karpathy", annotations=j(root, "flickr30k", "dataset_flickr30k.json"),
                          images=j(root, "images")),
        "vqav2": dict(format="vqa", questions=j(root, "vqa", "val_questions.json"),
                      annotations=j(root, "vqa", "val_annotations.json"), images=j(root, "vqa", "val2014"),
                      train_questions=j(root, "vqa", "train_questions.json"),
                      train_annotations=j(root, "vqa", "train_annotations.json"),
                      train_images=j(root, "vqa", "train2014")),
        "mmbench": dict(format="mmbench", questions=j(root, "mmbench", "mmbench_dev.tsv")),
        "scienceqa": dict(format="scienceqa", annotations=j(root, "scienceqa", "problems.json"),
                          pid_splits=j(root, "scienceqa", "pid_splits.json"), images=j(root, "scienceqa", "images")),
        "seedbench": dict(format="seedbench", annotations=j(root, "seedbench", "SEED-Bench.json"),
                          images=j(root, "seedbench", "images"), mode="rank"),
        "mme": dict(format="mme", images=j(root, "mme")),
        "pope": dict(format="pope", questions=",".join(j(root, "pope", f"coco_pope_{s}.json")
                                                      for s in ("random", "adversarial")),
                     images=j(root, "pope", "images")),
        "pairwise": dict(format="pairwise", questions=j(root, "pairwise", "questions.jsonl")),
    }
