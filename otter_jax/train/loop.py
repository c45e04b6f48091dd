"""The training loop: set up (distributed, mesh, state, data), resume, step, report, validate, checkpoint, and stop
cleanly on preemption (SIGTERM, a maintenance notice) after saving.

Exact resume: the checkpoint holds the whole train state (weights, AdamW moments, step count) and the global data
position, and a resumed run compiles the same step, so it continues bit-for-bit (on CPU); on another number of
processes it continues the same global data order.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal

import jax
import ml_collections
import numpy as np

from otter_jax import config_files
from otter_jax import sharding as S
from otter_jax.train import config as C
from otter_jax.train import data, distributed, flops, optim, state as ST, step as STEP
from otter_jax.train.checkpoints import Checkpoints
from otter_jax.train.metrics import Reporter, memo_by_shape

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Result:
    workdir: str
    checkpoint_dir: str | None
    tensorboard_dir: str
    start_step: int  # 0, or the step resumed from
    last_step: int
    losses: dict[int, float]  # per-step training loss
    eval_losses: dict[int, float]
    preempted: bool = False
    state: ST.TrainState | None = None  # the final train state (for callers that go on in-process)
    model_dir: str | None = None  # the exported model (not after a preemption: `convert --from-checkpoint`)


class Preemption:
    """Whether to save and stop after this step. Several processes: jax's preemption sync point, asked every step;
    a SIGTERM or a TPU maintenance notice on any host makes every host answer True at the same step. One process
    without jax.distributed: a SIGTERM handler sets a flag read at the next step."""

    def __init__(self):
        self.sync = jax.distributed.is_initialized()
        self.flag, self.previous = False, None
        if not self.sync:  # with jax.distributed, its own notifier owns SIGTERM
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and stopping after the current step")
        self.flag = True

    def should_stop(self, step: int) -> bool:
        if self.sync:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def train(c: ml_collections.ConfigDict) -> Result:
    """Run (or resume) the training described by a complete config (`otter_jax.train.config.load`)."""
    distributed.initialize(c.distributed)
    workdir = c.workdir if "://" in c.workdir else os.path.abspath(c.workdir)  # gs://, memory:// stay as given
    main = jax.process_index() == 0
    mesh = S.make_mesh(**dict(c.mesh))
    rules = C.parse_rules(c.rules)
    policy = config_files.policy(c)
    base_cfg = C.model_config(c)
    tokenizer, tokens = data.tokenizer_and_tokens(c, base_cfg.text.vocab_size)
    cfg = dataclasses.replace(base_cfg, tokens=tokens)
    if main:
        from etils import epath

        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "config.json").write_text(c.to_json_best_effort(indent=2, sort_keys=True))
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), jax.device_count(), jax.devices()[0].device_kind)

    batch_sharding = S.batch_sharding(mesh, rules, 2)
    dp = int(np.prod([mesh.shape[a] for a in np.atleast_1d(batch_sharding.spec[0] or ())]))
    micro = c.train.global_batch_size // c.train.grad_accum
    if micro % dp:
        raise C.TrainConfigError(f"config.train.global_batch_size={c.train.global_batch_size} / grad_accum="
                                 f"{c.train.grad_accum} = {micro} rows per micro-batch is not divisible by the "
                                 f"{dp}-way batch split of mesh {dict(mesh.shape)}")
    batches = data.train_batches(c, tokenizer, tokens, batch_sharding, cfg.text.vocab_size)

    ckpt = (Checkpoints(_join(workdir, "checkpoints"), c.checkpoint.every, c.checkpoint.keep,
                        c.checkpoint.async_save) if c.checkpoint.enabled else None)
    start = 0
    if ckpt is not None and ckpt.steps():
        graphdef, abstract = ST.abstract_state(cfg, policy, c)
        shardings = S.state_shardings(abstract, mesh, rules)
        template = ST.TrainState(graphdef, abstract, shardings, cfg).abstract()
        start, restored, meta = ckpt.restore_latest(template, batches, check=lambda m: _check_resume(m, c))
        ts = ST.TrainState(graphdef, restored, shardings, cfg)
        log.info("resumed from %s/%d", ckpt.directory, start)
    else:
        ts = ST.create(cfg, policy, c, mesh, rules)
    cfg = ts.cfg

    schedule = optim.schedule(c.optim, c.train.steps)
    train_step = STEP.jit_train_step(ts, mesh, rules, c.train.grad_accum, schedule, c.train.train_lm,
                                     c.train.train_vision)
    eval_step = STEP.jit_eval_step(ts, mesh, rules)
    eval_set: list[dict] | None = None
    peak = c.train.peak_flops or flops.device_peak_flops(jax.devices()[0], policy.dtype)
    def shape_flops(shapes):  # (FLOPs per real token, per real media item): MFU counts real work only
        media, text = flops.train_flops_parts(cfg, shapes[1][0], shapes[1][1], shapes[0][1], shapes[0][2],
                                              c.train.train_lm, c.train.train_vision)
        return text / (shapes[1][0] * shapes[1][1]), media / (shapes[0][0] * shapes[0][1])

    step_flops = memo_by_shape(shape_flops)
    tb_dir = _join(workdir, "tensorboard")
    reporter = Reporter(tb_dir, c.train.steps, c.train.global_batch_size, peak, jax.device_count(),
                        c.train.progress)
    stop = Preemption()
    result = Result(workdir, ckpt.directory if ckpt else None, tb_dir, start, start, {}, {})
    meta = {"config": json.loads(c.to_json_best_effort()), "process_count": jax.process_count(),
            "tokens": dataclasses.asdict(cfg.tokens) if cfg.tokens else None}

    def evaluate(step: int) -> None:
        nonlocal eval_set
        if c.train.eval_batches <= 0:
            return
        if eval_set is None:
            eval_set = [data.drop_bookkeeping(b) for b in
                        data.eval_batches(c, tokenizer, tokens, batch_sharding, cfg.text.vocab_size)]
        sums = jax.device_get([eval_step(state, b) for b in eval_set])
        total, n = sum(float(s) for s, _ in sums), sum(int(k) for _, k in sums)
        result.eval_losses[step] = total / max(n, 1)
        reporter.write_eval(step, result.eval_losses[step], n)

    saved = [start]  # the last step saved (or resumed from): never saved twice

    def save(step: int, force: bool = False) -> None:
        if ckpt is not None and step != saved[0] and ckpt.save(step, state, batches, meta | {"step": step},
                                                               force=force):
            saved[0] = step

    state = ts.state
    step = start
    reporter.start(start)
    try:
        if start == 0 and c.train.eval_every > 0:
            evaluate(0)
        while step < c.train.steps:
            try:
                batch = next(batches)
            except StopIteration:
                log.warning("the data ran out at step %d (config.data num_epochs); stopping", step)
                break
            state, outputs = train_step(state, data.drop_bookkeeping(batch))
            step += 1
            reporter.step_done(step, outputs, step_flops(batch))
            first = step == start + 1
            if first or step % c.train.log_every == 0 or step == c.train.steps:
                extra = batches.metrics() if hasattr(batches, "metrics") else {}
                for row in reporter.flush(extra, first=first):
                    result.losses[row["step"]] = row["loss"]
            if c.train.eval_every > 0 and step % c.train.eval_every == 0 and step < c.train.steps:
                evaluate(step)
            if stop.should_stop(step):
                for row in reporter.flush():
                    result.losses[row["step"]] = row["loss"]
                save(step, force=True)
                result.preempted = True
                log.warning("preempted: stopped at step %d; checkpoint saved", step)
                break
            save(step)
        if not result.preempted:
            evaluate(step)
            save(step, force=True)
        for row in reporter.flush():
            result.losses[row["step"]] = row["loss"]
    finally:
        stop.restore()
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
        reporter.close()
        close = getattr(batches, "close", None)
        if close:
            close()
    result.last_step = step
    ts.state = state
    result.state = ts
    if not result.preempted:
        result.model_dir = export_model(ts, _join(workdir, "model"), c.data.get("tokenizer") or None)
    if main:
        where = f"checkpoints in {result.checkpoint_dir}" if ckpt is not None else "checkpoints disabled"
        if result.preempted and ckpt is not None:
            print(f"preempted at step {step}: checkpoint {result.checkpoint_dir}/{step} saved; run the same command "
                  f"to resume", flush=True)
        elif result.preempted:
            print(f"preempted at step {step}: checkpoints are disabled, nothing was saved", flush=True)
        else:
            print(f"done at step {step}: {where}, TensorBoard: tensorboard --logdir {tb_dir}", flush=True)
        if result.model_dir:
            print(f"model (for otter-jax generate / eval / convert --to-torch): {result.model_dir}", flush=True)
    return result


def _join(base: str, *parts: str) -> str:
    from etils import epath

    return os.fspath(epath.Path(base).joinpath(*parts))


def export_model(ts: "ST.TrainState", model_dir: str, tokenizer_dir: str | None) -> str:
    """The trained model alone as an otter-jax model checkpoint, replacing an earlier export. A collective call:
    with several processes every one writes its own shards (`checkpoint.save_model`)."""
    from etils import epath

    from otter_jax import checkpoint

    model, _ = ts.merge()
    target, old = epath.Path(model_dir), epath.Path(model_dir + ".old")
    if jax.process_index() == 0 and target.exists():
        if old.exists():
            old.rmtree()
        target.rename(old)
    _sync("otter_jax_export_model_prepared")
    checkpoint.save_model(model, ts.cfg, model_dir, tokenizer_dir=tokenizer_dir)
    if jax.process_index() == 0 and old.exists():
        old.rmtree()
    return model_dir


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _check_resume(meta: dict, c: ml_collections.ConfigDict) -> None:
    saved = meta.get("config", {})
    now = json.loads(c.to_json_best_effort())
    if saved.get("model") != now.get("model"):
        raise C.TrainConfigError("config.model differs from the checkpoint's; use a new config.workdir")
    layout = saved.get("policy", {}).get("scan_layers", True), now.get("policy", {}).get("scan_layers", True)
    if layout[0] != layout[1]:
        raise C.TrainConfigError(f"the checkpoint holds the train state with policy.scan_layers={layout[0]}; resume "
                                 f"with --config.policy.scan_layers={layout[0]} (the exported model loads in either)")
    for section in ("train", "optim", "data", "mesh"):
        diff = sorted(k for k in set(saved.get(section, {})) | set(now.get(section, {}))
                      if saved.get(section, {}).get(k) != now.get(section, {}).get(k))
        if diff:
            log.warning("resuming with changed config.%s keys: %s", section, ", ".join(diff))
    if meta.get("process_count") not in (None, jax.process_count()):
        log.info("checkpoint written by %s processes, resuming with %d: the global data order continues",
                 meta.get("process_count"), jax.process_count())

