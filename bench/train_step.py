"""Train-step time: our jitted step vs the upstream PyTorch Otter (`otter-ai`), same shape, machine and cores.

    bash bench/setup_reference.sh                  # once: .venv-ref with otter-ai, torch 2.13.0 (CPU), transformers 4.35.1
    .venv/bin/python bench/train_step.py     # both sides, then the ratio

Shape: ../shared/bench/bench_small.json ("bench-small": real CLIP / perceiver / cross-attention widths, few layers),
float32, one train step = forward + backward + global-norm clipping + AdamW (weight decay on the gated
cross-attention weights), upstream trainable set. Each side runs in a fresh process pinned to the same cores
(`taskset`), with that many threads; the same token ids and pixels go to both; medians of `--reps` steps after
`--warmup` steps (our warm-up includes compilation, reported separately). On an accelerator (ours only, `--only
ours`) it also reports tokens/s and MFU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_SHAPE = os.path.join(ROOT, "..", "shared", "bench", "bench_small.json")


def batch_arrays(shape: dict, seed: int = 0):
    """numpy inputs both sides get: `<image>` chunks with supervised answers (Otter-LLaMA special ids)."""
    import numpy as np

    t = shape["train_step"]
    b, L, n_img = t["batch"], t["seq_len"], t["images_per_sample"]
    v = shape["text_llama"]["vocab_size"]
    endofchunk, media, answer = v - 4, v - 3, v - 2
    S = shape["vision"]["image_size"]
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, v - 4, (b, L)).astype(np.int64)
    labels = np.full((b, L), -100, np.int64)
    chunk = L // n_img
    for i in range(n_img):
        s = i * chunk
        ids[:, s], ids[:, s + chunk // 2], ids[:, s + chunk - 1] = media, answer, endofchunk
        labels[:, s + chunk // 2 + 1:s + chunk] = ids[:, s + chunk // 2 + 1:s + chunk]
    ids[:, 0] = 1
    vision = rng.standard_normal((b, n_img, t.get("frames", 1), 3, S, S)).astype(np.float32)
    return vision, ids, np.ones((b, L), np.int64), labels


def hf_dicts(shape: dict) -> tuple[dict, dict]:
    vision = {"model_type": "clip_vision_model", **shape["vision"]}
    text = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", **shape["text_llama"]}
    return vision, text


# ------------------------------------------------------------------------------------------------------------ ours
def run_ours(shape: dict, warmup: int, reps: int, scan_layers: bool) -> dict:
    import jax
    import ml_collections
    import numpy as np

    from otter_jax import config_files, sharding as S
    from otter_jax.models import presets
    from otter_jax.train import config as C, data, flops, optim, state as ST, step as STEP

    vision, text = hf_dicts(shape)
    d = presets.otter(text, cross_attn_every_n_layers=shape["cross_attention"]["every_n_layers"])
    d["vision_config"] = vision
    c = C.defaults()
    c.model = ml_collections.ConfigDict(d)
    c.optim.update(lr=1e-5, weight_decay=0.1, clip_norm=1.0, schedule="constant", warmup_steps=0)
    c.train.update(global_batch_size=shape["train_step"]["batch"], steps=1000)
    c.data.update(source="synthetic")
    c.policy.scan_layers = scan_layers
    mesh = S.make_mesh(data=-1)
    rules = C.parse_rules(c.rules)
    _, tokens = data.tokenizer_and_tokens(c, text["vocab_size"])
    cfg = C.model_config(c, tokens)
    ts = ST.create(cfg, config_files.policy(c), c, mesh, rules)
    fn = STEP.jit_train_step(ts, mesh, rules, 1, optim.schedule(c.optim, c.train.steps))
    vision_x, ids, mask, labels = batch_arrays(shape)
    sh = S.batch_sharding(mesh, rules, 2)
    batch = {"vision_x": jax.device_put(vision_x, sh), "input_ids": jax.device_put(ids.astype(np.int32), sh),
             "attention_mask": jax.device_put(mask.astype(np.int32), sh),
             "labels": jax.device_put(labels.astype(np.int32), sh)}
    state = ts.state
    t0 = time.perf_counter()
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        state, m = fn(state, batch)
    jax.block_until_ready(m)
    times, losses = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, m = fn(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
        losses.append(float(m["loss"]))
    b, L, n_img = ids.shape[0], ids.shape[1], vision_x.shape[1]
    step_flops = flops.train_flops(cfg, b, L, n_img, vision_x.shape[2])
    med = statistics.median(times)
    peak = flops.device_peak_flops(jax.devices()[0], "float32")
    out = {"side": "ours (JAX), layers " + ("scanned" if scan_layers else "unrolled"), "device": jax.devices()[0].device_kind, "first_step_incl_compile_s": first,
           "median_s": med, "times_s": times, "loss": losses[-1], "tokens_per_s": b * L / med,
           "model_tflops_per_s": step_flops / med / 1e12}
    if peak:
        out["mfu"] = step_flops / med / peak
    return out


# ------------------------------------------------------------------------------------------------------- upstream
def _word_tokenizer(path: str) -> None:
    """A 32000-token word-level stand-in for the LLaMA tokenizer the upstream constructor loads by name."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, 32000)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
                            ).save_pretrained(path)


