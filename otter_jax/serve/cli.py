"""`otter-jax serve`: an OpenAI-compatible chat-completions server for an Otter checkpoint (see README "Serving")."""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys


def _sizes(text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="otter-jax checkpoint directory (with its tokenizer files)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on the ready line)")
    p.add_argument("--model-name", help="the model id clients ask for (default: the checkpoint folder's name)")
    p.add_argument("--api-key-file", help="file of accepted API keys, one a line; without it no key is asked")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--mesh", default="", metavar="data=N,fsdp=N,tensor=N",
                   help="shard the weights over this host's devices (batch sizes must divide by the batch axes)")
    g = p.add_argument_group("inputs")
    g.add_argument("--allow-dir", help="local image files (paths, file:// URLs) are read only under this folder")
    g.add_argument("--allow-remote-urls", action="store_true", help="fetch http(s) image URLs (off by default)")
    g.add_argument("--resize", choices=["squash", "crop"], default="squash")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=64)
    g.add_argument("--max-images", type=int, default=16, help="images per request, video frames included")
    g.add_argument("--max-prompt-tokens", type=int, default=2048)
    g.add_argument("--context-length", type=int, help="refuse prompt + max_tokens beyond this")
    g.add_argument("--max-n", type=int, default=4, help="largest 'n' (choices per request)")
    g = p.add_argument_group("batching and shapes")
    g.add_argument("--batch-sizes", type=_sizes, default=[1, 2, 4, 8], help="batch buckets; the largest is the "
                                                                            "most requests decoded together")
    g.add_argument("--media-slots", type=_sizes, default=[1, 2, 4, 8, 16], help="media-count buckets")
    g.add_argument("--new-token-buckets", type=_sizes, default=[16, 64, 256],
                   help="max_tokens buckets (cache sizes); the largest is the max_tokens limit")
    g.add_argument("--prompt-bucket", type=int, default=64, help="prompts are left-padded to a multiple of this")
    g.add_argument("--max-batches", type=int, default=4, help="batches decoding at once (interleaved by step)")
    g.add_argument("--media-cache", type=int, default=512, help="perceiver outputs kept (LRU by image hash)")
    g.add_argument("--batch-wait-ms", type=float, default=5, help="wait this long for companions of a request "
                                                                 "that arrives at an idle server")
    g.add_argument("--no-join", action="store_true", help="never add requests to a running batch's free rows "
                                                         "(each batch then runs only the requests it began with)")
    g.add_argument("--warmup", action="store_true", help="compile the smallest shape bucket before serving")
    g.add_argument("--shutdown-timeout", type=float, default=30, help="seconds to finish accepted requests on "
                                                                     "SIGTERM before cancelling them")


def _api_keys(path: str | None) -> list[str]:
    if not path:
        return []
    with open(path, encoding="utf-8") as fh:
        keys = [line.strip() for line in fh if line.strip()]
    if not keys:
        raise ValueError(f"{path}: no API keys in the file")
    return keys


def run(args: argparse.Namespace) -> int:
    import logging

    from otter_jax.generate.cli import load_for_decoding
    from otter_jax.serve.engine import Engine
    from otter_jax.serve.http import Server, ServerConfig, serve
    from otter_jax.serve.protocol import Limits, Sources

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    keys = _api_keys(args.api_key_file)
    if args.allow_dir and not os.path.isdir(args.allow_dir):
        raise FileNotFoundError(f"--allow-dir {args.allow_dir}: not a directory")
    model, cfg, tok, mesh = load_for_decoding(args.checkpoint, args.dtype, args.mesh)
    if mesh is not None:  # every batch bucket is split over the mesh's batch axes
        from otter_jax import sharding as S
        spec = S.batch_sharding(mesh, S.DEFAULT_RULES, 1).spec
        axes = spec[0] if spec and isinstance(spec[0], tuple) else tuple(a for a in spec[:1] if a)
        n = math.prod(mesh.shape[a] for a in axes)
        if any(b % n for b in args.batch_sizes):
            raise ValueError(f"--batch-sizes {args.batch_sizes}: with --mesh {args.mesh} each must be a multiple of "
                             f"{n} (the batch axes {axes})")
    if cfg.tokens is None:
        raise ValueError(f"{args.checkpoint}: no special token ids (the checkpoint needs its tokenizer files)")
    engine = Engine(model, cfg, tok, mesh=mesh, batch_sizes=args.batch_sizes, media_slots=args.media_slots,
                    new_token_buckets=args.new_token_buckets, prompt_bucket=args.prompt_bucket,
                    max_batches=args.max_batches, media_cache=args.media_cache,
                    batch_wait_s=args.batch_wait_ms / 1000, resize=args.resize, join=not args.no_join)
    if args.warmup:
        engine.warmup()
    engine.start()
    limits = Limits(max_images=args.max_images, max_tokens=args.new_token_buckets[-1],
                    max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n, max_frames=cfg.max_num_frames)
    limits.max_images = min(limits.max_images, args.media_slots[-1] * (cfg.max_num_frames or 1))
    name = args.model_name or os.path.basename(os.path.normpath(args.checkpoint))
    server = Server(engine, ServerConfig(name, keys, limits, Sources(args.allow_dir, args.allow_remote_urls),
                                         max_body_bytes=int(args.max_body_mb * (1 << 20)),
                                         context_length=args.context_length,
                                         shutdown_timeout=args.shutdown_timeout))
    asyncio.run(serve(server, args.host, args.port, ready=lambda m: print(m, file=sys.stderr, flush=True)))
    return 0
