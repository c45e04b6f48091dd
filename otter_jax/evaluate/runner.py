"""Running a configured evaluation: load the model once, then for every task x shots x seed build prompts
(with demonstrations), predict the examples not yet in that run's journal, score, and write results + report."""
from __future__ import annotations

import datetime
import os
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from otter_jax.evaluate import prompts as P
from otter_jax.evaluate import report, tasks
from otter_jax.evaluate.config import FAMILIES, EvalConfigError, int_list, resolve_paths
from otter_jax.evaluate.engine import Engine
from otter_jax.evaluate.example import DataError, TaskData
from otter_jax.evaluate.fewshot import DemoSelector
from otter_jax.evaluate.journal import PredictionJournal
from otter_jax.evaluate.paths import OutputDir

GEN_KEYS = ("num_beams", "max_new_tokens", "length_penalty", "no_repeat_ngram_size")


def load_model(c: ml_collections.ConfigDict, mesh=None):
    """(model with special token ids, tokenizer) from an otter-jax checkpoint or an HF-layout PyTorch folder."""
    import dataclasses

    from otter_jax.checkpoint import META_FILE
    from otter_jax.data.tokenizer import load_tokenizer, special_ids
    from otter_jax.models.config import Policy, SpecialTokens

    path = c.checkpoint
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    policy = Policy(**dict(c.policy))
    if os.path.exists(os.path.join(path, META_FILE)):
        from otter_jax.checkpoint import load_model as load_ours
        model, cfg = load_ours(path, policy, mesh=mesh)
    else:
        from otter_jax.convert import load_torch_checkpoint
        from otter_jax.convert.otter_hf import TOKENIZER_FILES
        if not c.tokenizer and not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise EvalConfigError(f"{path} has no tokenizer files (the original's save_pretrained writes none); "
                                  "set --config.tokenizer=DIR to the base model's or an Otter tokenizer folder")
        model, cfg = load_torch_checkpoint(path, policy, mesh=mesh, tokenizer=c.tokenizer or None)
    tok = load_tokenizer(c.tokenizer or path)
    sp = special_ids(tok)
    want = SpecialTokens(media=sp.media, endofchunk=sp.endofchunk, answer=sp.answer, pad=sp.pad, bos=sp.bos,
                         eos=sp.eos)
    if cfg.tokens is None:
        model.with_config(tokens=want)
    elif (cfg.tokens.media, cfg.tokens.endofchunk) != (want.media, want.endofchunk):
        raise ValueError(f"{path}: the checkpoint's special token ids {dataclasses.asdict(cfg.tokens)} differ from "
                         f"its tokenizer's {dataclasses.asdict(want)}")
    if len(tok) > cfg.text.vocab_size:
        raise ValueError(f"{path}: tokenizer has {len(tok)} tokens, the model only {cfg.text.vocab_size}")
    return model, tok


TOY_PARAMETERS = 100_000_000   # far below any released Otter (1B-9B); above every demo/test model


def model_summary(model) -> dict:
    from flax import nnx

    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    cfg = model.cfg
    return {"parameters": n, "text_model": cfg.text_model_type, "layers": cfg.num_layers,
            "vocab_size": cfg.text.vocab_size}


def toy_reasons(model: dict, data_root: str) -> list[str]:
    """Why these numbers say nothing about Otter's quality (empty when nothing gives it away)."""
    from otter_jax.evaluate.tiny_sets import is_tiny

    out = []
    if model["parameters"] < TOY_PARAMETERS:
        out.append(f"the model has {model['parameters'] / 1e6:.2f}M parameters ({model['text_model']}, "
                   f"{model['layers']} layers), a toy next to the released 1B-9B Otter models")
    if data_root and is_tiny(data_root):
        out.append(f"the evaluation sets in {data_root} are the bundled tiny sets made from demo photographs")
    return out