def run_ref(shape: dict, warmup: int, reps: int, threads: int) -> dict:
    import tempfile

    import torch
    from otter_ai.models.otter.configuration_otter import OtterConfig
    from otter_ai.models.otter.modeling_otter import OtterForConditionalGeneration

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vision, text = hf_dicts(shape)
    text["_name_or_path"] = "luodian/llama-7b-hf"
    work = tempfile.mkdtemp(prefix="otter-ref-")
    _word_tokenizer(os.path.join(work, text["_name_or_path"]))
    cwd = os.getcwd()
    os.chdir(work)  # the constructor loads the tokenizer from this relative path
    try:
        cfg = OtterConfig(vision_config=vision, text_config=text,
                          cross_attn_every_n_layers=shape["cross_attention"]["every_n_layers"])
        model = OtterForConditionalGeneration(cfg)
    finally:
        os.chdir(cwd)
    assert model.media_token_id == text["vocab_size"] - 3, model.media_token_id
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = "gated_cross_attn" in name and not any(k in name for k in ("ff_gate", "attn_gate", "norm", "bias"))
            (decay if wd else no_decay).append(p)
    params = decay + no_decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-5)
    vision_x, ids, mask, labels = (torch.from_numpy(a) for a in batch_arrays(shape))

    def step():
        loss = model(vision_x=vision_x, lang_x=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    for _ in range(warmup):
        step()
    times, losses = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    b, L = ids.shape
    return {"side": "upstream otter-ai (PyTorch)", "device": "cpu", "median_s": med, "times_s": times,
            "loss": losses[-1], "tokens_per_s": b * L / med, "trainable_params": sum(p.numel() for p in params),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------------------ main
def worker(args) -> None:
    with open(args.shape) as fh:
        shape = json.load(fh)
    out = (run_ours(shape, args.warmup, args.reps, args.worker == "ours_scanned") if args.worker.startswith("ours")
           else run_ref(shape, args.warmup, args.reps, args.threads))
    print("RESULT " + json.dumps(out), flush=True)


def spawn(python: str, side: str, args) -> dict:
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:args.threads])
    cmd = ["taskset", "-c", cores, python, os.path.abspath(__file__), "--worker", side, "--shape", args.shape,
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TF_CPP_MIN_LOG_LEVEL="2")
    if side.startswith("ours") and not args.accelerator:
        env["JAX_PLATFORMS"] = "cpu"  # XLA's CPU thread pool follows the pinned cores
    if args.accelerator:
        cmd = cmd[3:]  # no core pinning on the accelerator machine
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{side} worker failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default=DEFAULT_SHAPE, help="bench shape JSON (default ../shared/bench/bench_small.json)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cores/threads for both sides")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ref-python", default=os.path.join(ROOT, ".venv-ref", "bin", "python"))
    p.add_argument("--only", choices=("ours", "ref"), help="run one side")
    p.add_argument("--accelerator", action="store_true", help="ours on the default jax backend (GPU/TPU), unpinned")
    p.add_argument("--worker", choices=("ours", "ours_scanned", "ref"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if not os.path.exists(args.shape):
        raise SystemExit(f"{args.shape}: no such shape file")
    results = []
    if args.only != "ref":
        results.append(spawn(sys.executable, "ours", args))
        results.append(spawn(sys.executable, "ours_scanned", args))
    if args.only != "ours":
        if not os.path.exists(args.ref_python):
            raise SystemExit(f"{args.ref_python} not found: run bash bench/setup_reference.sh first")
        results.append(spawn(args.ref_python, "ref", args))
    print(f"bench-small train step (B=2, L=256, 2 images/sample, float32), {args.threads} threads, "
          f"median of {args.reps} after {args.warmup} warm-up steps")
    for r in results:
        extra = (f", first step incl. compile {r['first_step_incl_compile_s']:.1f} s"
                 if "first_step_incl_compile_s" in r else "")
        mfu = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
        print(f"  {r['side']:<30} {r['median_s']:.3f} s/step  {r['tokens_per_s']:,.0f} tokens/s  "
              f"loss {r['loss']:.4f} [{r['device']}]{mfu}{extra}")
    if len(results) == 3:
        for r in results[:2]:
            print(f"  speed-up (upstream / {r['side']}): {results[2]['median_s'] / r['median_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
