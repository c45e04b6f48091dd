"""`otter-jax forward`: run a checkpoint on arrays from an .npz (vision_x, input_ids, attention_mask[, labels]) and
report the loss and logits, optionally against reference outputs (e.g. the golden fixtures of the original model)."""
from __future__ import annotations

import argparse
import time

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="otter-jax checkpoint directory (from `otter-jax convert --from-torch`)")
    src.add_argument("--from-torch", help="Otter checkpoint in the original HF layout, converted on the fly")
    p.add_argument("--inputs", required=True, help=".npz with vision_x [B,T,F,3,H,W], input_ids, attention_mask")
    p.add_argument("--compare", help=".npz with reference `logits` (and `loss`) to compare against")
    p.add_argument("--save", help="write our logits (and loss) to this .npz")
    p.add_argument("--tokenizer", help="with --from-torch: tokenizer folder for the special token ids when the "
                                       "checkpoint has no tokenizer files (default: the original's rule)")


def run(args: argparse.Namespace) -> int:
    from otter_jax import checkpoint, convert

    t0 = time.time()
    model, cfg = (checkpoint.load_model(args.checkpoint) if args.checkpoint
                  else convert.load_torch_checkpoint(args.from_torch, tokenizer=args.tokenizer))
    inputs = dict(np.load(args.inputs))
    missing = [k for k in ("vision_x", "input_ids") if k not in inputs]
    if missing:
        raise SystemExit(f"{args.inputs}: missing array(s) {', '.join(missing)}")
    out = model(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                labels=inputs.get("labels"))
    logits = np.asarray(out.logits)
    print(f"model: {cfg.text_model_type}, {cfg.num_layers} layers, cross-attention before layers "
          f"{cfg.xattn_layer_indices}; loaded and ran in {time.time() - t0:.1f}s")
    print(f"logits {list(logits.shape)}" + (f", loss {float(out.loss):.6f}" if out.loss is not None else ""))
    status = 0
    if args.compare:
        ref = dict(np.load(args.compare))
        diff = float(np.abs(logits - ref["logits"]).max())
        print(f"max |logits - reference| = {diff:.3e}" + ("  (within 1e-4)" if diff <= 1e-4 else "  (ABOVE 1e-4)"))
        if "loss" in ref and out.loss is not None:
            print(f"|loss - reference| = {abs(float(out.loss) - float(ref['loss'])):.3e}")
        status = 0 if diff <= 1e-4 else 1
    if args.save:
        np.savez(args.save, logits=logits, **({"loss": np.asarray(out.loss)} if out.loss is not None else {}))
    return status