class Evaluation:
    def __init__(self, c: ml_collections.ConfigDict, model=None, tokenizer=None, mesh=None):
        self.c = c
        self.mesh = mesh
        if mesh is None and c.mesh.enabled:
            from otter_jax.sharding import make_mesh
            self.mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
        if model is None:
            model, tokenizer = load_model(c, self.mesh)
        self.engine = Engine(model, tokenizer, batch_size=c.batch_size, mesh=self.mesh, resize=c.resize,
                             length_bucket=c.length_bucket)
        self.out = c.output_dir   # the local working folder while run() runs (see paths.OutputDir)
        self.dir: OutputDir | None = None
        self._clip = None   # ClipImageEmbedder, built on first RICES use when fewshot.rices_clip is set

    def rices_features(self, keys, read_image):
        """RICES features: CLIP projected pooled embeddings (cached per image) when fewshot.rices_clip is set,
        else the evaluated model's mean patch token."""
        if not self.c.fewshot.rices_clip:
            return self.engine.features(keys, read_image)
        if self._clip is None:
            from otter_jax.evaluate.rices import ClipImageEmbedder
            self._clip = ClipImageEmbedder(self.c.fewshot.rices_clip, self.c.batch_size, self.c.resize,
                                           self.c.fewshot.rices_cache or os.path.join(self.out, "rices_cache"))
        return self._clip.features(keys, read_image)

    # ------------------------------------------------------------------------------------------------ one run
    def _settings(self, name, t, shots, seed, style, method) -> dict:
        return {"checkpoint": os.path.abspath(self.c.checkpoint), "task": name, "format": t.format,
                "shots": shots, "seed": seed, "prompt_style": style, "fewshot_method": method,
                "query_set_size": self.c.fewshot.query_set_size,
                "zero_shot_text_demos": self.c.fewshot.zero_shot_text_demos, "mode": t.mode,
                "resize": self.c.resize, **{k: t[k] for k in GEN_KEYS},
                **({"rices_features": os.path.abspath(self.c.fewshot.rices_clip) if self.c.fewshot.rices_clip
                    else "model_patch_mean"} if method == "rices" else {})}

    def predict(self, name: str, t, data: TaskData, shots: int, seed: int) -> tuple[dict, str]:
        family = FAMILIES[t.format]
        style = t.prompt_style or self.c.prompt_style
        method = t.fewshot_method or self.c.fewshot.method
        path = os.path.join(self.out, "predictions", name, f"shots{shots}_seed{seed}.jsonl")
        journal = PredictionJournal(path, self._settings(name, t, shots, seed, style, method))
        n_demo = shots if shots > 0 else (2 if self.c.fewshot.zero_shot_text_demos and data.pool else 0)
        selector = None
        if n_demo:
            def feats(exs):
                return self.rices_features([self._first_image(e) for e in exs], data.read_image)
            selector = DemoSelector(data.pool, method, seed, self.c.fewshot.query_set_size, feats)
        todo = [ex for ex in data.examples if not journal.done(ex.id)]
        bs = self.engine.batch_size
        gen = {k: t[k] for k in GEN_KEYS}
        bar = tqdm(total=len(todo), desc=f"{name} {shots}-shot seed {seed}", unit="ex",
                   disable=not self.c.progress or not todo or not sys.stderr.isatty())  # no escapes in logs
        for start in range(0, len(todo), bs):
            batch = todo[start:start + bs]
            qfeat = None
            if selector is not None and method == "rices":
                qfeat = self.rices_features([self._first_image(e) for e in batch], data.read_image)
            demos = [selector.select(ex, n_demo, None if qfeat is None else qfeat[i]) if selector else []
                     for i, ex in enumerate(batch)]
            built = [P.build(family, style, ex, d, demo_images=shots > 0, fmt=t.format)
                     for ex, d in zip(batch, demos)]
            if t.mode == "rank":
                scores = self.engine.option_logprobs(built, [ex.options for ex in batch], data.read_image)
                recs = [{"id": ex.id, "logprobs": [s for s, _ in sc], "ntokens": [n for _, n in sc]}
                        for ex, sc in zip(batch, scores)]
            else:
                answers = self.engine.generate(built, data.read_image, **gen)
                recs = [{"id": ex.id, "prediction": P.clean_answer(family, style, a), "raw": a}
                        for ex, a in zip(batch, answers)]
            for r, d in zip(recs, demos):
                r["demos"] = [x.id for x in d]
            journal.append(recs)
            bar.update(len(batch))
        bar.close()
        return {ex.id: journal.records[ex.id] for ex in data.examples}, path

    @staticmethod
    def _first_image(ex) -> str:
        if not ex.images:
            raise DataError(f"example {ex.id!r} has no image: RICES needs one")
        return ex.images[0]

    # ------------------------------------------------------------------------------------------------ all
    def run(self, config_source: str = "") -> dict:
        """Evaluate every enabled task; a remote output_dir is worked on locally and copied up as runs finish."""
        self.dir = OutputDir(self.c.output_dir, fresh=("predictions", "judge") if self.c.overwrite else ())
        if self.dir.remote is not None:
            self._clip = None   # its feature cache lives in the working folder of this run
        self.out = self.dir.local
        try:
            return self._run(config_source)
        finally:
            try:
                self.dir.sync()   # also after an error: finished runs resume from the remote copy
            finally:
                self.dir.close()
                self.out = self.c.output_dir

    def _run(self, config_source: str) -> dict:
        c = self.c
        t0 = time.time()
        results = {"checkpoint": os.path.abspath(c.checkpoint), "config": config_source,
                   "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                   "mesh": dict(self.mesh.shape) if self.mesh is not None else None,
                   "batch_size": self.engine.batch_size, "prompt_style": c.prompt_style,
                   "fewshot": c.fewshot.to_dict(), "model": model_summary(self.engine.model), "tasks": {}}
        results["toy"] = toy_reasons(results["model"], c.data_root)
        for name, t in c.tasks.items():
            if not t.enabled:
                continue
            results["tasks"][name] = self.run_task(name, t)
        results["wall_time_s"] = time.time() - t0
        os.makedirs(self.out, exist_ok=True)
        report.write(results, self.out)
        return results

    def run_task(self, name: str, t) -> dict:
        c = self.c
        t0 = time.time()
        t = resolve_paths(t, c.data_root)
        data = tasks.read(t)
        shots_list = int_list(t.shots or c.shots, f"tasks.{name}.shots")
        seeds = int_list(t.seeds or c.seeds, f"tasks.{name}.seeds")
        runs = []
        for shots in shots_list:
            if shots > 0 and len(data.pool) < shots:
                raise EvalConfigError(f"config.tasks.{name}: {shots}-shot needs at least {shots} demonstrations, "
                                      f"the {t.format} data ({data.source}) has {len(data.pool)}")
            random_demos = shots > 0 or (c.fewshot.zero_shot_text_demos and bool(data.pool))
            for seed in (seeds if random_demos else seeds[:1]):
                r0 = time.time()
                records, path = self.predict(name, t, data, shots, seed)
                judge_fn = None
                if FAMILIES[t.format] == "pairwise":
                    judge_fn = self._judge_fn(name, shots, seed, data)
                submission = (os.path.join(self.out, "submissions", f"{name}_shots{shots}_seed{seed}.tsv")
                              if t.format == "mmbench" else "")
                summary, details = tasks.score(t, data.examples, records, cider_tokenizer=c.cider_tokenizer,
                                               judge_fn=judge_fn, submission_path=submission)
                if "submission" in details:
                    details["submission"] = self.dir.shown(details["submission"])
                runs.append({"shots": shots, "seed": seed, "metrics": summary, "details": details,
                             "predictions": self.dir.shown(path), "wall_time_s": time.time() - r0})
                self.dir.sync()
        return {"format": t.format, "family": FAMILIES[t.format], "source": data.source,
                "examples": len(data.examples), "pool": len(data.pool), "mode": t.mode,
                "skipped": getattr(data, "skipped", 0), "runs": runs, "summary": summarize(runs),
                "wall_time_s": time.time() - t0}

    def _judge_fn(self, name, shots, seed, data):
        from otter_jax.evaluate import judge as J

        j = self.c.judge

        def fn(examples, ours):
            return J.judge(examples, ours, os.path.join(self.out, "judge", f"{name}_shots{shots}_seed{seed}.sqlite"),
                           base_url=j.base_url, model=j.model, api_key=J.api_key_from_env(j.api_key_env),
                           concurrency=j.concurrency, max_tokens=j.max_tokens, temperature=j.temperature,
                           timeout=j.timeout, read_image=data.read_image, progress=self.c.progress)
        return fn


def summarize(runs: list[dict]) -> dict:
    """shots -> metric -> {mean, std (over seeds, 0 for one), seeds}."""
    out: dict = {}
    for shots in sorted({r["shots"] for r in runs}):
        rs = [r for r in runs if r["shots"] == shots]
        metrics = {}
        for key in rs[0]["metrics"]:
            vals = [r["metrics"][key] for r in rs if key in r["metrics"]]
            metrics[key] = {"mean": float(np.mean(vals)), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                            "seeds": [r["seed"] for r in rs]}
        out[str(shots)] = metrics
    return out
