"""`otter-jax data {demo,build,inspect}`: write the demo data, build a store from a data YAML, look inside a store."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("demo", help="write the bundled demo dataset (MIMIC-IT format) and its tokenizer")
    p.add_argument("--out", required=True, help="folder to write demo.yaml, JSON/parquet files and tokenizer/ into")
    p = sub.add_parser("build", help="convert the datasets of a data YAML into an ArrayRecord store (resumable)")
    p.add_argument("--yaml", required=True, help="upstream data YAML (groups -> datasets -> paths)")
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--chunk-items", type=int, default=1000, help="images per resumable staging chunk")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold this share of each dataset's queries out of training as the store's validation split "
                        "(drawn by id; the trainer reports its loss)")
    p = sub.add_parser("inspect", help="summarise a store, or show records / decoded episodes")
    p.add_argument("store", help="store folder")
    p.add_argument("--id", action="append", default=[], help="instruction or image id to show (repeatable)")
    p.add_argument("--episodes", type=int, default=0, help="assemble N episodes per group and print them")
    p.add_argument("--tokenizer", help="HF tokenizer folder (needed for --episodes)")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--num-frames", type=int, default=8)


def _short(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace") if len(value) < 200 else f"<{len(value)} bytes>"
    if hasattr(value, "tolist"):
        return [_short(v) for v in value.tolist()] if isinstance(value.tolist(), list) else value.tolist()
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def _inspect(args) -> int:
    from otter_jax.data.store import Store

    store = Store(args.store)
    m = store.manifest
    print(f"store {store.path}: {m['n_instructions']} instructions, {m['n_images']} images")
    for d in m["datasets"]:
        print(f"  {d['group']:<22} {d['name']:<20} instructions={d['n_instructions']:<7} queries={d['n_queries']:<7}"
              f" val={d.get('n_val', 0):<5} num_samples={d['num_samples']}")
    print(f"  skipped at ingestion: {m['skipped'] or 'none'}")
    for rid in args.id:
        if store.instruction_index(rid) is not None:
            print(json.dumps({k: _short(v) for k, v in store.instruction(rid).items()}, indent=1))
        elif store.image_index(rid) is not None:
            print(json.dumps({k: _short(v) for k, v in store.image(rid).items()}, indent=1))
        else:
            print(f"no instruction or image with id {rid!r}")
            return 1
    if args.episodes:
        if not args.tokenizer:
            raise SystemExit("--episodes needs --tokenizer")
        from otter_jax.data import loader
        from otter_jax.data.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        cfg = loader.LoaderConfig(batch_size=1, max_seq_len=args.max_seq_len, num_frames=args.num_frames,
                                  image_size=28, shard_index=0, shard_count=1)
        for d in m["datasets"]:
            make = loader.MakeExample(store, tok, cfg, d["group"])
            for q in store.queries(d["name"])[:args.episodes]:
                try:
                    ex = make(int(q))
                except loader.BadRecord as e:
                    print(f"[{d['name']}] skipped: {e}")
                    continue
                n = int(ex["attention_mask"].sum())
                print(f"[{d['name']}] media={ex['media_mask'].astype(int).tolist()} "
                      f"vision_x={list(ex['vision_x'].shape)} tokens={n}")
                print("  " + tok.decode(ex["input_ids"][:n]))
    return 0


def run(args) -> int:
    if args.data_command == "demo":
        from otter_jax.data.demo import write_demo

        yaml_path = write_demo(args.out)
        print(f"wrote demo data to {args.out}; build it with:\n"
              f"  otter-jax data build --yaml {yaml_path} --out STORE")
        return 0
    if args.data_command == "build":
        from otter_jax.data.ingest import build_store

        m = build_store(args.yaml, args.out, strict=args.strict, chunk_items=args.chunk_items,
                        val_fraction=args.val_fraction)
        return 0 if m else 1
    return _inspect(args)
