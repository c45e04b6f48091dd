"""Training metrics through clu: per-step loss / grad norm / learning rate, interval throughput (tokens/s, examples/s,
step time, MFU), validation loss and data-skip counts, written to TensorBoard, a console line and a progress bar.

Why fetch at log points only: reading a metric blocks the host until that step has run; collecting the device
arrays and reading them every `log_every` steps keeps the device queue full.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from clu import metric_writers, metrics as clu_metrics, periodic_actions

log = logging.getLogger(__name__)


StepMetrics = clu_metrics.Collection.create(loss=clu_metrics.Average.from_output("loss"),
                                            grad_norm=clu_metrics.Average.from_output("grad_norm"),
                                            learning_rate=clu_metrics.LastValue.from_output("lr"))


class Reporter:
    """Collects step outputs; at `flush` writes per-step and interval scalars and prints one console line."""

    def __init__(self, tb_dir: str | None, total_steps: int, global_batch: int, peak_flops: float | None,
                 n_devices: int, progress: bool = True):
        self.main = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(tb_dir if self.main else None, just_logging=not self.main)
        self.report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=self.writer,
                                                      every_secs=None, every_steps=max(total_steps // 20, 1))
        self.total, self.global_batch, self.peak, self.n_devices = total_steps, global_batch, peak_flops, n_devices
        self.pending: list[tuple[int, Any, float]] = []
        self.t_last: float | None = None
        self.bar = None
        if progress and self.main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, leave=False)

    def start(self, step: int) -> None:
        self.t_last = time.perf_counter()
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def step_done(self, step: int, outputs: dict, flops: float | tuple[float, float]) -> None:
        """`flops`: the step's model FLOPs, or (FLOPs per real token, FLOPs per real media item) to be counted with the
        step's `tokens` and `media` outputs (padding and padded media slots are not model work)."""
        self.pending.append((step, outputs, flops))
        self.report(step)
        if self.bar is not None:
            self.bar.update(1)

    def flush(self, extra: dict[str, float] | None = None, first: bool = False) -> list[dict]:
        """Block on the pending steps, write their scalars; returns their metrics (one dict per step)."""
        if not self.pending:
            return []
        outputs = jax.device_get([o for _, o, _ in self.pending])
        now = time.perf_counter()
        dt = now - (self.t_last or now)
        self.t_last = now
        steps = [s for s, _, _ in self.pending]
        counts = [f for _, _, f in self.pending]
        self.pending = []
        rows = [{k: float(np.asarray(v)) for k, v in o.items()} | {"step": s} for s, o in zip(steps, outputs)]
        flops = sum(f[0] * r["tokens"] + f[1] * r["media"] if isinstance(f, tuple) else f
                    for f, r in zip(counts, rows))
        for r in rows:
            self.writer.write_scalars(r["step"], {"train/loss": r["loss"], "train/grad_norm": r["grad_norm"],
                                                  "train/learning_rate": r["lr"]})
        coll = StepMetrics.empty()
        for r in rows:
            coll = coll.merge(StepMetrics.single_from_model_output(loss=np.float32(r["loss"]),
                                                                   grad_norm=np.float32(r["grad_norm"]),
                                                                   lr=np.float32(r["lr"])))
        summary = {f"train/{k}_avg" if k != "learning_rate" else "train/learning_rate": float(v)
                   for k, v in coll.compute().items()}
        n = len(rows)
        speed = {"perf/step_time_s": dt / n, "perf/examples_per_s": self.global_batch * n / dt,
                 "perf/tokens_per_s": sum(r["tokens"] for r in rows) / dt,
                 "perf/answer_tokens_per_s": sum(r["targets"] for r in rows) / dt,
                 "perf/model_tflops_per_device_per_s": flops / dt / self.n_devices / 1e12}
        if self.peak:
            speed["perf/mfu"] = flops / dt / (self.n_devices * self.peak)
        if first:  # includes compilation: keep it out of the throughput curves
            speed = {"perf/first_step_incl_compile_s": dt}
        self.last_speed = speed
        scalars = summary | speed | dict(extra or {})
        self.writer.write_scalars(steps[-1], scalars)
        self.console(steps[-1], rows[-1], scalars, first)
        return rows

    def console(self, step: int, last: dict, s: dict, first: bool) -> None:
        if not self.main:
            return
        parts = [f"step {step}/{self.total}", f"loss {s['train/loss_avg']:.4f}", f"grad {s['train/grad_norm_avg']:.3f}",
                 f"lr {last['lr']:.2e}"]
        if first:
            parts.append(f"first step {s['perf/first_step_incl_compile_s']:.1f}s (compile)")
        else:
            parts += [f"{s['perf/step_time_s']:.3f}s/step", f"{s['perf/tokens_per_s']:,.0f} tok/s",
                      f"{s['perf/examples_per_s']:.1f} ex/s"]
            parts.append(f"MFU {100 * s['perf/mfu']:.1f}%" if "perf/mfu" in s
                         else f"{s['perf/model_tflops_per_device_per_s']:.3f} TFLOP/s/dev")
        skipped = sum(v for k, v in s.items() if k.startswith("data/skipped_"))
        if skipped:
            parts.append(f"skipped {int(skipped)}")
        self.print(" | ".join(parts))

    def write_eval(self, step: int, loss: float, n_tokens: int) -> None:
        self.writer.write_scalars(step, {"eval/loss": loss, "eval/answer_tokens": n_tokens})
        if self.main:
            self.print(f"step {step}/{self.total} | validation loss {loss:.4f} ({n_tokens} answer tokens)")

    def print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.flush()
        self.writer.close()


def memo_by_shape(flops_fn: Callable[[tuple], float]) -> Callable[[dict], float]:
    """Memoise the FLOP count per batch shape (the loader yields a few distinct shapes)."""
    cache: dict[tuple, float] = {}

    def f(batch: dict) -> float:
        key = (tuple(batch["vision_x"].shape), tuple(batch["input_ids"].shape))
        if key not in cache:
            cache[key] = flops_fn(key)
        return cache[key]

    return f
