"""`otter-jax convert`: original Otter checkpoints (HF layout, PyTorch) and OpenFlamingo checkpoints <-> otter-jax
checkpoints (orbax); and a model out of any training checkpoint (`--from-checkpoint runs/x/checkpoints/300`)."""
from __future__ import annotations

import argparse
import tempfile
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from otter_jax.convert.init_builder import add_shape_arguments

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-torch", metavar="SRC_DIR",
                     help="Otter HF directory: config.json + model.safetensors / shards with index / "
                          "pytorch_model*.bin")
    src.add_argument("--to-torch", metavar="CKPT_DIR",
                     help="otter-jax model directory, or a training checkpoint (runs/x/checkpoints/STEP), to export")
    src.add_argument("--from-checkpoint", metavar="STEP_DIR",
                     help="training checkpoint of `otter-jax train` (runs/x/checkpoints/300; a checkpoints folder or a "
                          "workdir means its newest step): write its model as an otter-jax model directory")
    src.add_argument("--from-openflamingo", metavar="CHECKPOINT",
                     help="OpenFlamingo state dict or training checkpoint (.safetensors / checkpoint.pt / .bin); "
                          "needs --lm, and --vision when it has no vision tower")
    src.add_argument("--to-openflamingo", metavar="CKPT_DIR",
                     help="otter-jax checkpoint directory to export as an OpenFlamingo file (--out FILE)")
    p.add_argument("--out", required=True,
                   help="output directory (must not exist or be empty); with --to-openflamingo a new file whose "
                        "suffix (.safetensors, .pt, .bin) picks the format")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="parameter dtype of the output (default: float32 in, unchanged out)")
    p.add_argument("--max-shard-gb", type=float, default=None,
                   help="with --to-torch: split model.safetensors into shards of at most this size, with an index")
    of = p.add_argument_group("OpenFlamingo")
    of.add_argument("--lm", help="base LM directory (HF LLaMA / MPT): config always, weights for what the "
                                 "checkpoint lacks, tokenizer unless --tokenizer")
    of.add_argument("--vision", help="vision tower for a checkpoint without one: HF CLIP directory or open_clip "
                                     "state dict")
    of.add_argument("--tokenizer", help="tokenizer directory (default: --lm); OpenFlamingo's tokens are added")
    of.add_argument("--trainable-only", action="store_true",
                    help="with --to-openflamingo: write the training checkpoint (trainable parameters + input "
                         "embeddings), as OpenFlamingo's filter_state_dict_to_trainable does")
    add_shape_arguments(of)


def run(args: argparse.Namespace) -> int:
    import jax
    from flax import nnx

    from otter_jax import checkpoint
    from otter_jax.convert import openflamingo, otter_hf
    from otter_jax.convert.init_builder import flamingo_args
    from otter_jax.models.config import Policy

    t0 = time.time()
    if args.from_checkpoint:
        print(f"reading {args.from_checkpoint} ...", flush=True)
        model, cfg, tok_dir = checkpoint.load_training_checkpoint(args.from_checkpoint)
        if args.dtype:
            model = _cast(model, args.dtype)
        checkpoint.save_model(model, cfg, args.out, tokenizer_dir=_existing(tok_dir))
    elif args.from_torch:
        policy = Policy(param_dtype=args.dtype or "float32")
        print(f"reading {args.from_torch} ...", flush=True)
        model, cfg = otter_hf.load_torch_checkpoint(args.from_torch, policy=policy)
        checkpoint.save_model(model, cfg, args.out, tokenizer_dir=args.from_torch)
    elif args.from_openflamingo:
        if not args.lm:
            raise SystemExit("--from-openflamingo needs --lm (the base language model directory)")
        print(f"reading {args.from_openflamingo} ...", flush=True)
        with tempfile.TemporaryDirectory() as tok_dir:
            model, cfg = openflamingo.load_openflamingo(
                args.from_openflamingo, args.lm, args.vision, tokenizer=args.tokenizer, tokenizer_out=tok_dir,
                args=flamingo_args(args), policy=Policy(param_dtype=args.dtype or "float32"))
            checkpoint.save_model(model, cfg, args.out, tokenizer_dir=tok_dir)
    elif args.to_openflamingo:
        print(f"reading {args.to_openflamingo} ...", flush=True)
        model, cfg = checkpoint.load_model(args.to_openflamingo)
        openflamingo.save_openflamingo(model, cfg, args.out, trainable_only=args.trainable_only, dtype=args.dtype)
    else:
        print(f"reading {args.to_torch} ...", flush=True)
        tok_dir = args.to_torch
        if checkpoint.training_checkpoint_step(args.to_torch) is not None:  # straight from a training checkpoint
            model, cfg, tok_dir = checkpoint.load_training_checkpoint(args.to_torch)
            tok_dir = _existing(tok_dir)
        else:
            model, cfg = checkpoint.load_model(args.to_torch)
        shard = int(args.max_shard_gb * 2**30) if args.max_shard_gb else None
        otter_hf.save_torch_checkpoint(model, cfg, args.out, max_shard_bytes=shard, tokenizer_dir=tok_dir,
                                       dtype=args.dtype)
    n = sum(a.size for a in jax.tree.leaves(nnx.state(model)))
    print(f"wrote {args.out}: {n:,} parameters, {cfg.text_model_type} text model, {time.time() - t0:.1f}s")
    return 0



def _existing(tokenizer_dir: str | None) -> str | None:
    """The run's tokenizer folder if it is still there (the model is written without tokenizer files otherwise)."""
    from etils import epath

    if tokenizer_dir and epath.Path(tokenizer_dir).is_dir():
        return tokenizer_dir
    if tokenizer_dir:
        print(f"warning: the run's tokenizer {tokenizer_dir} is gone; the model is written without tokenizer files")
    return None


def _cast(model, dtype: str):
    """Floating-point parameters in `dtype` (--dtype with --from-checkpoint)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, state)
    return nnx.merge(graphdef, state)
