"""`otter-jax serve` under concurrent clients vs the same requests through sequential `generate()`, one run.

Prints throughput (completion tokens/s, requests/s), p50/p95 latency and time to first token for: `generate()`
called once per request in this process (what a script without a server does), the server with one client at a
time, and the server with --concurrency clients (streamed, so the first token's arrival is measured). Every side
gets the same requests (one image + a question each, greedy, the same max_tokens) and is warmed up first, so no
compile time is counted. Default model: the tiny golden Otter of ../shared/golden (converted to a temporary
checkpoint); --checkpoint DIR for a real one.

    .venv/bin/python bench/serve.py [--checkpoint DIR] [--requests 16] [--concurrency 8] [--max-tokens 16]
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_TINY = ROOT.parent / "shared" / "golden" / "otter_llama_tiny"
QUESTIONS = ["what is in the picture?", "what color is the car?", "what is the man holding?", "where is the dog?"]


def make_images(d: pathlib.Path, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = d / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (64 + i, 80, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summary(wall, lat, ttft, tokens) -> dict:
    return {"tokens/s": tokens / wall, "requests/s": len(lat) / wall, "p50 latency ms": 1e3 * statistics.median(lat),
            "p95 latency ms": 1e3 * pct(lat, 95), "p50 TTFT ms": 1e3 * statistics.median(ttft),
            "p95 TTFT ms": 1e3 * pct(ttft, 95), "completion tokens": tokens}


def sequential_generate(ckpt: str, images: list[str], max_tokens: int, dtype: str) -> dict:
    """`generate()` once per request, as `otter-jax generate` runs one (it returns only at the end: TTFT = latency)."""
    from otter_jax import generate
    from otter_jax.generate.cli import load_for_decoding
    from otter_jax.generate.requests import Request, make_batch

    model, cfg, tok, _ = load_for_decoding(ckpt, dtype)
    eoc = cfg.tokens.endofchunk

    def one(i):
        req = Request(prompt=QUESTIONS[i % len(QUESTIONS)], images=[images[i]])
        batch = make_batch([req], tok, image_size=cfg.vision.image_size, pad_id=cfg.tokens.pad)
        seq = generate.generate(model, batch["vision_x"], batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=max_tokens).sequences[0, batch["input_ids"].shape[1]:]
        stops = np.flatnonzero(seq == eoc)
        return int(stops[0]) + 1 if len(stops) else len(seq)  # tokens decoded, <|endofchunk|> included

    one(0)  # compile
    lat, tokens, t0 = [], 0, time.perf_counter()
    for i in range(len(images)):
        t = time.perf_counter()
        tokens += one(i)
        lat.append(time.perf_counter() - t)
    return summary(time.perf_counter() - t0, lat, lat, tokens)


def start_server(ckpt: str, args) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "PYTHONPATH": str(ROOT)}
    buckets = sorted({1, 2, 4, 8, args.concurrency})
    cmd = [sys.executable, "-m", "otter_jax.cli", "serve", "--checkpoint", ckpt, "--port", "0", "--model-name", "m",
           "--dtype", args.dtype, "--batch-sizes", ",".join(str(b) for b in buckets if b <= args.concurrency),
           "--new-token-buckets", str(2 * args.max_tokens), "--warmup"]
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        if " on http://" in line:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, line.split(" on ")[1].strip()
    raise SystemExit(f"the server exited with status {p.wait()}")


def serve_clients(url: str, images: list[str], max_tokens: int, concurrency: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    urls = ["data:image/png;base64," + base64.b64encode(pathlib.Path(p).read_bytes()).decode() for p in images]

    def one(i):
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": urls[i]}},
                                             {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]
        t = time.perf_counter()
        first, used = None, 0
        for chunk in client.chat.completions.create(model="m", messages=msgs, max_tokens=max_tokens, stream=True,
                                                    stream_options={"include_usage": True}):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t
            if chunk.usage:
                used = chunk.usage.completion_tokens
        total = time.perf_counter() - t
        return total, total if first is None else first, used

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(images))))  # warm: every batch shape this load reaches gets compiled
        t0 = time.perf_counter()
        res = list(pool.map(one, range(len(images))))
    wall = time.perf_counter() - t0
    return summary(wall, [r[0] for r in res], [r[1] for r in res], sum(r[2] for r in res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="otter-jax checkpoint (default: the tiny golden Otter, converted)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        ckpt = args.checkpoint
        if ckpt is None:
            if not GOLDEN_TINY.is_dir():
                raise SystemExit(f"{GOLDEN_TINY} not found: pass --checkpoint DIR")
            from otter_jax.cli import main as cli_main
            if cli_main(["convert", "--from-torch", str(GOLDEN_TINY), "--out", str(tmp / "ckpt")]) != 0:
                raise SystemExit("conversion failed")
            ckpt = str(tmp / "ckpt")
        images = make_images(tmp, args.requests)
        print(f"{args.requests} requests (1 image + a question each), greedy, max_tokens {args.max_tokens}, "
              f"{args.dtype}, checkpoint {args.checkpoint or 'tiny golden Otter'}", flush=True)
        cols = {"generate() sequential": sequential_generate(ckpt, images, args.max_tokens, args.dtype)}
        proc, url = start_server(ckpt, args)
        try:
            cols["serve, 1 client"] = serve_clients(url, images, args.max_tokens, 1)
            cols[f"serve, {args.concurrency} clients"] = serve_clients(url, images, args.max_tokens,
                                                                       args.concurrency)
            import json
            import urllib.request
            with urllib.request.urlopen(url.replace("/v1", "/health")) as r:
                health = json.load(r)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    names = list(cols)
    width = max(len(n) for n in names) + 2
    print(f"{'':<16}" + "".join(f"{n:>{width}}" for n in names))
    for key in cols[names[0]]:
        print(f"{key:<16}" + "".join(f"{cols[n][key]:>{width}.1f}" if isinstance(cols[n][key], float)
                                     else f"{cols[n][key]:>{width}}" for n in names))
    print(f"server: {health['batches']} batches, {health['joined']} joins, {health['steps']} decode steps, "
          f"compiled shapes {health['compiled_shapes']}")
    print("(generate() returns all tokens at the end, so its time to first token is its latency)")


if __name__ == "__main__":
    main()
