"""Loader throughput and peak RSS: our store + grain loader vs the naive upstream path, same data, same run.

Naive path (what upstream training does): json.load the whole base64 images JSON at start-up, then per episode
base64-decode, PIL open + RGB + 224 bicubic resize, float32 CLIP normalisation on the host, tokenise.
Ours: the ArrayRecord store (built once, timed separately) read by the grain pipeline in ONE process with ONE thread
(so the ratio is per worker), uint8 pixels (normalised later on the device), the loader's default resampler
(reduced-scale JPEG decode + OpenCV bicubic, see otter_jax/data/images.py); also shown with float32 host pixels
and with 2 read threads in the one process (decoding and resizing release the GIL).
"naive, same decode": the naive path given OUR decode and resize (the loader's `decode_resize` with its default
resampler, uint8 pixels, normalised later as ours are), so its ratio isolates the store + loader from the image
tricks; both baselines are printed.
"per CPU-s" divides by the process's CPU time instead of wall time: the fair per-worker figure when a path
keeps more than one core busy (grain's read thread overlaps with the main thread's batching).
Each measurement runs in its own subprocess so that peak RSS (VmHWM) belongs to that path alone. Both paths are
timed with their data in RAM: the naive path's json.load holds every image, and ours first has its store files read
once into the page cache (not counted in its RSS, as the naive path's start-up read is not counted in its time).
Data: COCO-sized (640x480) JPEG re-encodings of scikit-image photographs (a pool of distinct variants, cycled),
one IMAGE_TEXT episode per image.

  python bench/data_loader.py --sizes 2000 10000 --episodes 600 --work /tmp/otter_bench
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_dataset(out: Path, n: int, pool: int = 64) -> Path:
    """Instructions JSON + base64 images JSON (the format users OOM on) + data YAML for n images."""
    from PIL import Image
    from skimage import data as skdata

    if (out / "data.yaml").exists():
        return out / "data.yaml"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
             "retina.jpg", "ihc.png"]
    photos = [Image.open(Path(skdata.__file__).parent / n).convert("RGB") for n in names]
    variants = []
    for k in range(pool):  # distinct 640x480 JPEGs: random crop, flip and tint of a photograph
        im = photos[k % len(photos)]
        w, h = im.size
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        v = im.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.BICUBIC)
        if k % 2:
            v = v.transpose(Image.FLIP_LEFT_RIGHT)
        v = Image.fromarray(np.clip(np.asarray(v) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        v.save(buf, "JPEG", quality=85)
        variants.append(base64.urlsafe_b64encode(buf.getvalue()).decode("ascii"))
    words = "a the red small dog cat car picture shows near on with of two people table street sky".split()
    with open(out / "images.json", "w") as fh:  # streamed write: bench generation itself stays small
        fh.write("{")
        for i in range(n):
            fh.write(("," if i else "") + json.dumps(f"BENCH_IMG_{i:07d}") + ":" + json.dumps(variants[i % pool]))
        fh.write("}")
    data = {f"BENCH_INS_{i:07d}": {
        "instruction": "What is in the picture " + " ".join(rng.choice(words, 6)) + "?",
        "answer": " ".join(rng.choice(words, 20)) + ".", "image_ids": [f"BENCH_IMG_{i:07d}"], "rel_ins_ids": []}
        for i in range(n)}
    (out / "instructions.json").write_text(json.dumps({"meta": {}, "data": data}))
    (out / "data.yaml").write_text(f"IMAGE_TEXT:\n  BENCH:\n    mimicit_path: instructions.json\n"
                                   f"    images_path: images.json\n    num_samples: -1\n")
    return out / "data.yaml"


def _peak_rss_mib() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss would carry the parent's peak across fork+exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(store: str, tokenizer: str, episodes: int, pixel_dtype: str, threads: int = 1) -> dict:
    from otter_jax.data import loader
    from otter_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    cfg = loader.LoaderConfig(batch_size=8, max_seq_len=256, image_size=224, seed=0, num_threads=threads, num_workers=0,
                              pixel_dtype=pixel_dtype, shard_index=0, shard_count=1, max_media=1)
    t0 = time.perf_counter()
    it = loader.make_loader(store, tok, cfg)
    for _ in range(2):
        next(it)  # warm-up (opens shards, fills the read-ahead)
    startup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    while n < episodes:
        n += len(next(it)["input_ids"])
    return {"startup_s": startup, "eps": n / (time.perf_counter() - t0), "eps_per_cpu_s": n / (time.process_time() - c0),
            "peak_rss_mib": _peak_rss_mib()}


def run_naive(root: str, tokenizer: str, episodes: int, same_decode: bool = False) -> dict:
    """Upstream's path; with `same_decode`, images go through our decode_resize (loader default resampler, uint8)."""
    from PIL import Image

    from otter_jax.data import episodes as ep_lib
    from otter_jax.data.images import CLIP_MEAN, CLIP_STD, decode_resize
    from otter_jax.data.loader import LoaderConfig
    from otter_jax.data.tokenizer import load_tokenizer, special_ids

    tok = load_tokenizer(tokenizer)
    sp = special_ids(tok)
    t0 = time.perf_counter()
    with open(Path(root) / "images.json") as fh:
        images = json.load(fh)  # the whole file in memory, as upstream
    data = json.loads((Path(root) / "instructions.json").read_text())["data"]
    startup = time.perf_counter() - t0
    mean = np.asarray(CLIP_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(CLIP_STD, np.float32).reshape(3, 1, 1)
    keys = list(data)
    order = np.random.default_rng(0).permutation(len(keys))
    resampler = LoaderConfig.resampler
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(episodes):
        rec = data[keys[order[k % len(keys)]]]
        pix = []
        for image_id in rec["image_ids"]:
            raw = base64.urlsafe_b64decode(images[image_id])
            if same_decode:
                pix.append(decode_resize(raw, 224, "squash", resampler))
                continue
            im = Image.open(io.BytesIO(raw)).convert("RGB")
            im = im.resize((224, 224), Image.BICUBIC)
            pix.append((np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std)
        ids = ep_lib.encode(ep_lib.chunk_text(rec["instruction"], rec["answer"], 1), tok, sp)
        ep_lib.make_labels(ids, sp)
        np.stack(pix)
    return {"startup_s": startup, "eps": episodes / (time.perf_counter() - t0),
            "eps_per_cpu_s": episodes / (time.process_time() - c0), "peak_rss_mib": _peak_rss_mib()}


def _warm_page_cache(store: Path) -> None:
    """Read every store file once, so that ours, like the naive path (whose json.load holds all images in memory),
    is timed with its data in RAM. Without this, the timing depends on what the host has evicted since the store
    was built (this VM reclaims cold pages): up to 0.4 ms per random 70 KB read instead of 0.02 ms."""
    for f in sorted(store.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def _subprocess(args: list[str]) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--episodes", type=int, default=600, help="episodes timed per path")
    p.add_argument("--work", default="/tmp/otter_bench")
    p.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    tokenizer = str(ROOT / "otter_jax" / "data" / "demo" / "tokenizer")
    if args._child:
        kind, path, episodes = args._child[0], args._child[1], int(args._child[2])
        if kind in ("naive", "naive_same"):
            res = run_naive(path, tokenizer, episodes, same_decode=kind == "naive_same")
        else:
            res = run_ours(path, tokenizer, episodes, kind.split("_")[0], threads=2 if kind.endswith("_2t") else 1)
        print(json.dumps(res))
        return 0
    from otter_jax.quiet import quiet_output
    quiet_output()   # no TFDS "Downloading and preparing" lines or progress bars in the printed table
    from otter_jax.data.ingest import build_store

    rows = []
    for n in args.sizes:
        root = Path(args.work) / f"n{n}"
        t0 = time.perf_counter()
        yaml_path = make_dataset(root, n)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_store(yaml_path, root / "store", log=lambda s: None)
        ingest_s = time.perf_counter() - t0
        size_mib = (root / "images.json").stat().st_size / 2**20
        res = {}
        for k in ("naive", "naive_same", "uint8", "float32", "uint8_2t"):
            naive = k.startswith("naive")
            if not naive:
                _warm_page_cache(root / "store")
            res[k] = _subprocess(["--_child", k, str(root if naive else root / "store"), str(args.episodes)])
        rows.append((n, size_mib, gen_s, ingest_s, res))
        print(f"n={n}: images.json {size_mib:.0f} MiB (generated in {gen_s:.0f}s), store built in {ingest_s:.0f}s",
              flush=True)
    print(f"\n{'images':>7} {'path':<26} {'episodes/s':>10} {'startup s':>9} {'peak RSS MiB':>12} "
          f"{'vs naive':>9} {'vs naive same decode':>20} {'per CPU-s vs naive':>18}")
    for n, _, _, _, res in rows:
        base, same = res["naive"]["eps"], res["naive_same"]["eps"]
        for k, label in (("naive", "naive (json+PIL)"), ("naive_same", "naive, same decode/resize"),
                         ("uint8", "ours uint8, 1 thread"), ("float32", "ours float32, 1 thread"),
                         ("uint8_2t", "ours uint8, 2 threads")):
            r = res[k]
            print(f"{n:>7} {label:<26} {r['eps']:>10.1f} {r['startup_s']:>9.2f} {r['peak_rss_mib']:>12.0f} "
                  f"{r['eps'] / base:>8.2f}x {r['eps'] / same:>19.2f}x "
                  f"{r['eps_per_cpu_s'] / res['naive']['eps_per_cpu_s']:>17.2f}x")
    if len(rows) >= 2:
        (n0, *_, r0), (n1, *_, r1) = rows[0], rows[-1]
        for k in ("naive", "uint8"):
            print(f"peak RSS growth {n0} -> {n1} images, {k}: {r1[k]['peak_rss_mib'] / r0[k]['peak_rss_mib']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
