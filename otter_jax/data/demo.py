"""The bundled demo dataset: real photographs from scikit-image's sample data + hand-written instructions.

It covers all four groups in upstream MIMIC-IT format (instructions JSON + images parquet + train config + data
YAML): multi-turn conversations (IMAGE_TEXT), a two-image spot-the-difference pair (IMAGE_TEXT), in-context
episodes (IMAGE_TEXT_IN_CONTEXT), two frame sequences cut from photographs (VIDEO_TEXT: a zoom and a pan), and
text-only turns (TEXT_ONLY). Generated, not committed as binaries: `write_demo(out)` is deterministic.
The small BPE tokenizer trained on this text ships in `otter_jax/data/demo/tokenizer` (regenerate with
`python -m otter_jax.data.demo --tokenizer otter_jax/data/demo/tokenizer`).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
from pathlib import Path

from PIL import Image

TOKENIZER_DIR = Path(__file__).parent / "demo" / "tokenizer"

# image id -> scikit-image sample file
PHOTOS = {
    "DEMO_IMG_astronaut": "astronaut.png", "DEMO_IMG_cat": "chelsea.png", "DEMO_IMG_coffee": "coffee.png",
    "DEMO_IMG_rocket": "rocket.jpg", "DEMO_IMG_moto_left": "motorcycle_left.png",
    "DEMO_IMG_moto_right": "motorcycle_right.png", "DEMO_IMG_hubble": "hubble_deep_field.jpg",
    "DEMO_IMG_camera": "camera.png", "DEMO_IMG_coins": "coins.png", "DEMO_IMG_retina": "retina.jpg",
    "DEMO_IMG_ihc": "ihc.png", "DEMO_IMG_moon": "moon.png",
}

# (dataset, image ids, [(instruction, answer), ...]); consecutive turns of one entry form a conversation
CONVERSATIONS = [
    ("DEMO_CONV", ["DEMO_IMG_astronaut"], [
        ("What is the person in the picture wearing?", "She is wearing an orange flight suit with mission patches."),
        ("What is on the left side of the picture?", "An American flag hangs on the left."),
        ("What object is next to her on the right?", "A round black and white helmet rests beside her, with a model "
                                                     "of the space shuttle behind it.")]),
    ("DEMO_CONV", ["DEMO_IMG_cat"], [
        ("What animal is this?", "It is a tabby cat seen close up."),
        ("What color are its eyes?", "Its eyes are green with a hint of yellow.")]),
    ("DEMO_CONV", ["DEMO_IMG_coffee"], [
        ("What drink is shown?", "A cup of espresso with a light crema."),
        ("What is the cup standing on?", "A red saucer with a small spoon, on a wooden table.")]),
    ("DEMO_CONV", ["DEMO_IMG_camera"], [
        ("What is the man doing?", "He is looking through a camera mounted on a tripod."),
        ("Is the photo in color?", "No, it is a black and white photo of a man on a lawn.")]),
    ("DEMO_CONV", ["DEMO_IMG_coins"], [
        ("How many rows of coins are there?", "There are four rows of coins."),
        ("Are all the coins the same size?", "No, the coins vary in size and wear.")]),
    ("DEMO_CONV", ["DEMO_IMG_retina"], [
        ("What kind of image is this?", "A photograph of the back of a human eye, the retina."),
        ("What are the dark red lines?", "They are blood vessels spreading out from the optic disc.")]),
    ("DEMO_SD", ["DEMO_IMG_moto_left", "DEMO_IMG_moto_right"], [
        ("What is different between the two pictures?", "Very little: both show the same red motorcycle in a "
                                                        "garage, seen from slightly shifted viewpoints.")]),
    ("DEMO_VID", ["DEMO_VID_rocket_%04d" % i for i in range(8)], [
        ("What happens in the video?", "The camera zooms in on a rocket standing on a launch pad at night."),
        ("What surrounds the rocket?", "Tall lightning towers and bright lights around the pad."),
        ("Is it day or night?", "It is night; the sky is dark blue.")]),
    ("DEMO_VID", ["DEMO_VID_coffee_%04d" % i for i in range(6)], [
        ("Describe the camera motion.", "The camera pans from left to right across a cup of coffee."),
        ("What is the table made of?", "Wood.")]),
    ("DEMO_TXT", [], [
        ("What is a perceiver resampler?", "A small attention network that turns many image features into a fixed "
                                           "number of latent tokens."),
        ("Why are the gates initialised to zero?", "So that the language model starts exactly as it was before "
                                                   "training."),
        ("What does the token endofchunk mark?", "The end of one instruction and answer pair.")]),
    ("DEMO_TXT", [], [
        ("Name three colors of a rainbow.", "Red, green and blue."),
        ("And two more?", "Orange and violet.")]),
]

# IMAGE_TEXT_IN_CONTEXT: one describe-style pair per image; each query gets the next two images as examples
IN_CONTEXT = [
    ("DEMO_IMG_hubble", "Describe the image in one sentence.", "A deep field of countless distant galaxies."),
    ("DEMO_IMG_rocket", "Describe the image in one sentence.", "A rocket on its launch pad under a night sky."),
    ("DEMO_IMG_ihc", "Describe the image in one sentence.", "A stained tissue sample seen through a microscope."),
    ("DEMO_IMG_moon", "Describe the image in one sentence.", "A grey close-up of a cratered lunar surface."),
    ("DEMO_IMG_cat", "Describe the image in one sentence.", "A tabby cat looks straight at the camera."),
    ("DEMO_IMG_coffee", "Describe the image in one sentence.", "An espresso in a red cup on a wooden table."),
    ("DEMO_IMG_astronaut", "Describe the image in one sentence.", "An astronaut in an orange suit smiles."),
    ("DEMO_IMG_coins", "Describe the image in one sentence.", "Rows of old coins on a dark background."),
]

GROUP = {"DEMO_CONV": "IMAGE_TEXT", "DEMO_SD": "IMAGE_TEXT", "DEMO_ICL": "IMAGE_TEXT_IN_CONTEXT",
         "DEMO_VID": "VIDEO_TEXT", "DEMO_TXT": "TEXT_ONLY"}


def _jpeg(im: Image.Image, max_side: int) -> bytes:
    im = im.copy()
    im.thumbnail((max_side, max_side), Image.BICUBIC)
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _photo(name: str) -> Image.Image:
    from skimage import data as skdata

    path = Path(skdata.__file__).parent / name
    im = Image.open(path)
    im.load()
    return im


def demo_images(max_side: int = 320) -> dict[str, bytes]:
    """Encoded JPEG bytes by image id: the photos plus two frame sequences (a zoom and a pan)."""
    out = {k: _jpeg(_photo(v), max_side) for k, v in PHOTOS.items()}
    rocket = _photo("rocket.jpg").convert("RGB")  # landscape; the rocket stands near the centre
    w, h = rocket.size
    for i in range(8):  # zoom: crop shrinks from the full frame to 40% around the rocket
        s = 1.0 - 0.6 * i / 7
        cw, ch = w * s, h * s
        cx, cy = w * 0.53, h * 0.5
        box = (int(cx - cw / 2), int(cy - ch / 2), int(cx + cw / 2), int(cy + ch / 2))
        out["DEMO_VID_rocket_%04d" % i] = _jpeg(rocket.crop(box).resize((192, 144), Image.BICUBIC), 192)
    coffee = _photo("coffee.png").convert("RGB")  # 600x400
    w, h = coffee.size
    for i in range(6):  # pan: a 4:3 window sliding left to right
        cw = int(h * 4 / 3)
        x = int((w - cw) * i / 5)
        out["DEMO_VID_coffee_%04d" % i] = _jpeg(coffee.crop((x, 0, x + cw, h)).resize((192, 144), Image.BICUBIC),
                                                192)
    return out


def demo_instructions() -> dict[str, dict[str, dict]]:
    """{dataset: {ins_id: {instruction, answer, image_ids, rel_ins_ids}}} in upstream format."""
    out: dict[str, dict[str, dict]] = {name: {} for name in GROUP}
    for k, (dataset, image_ids, turns) in enumerate(CONVERSATIONS):
        ids = [f"{dataset}_INS_{k:02d}_{t}" for t in range(len(turns))]
        for t, (q, a) in enumerate(turns):
            out[dataset][ids[t]] = {"instruction": q, "answer": a, "image_ids": image_ids,
                                    "rel_ins_ids": [i for i in ids if i != ids[t]]}
    for k, (image_id, q, a) in enumerate(IN_CONTEXT):
        out["DEMO_ICL"][f"DEMO_ICL_INS_{k:02d}"] = {"instruction": q, "answer": a, "image_ids": [image_id],
                                                   "rel_ins_ids": []}
    return out


def demo_train_configs() -> dict[str, dict[str, list[str]]]:
    """Conversations: each turn's context = the turns before it. In-context: the next two images' pairs.
    DEMO_TXT ships no train config, so the loader falls back to rel_ins_ids there."""
    cfg: dict[str, dict[str, list[str]]] = {"DEMO_CONV": {}, "DEMO_SD": {}, "DEMO_VID": {}, "DEMO_ICL": {}}
    for k, (dataset, _, turns) in enumerate(CONVERSATIONS):
        if dataset in cfg:
            ids = [f"{dataset}_INS_{k:02d}_{t}" for t in range(len(turns))]
            for t in range(len(turns)):
                cfg[dataset][ids[t]] = ids[:t]
    n = len(IN_CONTEXT)
    for k in range(n):
        cfg["DEMO_ICL"][f"DEMO_ICL_INS_{k:02d}"] = [f"DEMO_ICL_INS_{(k + j) % n:02d}" for j in (1, 2)]
    return cfg


def write_images_parquet(path: Path, images: dict[str, bytes]) -> None:
    """Upstream layout: a pandas-style table indexed by image id with one `base64` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(images)
    table = pa.table({"base64": [base64.urlsafe_b64encode(images[i]).decode("ascii") for i in ids],
                      "id": ids})
    meta = {b"pandas": json.dumps({"index_columns": ["id"], "columns": []}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


def write_demo(out: str | Path, tokenizer: bool = True) -> Path:
    """Write the demo dataset (and a copy of the demo tokenizer) into `out`; returns the data YAML path."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = demo_images()
    write_images_parquet(out / "DEMO_images.parquet", {k: v for k, v in images.items() if "_VID_" not in k})
    write_images_parquet(out / "DEMO_VID_frames.parquet", {k: v for k, v in images.items() if "_VID_" in k})
    meta = {"version": "0.0.1", "time": "2024-01-01", "author": "otter-jax demo"}
    for name, data in demo_instructions().items():
        (out / f"{name}_instructions.json").write_text(json.dumps({"meta": meta, "data": data}, indent=1))
    for name, cfg in demo_train_configs().items():
        (out / f"{name}_train.json").write_text(json.dumps(cfg, indent=1))
    doc: dict[str, dict] = {}
    for name, group in GROUP.items():
        entry = {"mimicit_path": f"{name}_instructions.json", "num_samples": -1,
                 "task_description": f"demo {group.lower().replace('_', ' ')} data"}
        if group != "TEXT_ONLY":
            entry["images_path"] = "DEMO_VID_frames.parquet" if group == "VIDEO_TEXT" else "DEMO_images.parquet"
        if name != "DEMO_TXT":
            entry["train_config_path"] = f"{name}_train.json"
        doc.setdefault(group, {})[name] = entry
    (out / "demo.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    if tokenizer:
        shutil.copytree(TOKENIZER_DIR, out / "tokenizer", dirs_exist_ok=True)
    return out / "demo.yaml"


def demo_texts() -> list[str]:
    from otter_jax.data.episodes import chunk_text

    texts = [chunk_text(q, a, 1) for _, _, turns in CONVERSATIONS for q, a in turns]
    return texts + [chunk_text(q, a, 1) for _, q, a in IN_CONTEXT]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="regenerate the committed demo tokenizer")
    p.add_argument("--tokenizer", required=True, help="output folder")
    args = p.parse_args(argv)
    from otter_jax.data.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(demo_texts(), vocab_size=600).save_pretrained(args.tokenizer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
