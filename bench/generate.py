"""Generation speed on the bench-small shape: ours (jitted prefill + KV-cached decode loop) vs the original PyTorch
Otter's `generate` (otter-ai, cache on and off), side by side in one run, plus the weight-streaming floor.

    bash bench/setup_reference.sh            # once: .venv-ref with otter-ai + torch 2.13.0 + transformers 4.35.1
    .venv/bin/python bench/generate.py [--threads 2] [--skip-reference]

Measures, greedy, float32: time to first token (vision + perceiver + prefill + first token), steady decode ms/token
and new tokens/s at batch 1 and 8. The floor is the bytes of language-model weights one decode step must read
(decoder layers, gated blocks, lm_head) divided by the measured memory read bandwidth.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_shape, median_time, otter_hf_dict  # noqa: E402


def ours(shape: dict, reps: int, scan_layers: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from otter_jax import generate
    from otter_jax.models import Otter, OtterConfig, Policy, SpecialTokens

    cfg = OtterConfig.from_hf_dict(otter_hf_dict(shape))
    v = cfg.text.vocab_size
    import dataclasses
    cfg = dataclasses.replace(cfg, tokens=SpecialTokens(media=v - 3, endofchunk=v - 4, answer=v - 2, pad=v - 1))
    model = Otter(cfg, Policy(scan_layers=scan_layers), rngs=nnx.Rngs(0))
    g = shape["generate"]
    rng = np.random.default_rng(0)
    size = cfg.vision.image_size

    def inputs(batch):
        ids = rng.integers(3, v - 8, size=(batch, g["prompt_tokens"])).astype(np.int32)
        ids[:, 1] = cfg.tokens.media
        vx = rng.standard_normal((batch, g["images"], 1, 3, size, size)).astype(np.float32)
        return vx, ids

    out = {}
    for batch in (1, 8):
        vx, ids = inputs(batch)

        def run(n):
            return generate.generate(model, vx, ids, max_new_tokens=n, eos_token_id=-1).sequences

        first = median_time(lambda: run(1), reps)
        full = median_time(lambda: run(g["new_tokens"]), reps)
        step = (full - first) / (g["new_tokens"] - 1)
        out[f"batch{batch}"] = {"first_token_s": first, "decode_ms_per_step": step * 1e3,
                                "new_tokens_per_s": batch * g["new_tokens"] / full}
    # Weight-streaming floor of one decode step.
    lm_bytes = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        name = ".".join(map(str, path))
        if name.startswith(("groups.", "tail.", "norm.", "lm_head.")):
            lm_bytes += var.get_value().nbytes
    big = jnp.ones((256 * 2**20 // 4,), jnp.float32)  # 256 MiB, well past the caches
    reduce = jax.jit(lambda a: a.sum())
    reduce(big).block_until_ready()
    bw = big.nbytes / min(median_time(lambda: reduce(big).block_until_ready(), 7) for _ in range(2))
    out["floor"] = {"lm_weight_bytes": lm_bytes, "read_bandwidth_GBps": bw / 1e9, "floor_ms": lm_bytes / bw * 1e3}
    return out


def reference(shape: dict, threads: int, reps: int) -> dict:
    py = ROOT / ".venv-ref" / "bin" / "python"
    if not py.exists():
        raise SystemExit("no .venv-ref: run `bash bench/setup_reference.sh` first (or pass --skip-reference)")
    res = {}
    for phase in ("cache_on_b1", "cache_off_b1", "cache_on_b8"):  # each phase in a fresh process
        proc = subprocess.run([str(py), str(ROOT / "bench" / "reference_otter.py"), "generate", phase,
                               "--threads", str(threads), "--reps", str(reps)],
                              capture_output=True, text=True, cwd=ROOT / "bench")
        if proc.returncode:
            raise SystemExit(f"reference run failed ({phase}):\n{proc.stderr[-3000:]}")
        res[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--scanned", action="store_true",
                    help="our model in the stacked (scanned) layer layout; default: unrolled, the faster one on CPU")
    args = ap.parse_args()
    shape = load_shape()
    ref = None if args.skip_reference else reference(shape, args.threads, args.reps)
    o = ours(shape, args.reps, args.scanned)
    f = o["floor"]
    print(f"bench-small generate, greedy fp32, {args.threads} threads, prompt {shape['generate']['prompt_tokens']}"
          f" tokens + 1 image, {shape['generate']['new_tokens']} new tokens; our layers "
          f"{'scanned' if args.scanned else 'unrolled'}")
    print(f"floor: {f['lm_weight_bytes'] / 2**20:.0f} MiB of LM weights per step / "
          f"{f['read_bandwidth_GBps']:.1f} GB/s = {f['floor_ms']:.1f} ms/step")
    b1, b8 = o["batch1"], o["batch8"]
    print(f"ours  b1: first token {b1['first_token_s'] * 1e3:.0f} ms, decode {b1['decode_ms_per_step']:.1f} ms/step "
          f"({b1['decode_ms_per_step'] / f['floor_ms']:.2f}x floor), {b1['new_tokens_per_s']:.1f} tokens/s")
    print(f"ours  b8: first token {b8['first_token_s'] * 1e3:.0f} ms, decode {b8['decode_ms_per_step']:.1f} ms/step,"
          f" {b8['new_tokens_per_s']:.1f} tokens/s")
    if ref:
        on, off, on8 = ref["cache_on_b1"], ref["cache_off_b1"], ref["cache_on_b8"]
        print(f"upstream b1 cache on : first token {on['first_token_s'] * 1e3:.0f} ms, "
              f"decode {on['decode_ms_per_step']:.1f} ms/step, {on['new_tokens_per_s']:.1f} tokens/s")
        print(f"upstream b1 cache off: {off['new_tokens_per_s']:.1f} tokens/s")
        print(f"upstream b8 cache on : {on8['new_tokens_per_s']:.1f} tokens/s")
        print(f"ratios: b1 decode speed {on['decode_ms_per_step'] / b1['decode_ms_per_step']:.2f}x upstream cached "
              f"({off['new_tokens_per_s'] and b1['new_tokens_per_s'] / off['new_tokens_per_s']:.1f}x uncached); "
              f"b8 tokens/s {b8['new_tokens_per_s'] / on8['new_tokens_per_s']:.2f}x; "
              f"first token {b1['first_token_s'] / on['first_token_s']:.2f}x upstream's time")


if __name__ == "__main__":
    main()
