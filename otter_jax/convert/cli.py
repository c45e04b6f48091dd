"""`otter-jax convert`: original Otter checkpoints (HF layout, PyTorch) <-> otter-jax checkpoints (orbax)."""
from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-torch", metavar="SRC_DIR",
                     help="Otter HF directory: config.json + model.safetensors / shards with index / pytorch_model*.bin")
    src.add_argument("--to-torch", metavar="CKPT_DIR", help="otter-jax checkpoint directory to export")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="parameter dtype of the output (default: float32 in, unchanged out)")
    p.add_argument("--max-shard-gb", type=float, default=None,
                   help="with --to-torch: split model.safetensors into shards of at most this size, with an index")


def run(args: argparse.Namespace) -> int:
    import jax
    from flax import nnx

    from otter_jax import checkpoint
    from otter_jax.convert import otter_hf
    from otter_jax.models.config import Policy

    t0 = time.time()
    if args.from_torch:
        policy = Policy(param_dtype=args.dtype or "float32")
        print(f"reading {args.from_torch} ...", flush=True)
        model, cfg = otter_hf.load_torch_checkpoint(args.from_torch, policy=policy)
        checkpoint.save_model(model, cfg, args.out, tokenizer_dir=args.from_torch)
    else:
        print(f"reading {args.to_torch} ...", flush=True)
        model, cfg = checkpoint.load_model(args.to_torch)
        shard = int(args.max_shard_gb * 2**30) if args.max_shard_gb else None
        otter_hf.save_torch_checkpoint(model, cfg, args.out, max_shard_bytes=shard, tokenizer_dir=args.to_torch,
                                       dtype=args.dtype)
    n = sum(a.size for a in jax.tree.leaves(nnx.state(model)))
    print(f"wrote {args.out}: {n:,} parameters, {cfg.text_model_type} text model, {time.time() - t0:.1f}s")
    return 0
