"""Command line: `syphus run | translate | mm-instruct | cold-start | frames | export`.

The API key is read from the environment variable named by --api-key-env (default OPENAI_API_KEY) and is
never printed, journaled or written to outputs. Every error that names a bad file, record or key exits with
status 2 and a one-line message instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from syphus.mimicit import MimicItError
from syphus.prompt import PromptError
from syphus.readers import AnnotationError
from syphus.schema import SchemaError

log = logging.getLogger("syphus")


def _endpoint_args(p: argparse.ArgumentParser, prefix: str = "", what: str = "") -> None:
    p.add_argument(f"--{prefix}base-url", default=None if prefix else os.environ.get(
        "OPENAI_BASE_URL", "https://api.openai.com/v1"), help=f"OpenAI-compatible endpoint{what}")
    p.add_argument(f"--{prefix}model", default=None if prefix else "gpt-4o-mini", help=f"model name{what}")
    p.add_argument(f"--{prefix}api-key-env", default=None if prefix else "OPENAI_API_KEY",
                   help=f"environment variable holding the API key{what} (the key itself is never logged)")


def _source_args(p: argparse.ArgumentParser) -> None:
    from syphus.sources import DEFAULT_FRAMES, FORMATS
    p.add_argument("--format", choices=FORMATS, help="annotation format of every file (default: detected per file)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help="frames per video clip in generated image ids (use the same N with `syphus frames`)")


def _common(p: argparse.ArgumentParser) -> None:
    _endpoint_args(p)
    g = p.add_argument_group("sending")
    g.add_argument("--concurrency", type=int, default=64, help="requests in flight at once")
    g.add_argument("--rpm", type=float, default=0, help="client-side requests/min limit (0: none)")
    g.add_argument("--tpm", type=float, default=0, help="client-side tokens/min limit (0: none)")
    g.add_argument("--timeout", type=float, default=120, help="seconds per attempt")
    g.add_argument("--max-attempts", type=int, default=6, help="attempts per request before it is recorded failed")
    g.add_argument("--backoff", type=float, default=0.5, help="base of the exponential backoff, seconds")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-tokens", type=int, default=3200)
    g.add_argument("--text-output", action="store_true",
                   help="do not send a JSON schema (for endpoints without structured output); parse text")
    g.add_argument("--price-in", type=float, default=0.0, help="USD per 1M prompt tokens, for cost accounting")
    g.add_argument("--price-out", type=float, default=0.0, help="USD per 1M completion tokens")
    g.add_argument("--batch", action="store_true", help="use the OpenAI Batch API instead of live requests")
    g.add_argument("--poll-interval", type=float, default=30.0, help="seconds between Batch API polls")
    g.add_argument("--no-retry-failed", action="store_true", help="on rerun, leave requests recorded failed alone")
    g.add_argument("--dry-run", action="store_true", help="print rendered prompts and estimates, send nothing")
    g.add_argument("--show", type=int, default=3, help="prompts printed by --dry-run")
    g.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when some requests end failed or invalid (default: exit 1 with a summary)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syphus", description="LLM-driven multimodal instruction-response generation")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="annotations -> instruction-response pairs (MIMIC-IT JSON)")
    r.add_argument("--task", required=True, help="task code (LA, SD, CGD, SN, VST, DC, TVC, E4D) or a prompt YAML")
    r.add_argument("--prompts-dir", help="folder of extra prompt specs, searched before the built-in ones")
    r.add_argument("--reader", help="override the spec's annotation reader (name or module:function)")
    r.add_argument("--annotations", required=True, nargs="+", action="extend",
                   help="annotation file(s): our JSON list / JSON Lines, or the family's public files as published "
                        "(several merge per record, e.g. COCO captions + instances + LLaVA conversations for LA)")
    _source_args(r)
    r.add_argument("--out", required=True, help="run folder (journal + outputs); rerun with the same to resume")
    r.add_argument("--limit", type=int, help="only the first N annotations")
    _common(r)

    t = sub.add_parser("translate", help="instructions JSON -> one instructions JSON per language")
    t.add_argument("--instructions", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--langs", default="zh,es,ja,de,fr,ko,ar")
    _common(t)

    m = sub.add_parser("mm-instruct", help="seed instructions + image captions -> caption-grounded pairs")
    m.add_argument("--seeds", required=True, help="text file, one seed instruction per line")
    m.add_argument("--captions", required=True, help="JSON Lines of {image_id, caption}")
    m.add_argument("--out", required=True)
    m.add_argument("--new-per-chunk", type=int, default=8, help="instructions asked for per augment request")
    m.add_argument("--candidates", type=int, default=4, help="candidate instructions matched per image")
    _endpoint_args(m, "answer-", " for the answering model (defaults to the main one)")
    _common(m)

    c = sub.add_parser("cold-start", help="bootstrap in-context examples; --promote approved ones")
    c.add_argument("--task", required=True)
    c.add_argument("--prompts-dir")
    c.add_argument("--annotations", nargs="+", action="extend", help="annotations to sample candidates from")
    _source_args(c)
    c.add_argument("--n", type=int, default=4, help="number of candidates")
    c.add_argument("--review", required=True, help="review YAML to write (generate) or read (--promote)")
    c.add_argument("--promote", action="store_true", help="append approved candidates to the prompt spec")
    c.add_argument("--spec-out", help="where to write the promoted spec (default: <review>.prompt.yaml)")
    c.add_argument("--in-place", action="store_true", help="overwrite the spec file itself")
    _common(c)

    f = sub.add_parser("frames", help="videos -> MIMIC-IT images parquet, N frames per video or annotated clip")
    f.add_argument("--videos", required=True, help="folder of video files named by video id (<id>.mp4, ...)")
    f.add_argument("--out", required=True, help="images parquet to write")
    f.add_argument("--task", default="DC", help="task code (or prompt YAML) whose image ids to produce")
    f.add_argument("--prompts-dir")
    f.add_argument("--annotations", nargs="+", action="extend",
                   help="the run's annotation file(s): one clip per record, sampled inside its time span "
                        "(default: every video in --videos, whole)")
    _source_args(f)
    f.add_argument("--max-side", type=int, default=0, help="shrink frames so the longer side is at most this")
    f.add_argument("--quality", type=int, default=90, help="JPEG quality")
    f.add_argument("--skip-missing", action="store_true", help="leave out clips whose video file is absent")

    e = sub.add_parser("export", help="instructions JSON -> MIMIC-IT bundle or TFRecords")
    e.add_argument("--format", required=True, choices=["mimicit", "tfrecord"])
    e.add_argument("--instructions", required=True)
    e.add_argument("--images", help="images parquet, base64 JSON, or a folder of <image_id>.<ext>")
    e.add_argument("--train-config", help="{query_id: [in_context_id, ...]} JSON (tfrecord only)")
    e.add_argument("--group", help="force the episode group (default: inferred per record)")
    e.add_argument("--task-code", help="force the task code (default: ins_id prefix)")
    e.add_argument("--lang", default="en")
    e.add_argument("--shards", type=int, default=1)
    e.add_argument("--out", required=True, help="tfrecord: output file; mimicit: output folder")
    return p


def _api_key(env_name: str | None, needed: bool) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if needed and not key:
        log.warning("environment variable %s is not set; sending without an API key", env_name)
    return key


def _setup(a, log_dir: Path | None):
    from syphus.dispatch import Gen, Mode
    from syphus.engine import Endpoint
    from syphus.retry import RetryPolicy
    level = logging.DEBUG if a.verbose else logging.INFO
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None and not a.dry_run:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / "syphus.log", encoding="utf-8"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)
    ep = Endpoint(base_url=a.base_url, api_key=_api_key(a.api_key_env, not a.dry_run), concurrency=a.concurrency,
                  timeout=a.timeout, rpm=a.rpm, tpm=a.tpm, price_in=a.price_in, price_out=a.price_out,
                  retry=RetryPolicy(max_attempts=a.max_attempts, base_delay=a.backoff),
                  progress=not a.no_progress and sys.stderr.isatty())
    gen = Gen(a.model, a.temperature, a.top_p, a.max_tokens, structured=not a.text_output)
    mode = Mode(batch=a.batch, poll_interval=a.poll_interval, retry_failed=not a.no_retry_failed)
    return ep, gen, mode


def _cmd(a) -> dict:
    from dataclasses import replace
    if a.cmd == "export":
        from syphus.export import export_mimicit, export_tfrecord
        if a.format == "tfrecord":
            return export_tfrecord(a.out, a.shards, instructions=a.instructions, images=a.images,
                                   train_config=a.train_config, group=a.group, lang=a.lang, task=a.task_code)
        return export_mimicit(a.instructions, a.out, a.images)
    from syphus.prompt import find_spec
    if a.cmd == "frames":
        from syphus.frames import extract
        spec = find_spec(a.task, a.prompts_dir)
        return extract(a.videos, a.out, spec.code, spec.reader, a.annotations, a.format, a.frames, a.max_side,
                       a.quality, a.skip_missing)
    if a.cmd == "run":
        from syphus.generate import run_task
        ep, gen, mode = _setup(a, Path(a.out))
        spec = find_spec(a.task, a.prompts_dir)
        if a.reader:
            spec.reader = a.reader
        return run_task(spec, a.annotations, a.out, gen, ep, mode, dry=a.dry_run, limit=a.limit, show=a.show,
                        fmt=a.format, frames=a.frames)
    if a.cmd == "translate":
        from syphus.translate import translate
        ep, gen, mode = _setup(a, Path(a.out))
        langs = tuple(x.strip() for x in a.langs.split(",") if x.strip())
        return translate(a.instructions, a.out, gen, ep, mode, langs, dry=a.dry_run, show=a.show)
    if a.cmd == "mm-instruct":
        from syphus.mm_instruct import MMInstruct, load_captions
        ep, gen, mode = _setup(a, Path(a.out))
        aep = replace(ep, base_url=a.answer_base_url or ep.base_url,
                      api_key=_api_key(a.answer_api_key_env, not a.dry_run) if a.answer_api_key_env else ep.api_key)
        agen = replace(gen, model=a.answer_model or gen.model, structured=False)
        seeds = Path(a.seeds).read_text(encoding="utf-8").splitlines()
        return MMInstruct(a.out, gen, ep, agen, aep, mode, dry=a.dry_run).run(
            seeds, load_captions(a.captions), new_per_chunk=a.new_per_chunk, candidates=a.candidates)
    if a.cmd == "cold-start":
        from syphus.cold_start import generate_candidates, promote
        ep, gen, mode = _setup(a, Path(a.review).parent)
        spec = find_spec(a.task, a.prompts_dir)
        if a.promote:
            out = spec.path if a.in_place else Path(a.spec_out or Path(a.review).with_suffix(".prompt.yaml"))
            return {"promoted": promote(a.review, spec, out), "spec": str(out)}
        if not a.annotations:
            raise PromptError("cold-start needs --annotations to generate candidates")
        if a.dry_run:
            from syphus.dispatch import dry_run
            from syphus.generate import plan
            return dry_run([(e[0], e[2]) for e in plan(spec, a.annotations, gen, a.n, with_examples=False,
                                                       fmt=a.format, frames=a.frames)], ep, a.show)
        return generate_candidates(spec, a.annotations, a.review, gen, ep, a.n, mode, a.format, a.frames)
    raise AssertionError(a.cmd)


def problems(result: dict) -> dict[str, int]:
    """Requests of this run's task(s) that did not end in a usable answer: failed, invalid, still pending."""
    acc = result.get("accounting") or {}
    per_task = acc.values() if acc and all(isinstance(v, dict) for v in acc.values()) else [acc]
    failed = result.get("failed_requests", sum(int(t.get("failed", 0)) for t in per_task))
    out = {"failed": int(failed), "invalid": int(result.get("invalid_responses", 0)),
           "pending": int(result.get("pending_requests", 0))}
    return {k: v for k, v in out.items() if v}


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        result = _cmd(a)
    except (AnnotationError, PromptError, MimicItError, SchemaError, FileNotFoundError) as e:
        print(f"syphus {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, ensure_ascii=False))
    bad = problems(result) if isinstance(result, dict) and not getattr(a, "dry_run", False) else {}
    if bad:
        what = ", ".join(f"{n} {k}" for k, n in bad.items())
        where = getattr(a, "out", None) or getattr(a, "review", "")
        if getattr(a, "allow_failures", False):
            print(f"syphus {a.cmd}: {what} request(s) accepted (--allow-failures); details in {where}",
                  file=sys.stderr)
            return 0
        print(f"syphus {a.cmd}: {what} request(s); see the *_failed/*_invalid files in {where}, rerun to retry "
              "failed ones, or pass --allow-failures to accept them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
