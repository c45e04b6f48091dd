"""Captioning sets in Karpathy's JSON layout (dataset_coco.json, dataset_flickr30k.json): one list of images with
`split`, `filename` (COCO also `filepath` = val2014/train2014 and `cocoid`) and `sentences[].raw`."""
from __future__ import annotations

import os

from otter_jax.evaluate.example import DataError, Example, TaskData, read_file_bytes
from otter_jax.evaluate.formats.common import limit, load_json, need

POOL_SPLITS = ("train", "restval")


def _example(img: dict, images_root: str, path: str) -> Example:
    name = need(img, "filename", path, img.get("imgid"))
    rid = str(img.get("cocoid", img.get("imgid", name)))
    sentences = need(img, "sentences", path, rid)
    refs = tuple(s["raw"].strip() for s in sentences if s.get("raw", "").strip())
    if not refs:
        raise DataError(f"{path}: image {rid!r} has no reference captions")
    image = os.path.join(images_root, img.get("filepath", ""), name)
    return Example(id=rid, images=(image,), answers=refs, meta={"file": name})


def read_karpathy(path: str, images_root: str, split: str = "test", max_examples: int = -1) -> TaskData:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy caption file (expected an object with an 'images' list)")
    examples, pool = [], []
    for img in data["images"]:
        s = need(img, "split", path, img.get("filename"))
        if s == split:
            examples.append(_example(img, images_root, path))
        elif s in POOL_SPLITS:
            pool.append(_example(img, images_root, path))
    if not examples:
        raise DataError(f"{path}: no images in split {split!r}")
    return TaskData(limit(examples, max_examples), pool, read_file_bytes, path)
