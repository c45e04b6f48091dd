"""Tiny evaluation sets in every supported public format, made from the demo photographs (a few examples each):
for tests, for the README's main job, and as worked examples of each layout. Deterministic; nothing downloaded.

    python -m otter_jax.evaluate.tiny_sets --out runs/eval_sets     (or set `tiny_sets` in an eval config)
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
from pathlib import Path

from PIL import Image

# photo -> (COCO-style image id, two reference captions)
PHOTOS = {
    "DEMO_IMG_astronaut": (1, ["An astronaut in an orange suit smiles next to a flag.",
                               "A woman in an orange flight suit poses in front of an American flag."]),
    "DEMO_IMG_cat": (2, ["A tabby cat looks straight at the camera.", "A close up of a striped cat with green eyes."]),
    "DEMO_IMG_coffee": (3, ["An espresso in a red cup on a wooden table.",
                            "A cup of coffee on a red saucer with a spoon."]),
    "DEMO_IMG_rocket": (4, ["A rocket on its launch pad under a night sky.", "A space rocket standing at night."]),
    "DEMO_IMG_camera": (5, ["A man looks through a camera on a tripod.",
                            "A black and white photo of a photographer on a lawn."]),
    "DEMO_IMG_coins": (6, ["Rows of old coins on a dark background.", "Four rows of worn coins of different sizes."]),
    "DEMO_IMG_retina": (7, ["A photograph of the retina of a human eye.", "Red blood vessels on the back of an eye."]),
    "DEMO_IMG_hubble": (8, ["A deep field of countless distant galaxies.", "Many small galaxies in dark space."]),
    "DEMO_IMG_ihc": (9, ["A stained tissue sample seen through a microscope.", "A microscope image of stained cells."]),
    "DEMO_IMG_moon": (10, ["A grey close-up of a cratered lunar surface.", "Craters on the surface of the moon."]),
    "DEMO_IMG_moto_left": (11, ["A red motorcycle parked in a garage.", "A red motorbike inside a workshop."]),
    "DEMO_IMG_moto_right": (12, ["A red motorcycle in a garage seen from the side.",
                                 "A parked red motorbike in a garage."]),
}
CAPTION_TEST = ("DEMO_IMG_cat", "DEMO_IMG_coffee", "DEMO_IMG_rocket", "DEMO_IMG_coins")

# (photo, question, ten answers)
VQA_TEST = [
    ("DEMO_IMG_cat", "What animal is this?", ["cat"] * 8 + ["kitten", "tabby cat"]),
    ("DEMO_IMG_cat", "What color are its eyes?", ["green"] * 6 + ["yellow", "green", "greenish", "yellow green"]),
    ("DEMO_IMG_coffee", "What drink is shown?", ["coffee"] * 5 + ["espresso"] * 4 + ["latte"]),
    ("DEMO_IMG_coins", "How many rows of coins are there?", ["4"] * 7 + ["four", "3", "5"]),
    ("DEMO_IMG_camera", "Is the photo in color?", ["no"] * 10),
    ("DEMO_IMG_rocket", "Is it day or night?", ["night"] * 9 + ["evening"]),
]
VQA_TRAIN = [
    ("DEMO_IMG_astronaut", "What color is her suit?", ["orange"] * 10),
    ("DEMO_IMG_astronaut", "What is on the left?", ["flag"] * 7 + ["american flag"] * 3),
    ("DEMO_IMG_hubble", "What is shown?", ["galaxies"] * 8 + ["stars", "space"]),
    ("DEMO_IMG_moon", "Is this the moon?", ["yes"] * 10),
    ("DEMO_IMG_moto_left", "What vehicle is this?", ["motorcycle"] * 7 + ["motorbike"] * 3),
    ("DEMO_IMG_retina", "What body part is this?", ["eye"] * 8 + ["retina"] * 2),
    ("DEMO_IMG_ihc", "What tool took this picture?", ["microscope"] * 10),
    ("DEMO_IMG_moto_right", "What color is the motorcycle?", ["red"] * 10),
]
# (photo, question, options, gold index, category)
MULTI_CHOICE = [
    ("DEMO_IMG_cat", "What animal is in the picture?", ["dog", "cat", "horse", "bird"], 1, "recognition"),
    ("DEMO_IMG_coffee", "What is in the cup?", ["tea", "soup", "coffee", "milk"], 2, "recognition"),
    ("DEMO_IMG_rocket", "When was the photo taken?", ["at night", "at noon", "at dawn"], 0, "reasoning"),
    ("DEMO_IMG_coins", "What objects are arranged in rows?", ["buttons", "stamps", "cookies", "coins"], 3,
     "recognition"),
]
# MME: task -> [(photo, [(question, Yes|No), (question, Yes|No)])]
MME = {
    "existence": [("DEMO_IMG_cat", [("Is there a cat in this image? Please answer yes or no.", "Yes"),
                                    ("Is there a dog in this image? Please answer yes or no.", "No")]),
                  ("DEMO_IMG_coffee", [("Is there a cup in this image? Please answer yes or no.", "Yes"),
                                       ("Is there a bicycle in this image? Please answer yes or no.", "No")])],
    "color": [("DEMO_IMG_moto_left", [("Is the motorcycle red? Please answer yes or no.", "Yes"),
                                      ("Is the motorcycle blue? Please answer yes or no.", "No")])],
    "commonsense_reasoning": [("DEMO_IMG_rocket", [("Is it night in this picture? Please answer yes or no.", "Yes"),
                                                   ("Is the rocket underwater? Please answer yes or no.", "No")])],
}
POPE = {
    "random": [("DEMO_IMG_cat", "cat", "yes"), ("DEMO_IMG_cat", "car", "no"), ("DEMO_IMG_coffee", "cup", "yes"),
               ("DEMO_IMG_coffee", "giraffe", "no")],
    "adversarial": [("DEMO_IMG_moto_left", "motorcycle", "yes"), ("DEMO_IMG_moto_left", "person", "no"),
                    ("DEMO_IMG_astronaut", "flag", "yes"), ("DEMO_IMG_astronaut", "helmet", "yes")],
}
PAIRWISE = [
    ("DEMO_IMG_astronaut", "Describe the image.", "A person."),
    ("DEMO_IMG_coffee", "What is on the table?", "A cup of espresso on a red saucer, with a spoon."),
    ("DEMO_IMG_hubble", "What can be seen in this picture?", "Galaxies."),
]
SCIENCEQA_TEXT = ("Which of these is a mammal?", ["shark", "whale", "trout"], 1)


def _jpeg(data: bytes, max_side: int = 224) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png(data: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def write_tiny_sets(out: str | os.PathLike) -> Path:
    """Write every set under `out` (see README: Evaluation); returns `out`. Existing files are overwritten."""
    from otter_jax.data.demo import demo_images

    out = Path(out)
    photos = {k: _jpeg(v) for k, v in demo_images().items() if k in PHOTOS}
    img = out / "images"
    img.mkdir(parents=True, exist_ok=True)
    for name, data in photos.items():
        (img / f"{name}.jpg").write_bytes(data)

    # Captioning: Karpathy layout, COCO flavour (filepath + cocoid) and Flickr30K flavour (filename only).
    coco_dir = out / "coco"
    images = []
    for name, (iid, caps) in PHOTOS.items():
        split = "test" if name in CAPTION_TEST else "train"
        sub = "val2014" if split == "test" else "train2014"
        fname = f"COCO_{sub}_{iid:012d}.jpg"
        (coco_dir / sub).mkdir(parents=True, exist_ok=True)
        (coco_dir / sub / fname).write_bytes(photos[name])
        images.append({"filepath": sub, "filename": fname, "imgid": iid - 1, "split": split, "cocoid": iid,
                       "sentences": [{"raw": c, "tokens": c.lower().rstrip(".").split(), "imgid": iid - 1,
                                      "sentid": 2 * iid + k} for k, c in enumerate(caps)]})
    _dump(coco_dir / "dataset_coco.json", {"images": images, "dataset": "coco"})
    flickr = [{"filename": f"{name}.jpg", "imgid": iid - 1, "split": "test" if name in CAPTION_TEST else "train",
               "sentences": [{"raw": c, "tokens": c.lower().rstrip(".").split()} for c in caps]}
              for name, (iid, caps) in PHOTOS.items()]
    _dump(out / "flickr30k" / "dataset_flickr30k.json", {"images": flickr, "dataset": "flickr30k"})

    # VQA: VQAv2 question + annotation files (val for testing, train for demonstrations), COCO image names.
    vqa_dir = out / "vqa"
    for split, rows, sub in (("val", VQA_TEST, "val2014"), ("train", VQA_TRAIN, "train2014")):
        qs, anns = [], []
        for k, (name, q, answers) in enumerate(rows):
            iid = PHOTOS[name][0]
            qid = iid * 1000 + k
            (vqa_dir / sub).mkdir(parents=True, exist_ok=True)
            (vqa_dir / sub / f"COCO_{sub}_{iid:012d}.jpg").write_bytes(photos[name])
            qs.append({"image_id": iid, "question": q, "question_id": qid})
            anns.append({"question_id": qid, "image_id": iid, "question_type": "what", "multiple_choice_answer":
                         answers[0], "answer_type": "yes/no" if answers[0] in ("yes", "no") else
                         "number" if answers[0].isdigit() else "other",
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                     for i, a in enumerate(answers)]})
        _dump(vqa_dir / f"{split}_questions.json", {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                                    "data_subtype": sub, "questions": qs})
        _dump(vqa_dir / f"{split}_annotations.json", {"info": {}, "data_type": "mscoco", "data_subtype": sub,
                                                      "annotations": anns})

    # MMBench TSV (base64 images in the file).
    (out / "mmbench").mkdir(parents=True, exist_ok=True)
    with open(out / "mmbench" / "mmbench_dev.tsv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                    "l2-category", "comment", "split"])
        for k, (name, q, opts, gold, cat) in enumerate(MULTI_CHOICE):
            o = opts + [""] * (4 - len(opts))
            w.writerow([k, q, "nan" if k % 2 else "Look at the photograph.", *o, "ABCD"[gold], cat,
                        base64.b64encode(photos[name]).decode("ascii"), "demo", cat, "nan", "dev"])

    # ScienceQA: problems.json + pid_splits.json + images/<split>/<pid>/image.png (one text-only problem).
    sqa = out / "scienceqa"
    problems, test_ids = {}, []
    for k, (name, q, opts, gold, cat) in enumerate(MULTI_CHOICE[:3]):
        pid = str(100 + k)
        (sqa / "images" / "test" / pid).mkdir(parents=True, exist_ok=True)
        (sqa / "images" / "test" / pid / "image.png").write_bytes(_png(photos[name]))
        problems[pid] = {"question": q, "choices": opts, "answer": gold, "hint": "", "image": "image.png",
                         "task": "closed choice", "grade": "grade4", "subject": "natural science",
                         "topic": cat, "category": cat, "skill": cat, "lecture": "", "solution": "",
                         "split": "test"}
        test_ids.append(pid)
    q, opts, gold = SCIENCEQA_TEXT
    problems["200"] = {"question": q, "choices": opts, "answer": gold, "hint": "Mammals feed their young milk.",
                       "image": None, "grade": "grade3", "subject": "natural science", "split": "test"}
    test_ids.append("200")
    _dump(sqa / "problems.json", problems)
    _dump(sqa / "pid_splits.json", {"train": [], "val": [], "test": test_ids})

    # SEED-Bench: SEED-Bench.json + image folder (plus one video question, which image evaluation skips).
    seed_dir = out / "seedbench"
    (seed_dir / "images").mkdir(parents=True, exist_ok=True)
    qs = []
    for k, (name, q, opts, gold, cat) in enumerate(MULTI_CHOICE):
        o = (opts + ["a tree", "a boat"])[:4]
        (seed_dir / "images" / f"{name}.jpg").write_bytes(photos[name])
        qs.append({"answer": "ABCD"[gold], "choice_a": o[0], "choice_b": o[1], "choice_c": o[2], "choice_d": o[3],
                   "data_id": f"{name}.jpg", "data_type": "image", "question": q, "question_id": str(500 + k),
                   "question_type_id": 1 if cat == "recognition" else 2})
    qs.append({"answer": "A", "choice_a": "zoom", "choice_b": "pan", "choice_c": "tilt", "choice_d": "none",
               "data_id": "clip.mp4", "data_type": "video", "question": "How does the camera move?",
               "question_id": "900", "question_type_id": 3})
    _dump(seed_dir / "SEED-Bench.json", {"questions": qs, "question_type": {"Instance Identity": 1,
                                                                            "Visual Reasoning": 2,
                                                                            "Action Recognition": 3}})

    # MME: images/ + questions_answers_YN/ for one task, image and txt side by side for the others.
    mme = out / "mme"
    for t, (task, items) in enumerate(MME.items()):
        nested = t == 0
        qa_dir = mme / task / ("questions_answers_YN" if nested else "")
        im_dir = mme / task / ("images" if nested else "")
        qa_dir.mkdir(parents=True, exist_ok=True)
        im_dir.mkdir(parents=True, exist_ok=True)
        for name, qa in items:
            (im_dir / f"{name}.jpg").write_bytes(photos[name])
            (qa_dir / f"{name}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qa))

    # POPE: one JSON object per line, COCO-named images in a shared folder.
    pope = out / "pope"
    (pope / "images").mkdir(parents=True, exist_ok=True)
    for split, rows in POPE.items():
        lines = []
        for k, (name, obj, label) in enumerate(rows):
            fname = f"COCO_val2014_{PHOTOS[name][0]:012d}.jpg"
            (pope / "images" / fname).write_bytes(photos[name])
            lines.append(json.dumps({"question_id": k + 1, "image": fname,
                                     "text": f"Is there a {obj} in the image?", "label": label}))
        (pope / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")

    # Pairwise judging: our own JSONL (question + the baseline model's answer), images next to it.
    pw = out / "pairwise"
    (pw / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, q, baseline) in enumerate(PAIRWISE):
        (pw / "images" / f"{name}.jpg").write_bytes(photos[name])
        rows.append(json.dumps({"id": f"pw{k}", "image": f"images/{name}.jpg", "question": q, "baseline": baseline}))
    (pw / "questions.jsonl").write_text("\n".join(rows) + "\n")
    (out / "README.txt").write_text(TINY_MARK + " by otter_jax.evaluate.tiny_sets; see configs/eval/demo.py.\n")
    return out


TINY_MARK = "Tiny evaluation sets made from the otter-jax demo photographs"


def is_tiny(root: str | os.PathLike) -> bool:
    """Whether `root` holds the bundled tiny sets (their README marks them)."""
    from etils import epath

    p = epath.Path(root) / "README.txt"   # data_root may be gs://
    return p.exists() and p.read_text()[:len(TINY_MARK)] == TINY_MARK


def ensure(out: str):
    """Write the sets unless `out` already holds them; a remote `out` (gs://) gets them copied up."""
    from etils import epath

    from otter_jax.evaluate.paths import is_remote

    if (epath.Path(out) / "README.txt").exists():
        return epath.Path(out)
    if not is_remote(out):
        return write_tiny_sets(out)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = write_tiny_sets(tmp)
        for f in sorted(local.rglob("*")):
            if f.is_file():
                dst = epath.Path(out) / f.relative_to(local).as_posix()
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())
    return epath.Path(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="write the tiny bundled evaluation sets")
    p.add_argument("--out", required=True)
    write_tiny_sets(p.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
