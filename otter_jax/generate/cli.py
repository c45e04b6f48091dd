"""`otter-jax generate`: answer questions about images or a video, optionally with in-context examples; or a whole
JSONL of requests (resumable: ids already answered in the output file are skipped)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="otter-jax checkpoint directory (with its tokenizer files)")
    p.add_argument("--image", action="append", default=[], help="query image (repeatable: one media each)")
    p.add_argument("--video", nargs="+", default=[], help="a folder of frames, or frame files in order")
    p.add_argument("--prompt", help="the question")
    p.add_argument("--in-context", action="append", default=[], metavar="IMG:QUESTION:ANSWER",
                   help="an in-context example (repeatable, in order)")
    p.add_argument("--requests", help="JSONL of requests: {id, prompt, images|video, in_context: [{image, "
                                      "question, answer}]}")
    p.add_argument("--out", help="with --requests: JSONL of answers {id, answer}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-frames", type=int, default=None, help="resample video clips to this many frames")
    p.add_argument("--resize", choices=["squash", "crop"], default="squash")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights and compute dtype (bfloat16 halves a 7B model's memory: ~16 GiB)")
    p.add_argument("--mesh", default="", metavar="data=N,fsdp=N,tensor=N",
                   help="load the weights sharded over a mesh of this host's devices (e.g. fsdp=-1 or tensor=8); "
                        "requests are split over its batch axes")
    p.add_argument("--prompt-bucket", type=int, default=64,
                   help="left-pad prompts to a multiple of this many tokens, so new lengths reuse compiled programs")


def parse_mesh(text: str) -> dict[str, int]:
    """"data=1,fsdp=-1" -> {"data": 1, "fsdp": -1}; unknown axes and bad numbers are refused by name."""
    from otter_jax.sharding import MESH_AXES

    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        if name not in MESH_AXES:
            raise SystemExit(f"--mesh {text!r}: unknown axis {name!r} (axes: {', '.join(MESH_AXES)})")
        try:
            out[name] = int(value)
        except ValueError:
            raise SystemExit(f"--mesh {text!r}: {name} needs an integer size, got {value!r}") from None
    return out


def _single_request(args):
    from otter_jax.generate.requests import Example, Request, frame_files

    if not args.prompt:
        raise SystemExit("--prompt is required (or use --requests FILE.jsonl)")
    ctx = []
    for spec in args.in_context:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            raise SystemExit(f"--in-context {spec!r}: expected IMAGE:QUESTION:ANSWER")
        ctx.append(Example(*parts))
    video = args.video
    if len(video) == 1 and os.path.isdir(video[0]):
        video = frame_files(video[0])
    return Request(prompt=args.prompt, images=args.image, video=video, in_context=ctx)


def _read_requests(path: str):
    from otter_jax.generate.requests import Request

    reqs = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{n}: invalid JSON ({e})")
                reqs.append(Request.from_dict(d, where=f"{path}:{n}"))
    ids = [r.id for r in reqs]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: request ids must be unique")
    return reqs


def load_for_decoding(checkpoint_dir: str, dtype: str = "float32", mesh_text: str = ""):
    """(model, cfg, tokenizer, mesh) as `generate` and `serve` load them: unrolled layers, weights in `dtype`,
    sharded over `--mesh` when given. One function so both commands decode the same model the same way."""
    from otter_jax import checkpoint
    from otter_jax import sharding as S
    from otter_jax.generate.requests import load_checkpoint_tokenizer
    from otter_jax.models import Policy

    mesh = S.make_mesh(**parse_mesh(mesh_text)) if mesh_text else None
    policy = Policy(dtype=dtype, param_dtype=dtype, scan_layers=False)  # decoding runs layer by layer
    model, cfg = checkpoint.load_model(checkpoint_dir, policy, mesh=mesh)
    return model, cfg, load_checkpoint_tokenizer(checkpoint_dir), mesh


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from otter_jax import generate
    from otter_jax.generate.requests import answers, make_batch

    model, cfg, tok, mesh = load_for_decoding(args.checkpoint, args.dtype, args.mesh)
    options = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=args.do_sample,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                   mesh=mesh, prompt_bucket=args.prompt_bucket)
    batch_kw = dict(image_size=cfg.vision.image_size, resize=args.resize, num_frames=args.num_frames,
                    pad_id=cfg.tokens.pad if cfg.tokens.pad is not None else 0)

    def answer(batch_requests):
        batch = make_batch(batch_requests, tok, **batch_kw)
        out = generate.generate(model, batch["vision_x"], batch["input_ids"], attention_mask=batch["attention_mask"],
                                **options)
        return answers(out.sequences, batch["input_ids"].shape[1], tok)

    if not args.requests:
        print(answer([_single_request(args)])[0])
        return 0
    if not args.out:
        raise SystemExit("--requests needs --out FILE.jsonl")
    requests = _read_requests(args.requests)
    done = set()
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            done = {json.loads(line)["id"] for line in fh if line.strip()}
    todo = [r for r in requests if r.id not in done]
    # Batch requests of equal frame count together (a video and images cannot share one vision_x).
    todo.sort(key=lambda r: r.num_frames)
    t0 = time.time()
    with open(args.out, "a", encoding="utf-8") as fh, tqdm(total=len(requests), initial=len(done), file=sys.stderr,
                                                           desc="generate", unit="req") as bar:
        i = 0
        while i < len(todo):
            j = i + 1
            while j < len(todo) and j - i < args.batch_size and todo[j].num_frames == todo[i].num_frames:
                j += 1
            for req, text in zip(todo[i:j], answer(todo[i:j])):
                fh.write(json.dumps({"id": req.id, "prompt": req.prompt, "answer": text}, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(j - i)
            i = j
    print(f"{len(todo)} answered, {len(done)} already in {args.out}, {time.time() - t0:.1f}s", file=sys.stderr)
    return 0
