"""Runs INSIDE .venv-ref (torch 2.13.0, transformers 4.35.1, otter-ai): times the original PyTorch Otter on the
bench-small shape and prints one JSON line. Called by the bench scripts, one phase per fresh process.

    .venv-ref/bin/python bench/reference_otter.py generate cache_on_b1 --threads 2 --reps 5
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_shape, median_time, otter_hf_dict  # noqa: E402

TOKENIZER_DIR = "llama-bench-tokenizer"  # the upstream constructor loads the tokenizer by this relative name


def make_tokenizer(n: int = 32000) -> None:
    """A word-level tokenizer with 32000 base tokens (no hub access); the constructor adds Otter's 4 tokens."""
    if os.path.exists(os.path.join(TOKENIZER_DIR, "tokenizer.json")):
        return
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, n)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
                            ).save_pretrained(TOKENIZER_DIR)


def build_model(shape: dict):
    import torch
    from otter_ai import OtterForConditionalGeneration
    from otter_ai.models.otter.configuration_otter import OtterConfig

    make_tokenizer()
    d = otter_hf_dict(shape)
    text = {**d["text_config"], "_name_or_path": TOKENIZER_DIR}  # vocab 32004, as released configs say
    cfg = OtterConfig(vision_config=d["vision_config"], text_config=text,
                      cross_attn_every_n_layers=d["cross_attn_every_n_layers"])
    torch.manual_seed(0)
    return OtterForConditionalGeneration(cfg).eval()


def time_generate(phase: str, reps: int) -> dict:
    import torch

    shape = load_shape()
    model = build_model(shape)
    g = shape["generate"]
    batch = 8 if phase.endswith("b8") else 1
    use_cache = phase.startswith("cache_on")
    size = shape["vision"]["image_size"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 31990, (batch, g["prompt_tokens"]), generator=gen)
    ids[:, 1] = model.media_token_id
    vx = torch.randn(batch, g["images"], 1, 3, size, size, generator=gen)
    mask = torch.ones_like(ids)

    def run(n):
        with torch.inference_mode():
            return model.generate(vx, ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, num_beams=1,
                                  do_sample=False, use_cache=use_cache)

    first = median_time(lambda: run(1), reps)
    full = median_time(lambda: run(g["new_tokens"]), reps)
    return {"first_token_s": first, "decode_ms_per_step": (full - first) / (g["new_tokens"] - 1) * 1e3,
            "new_tokens_per_s": batch * g["new_tokens"] / full}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["generate"])
    ap.add_argument("phase")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t = time.time()
    result = time_generate(args.phase, args.reps)
    result["wall_s"] = time.time() - t
    print(json.dumps(result))


if __name__ == "__main__":
    main()
