"""`otter-jax plan --config configs/X.py [--topology v5e:16x16 | --devices N]`: what a training job needs per device,
before renting the devices.

Parameter counts, optimizer bytes, per-device parameter + optimizer bytes under the mesh and rules, model TFLOPs per
step, and the compiled train step's memory analysis. With `--topology` the step is compiled by the real TPU compiler
for that pod slice (compile-only devices, `otter_jax.train.topology`): its verdict is the fit, and `--find-batch`
searches the largest per-chip batch that compiles. Without it the step is compiled for this machine's devices (or N
simulated CPU devices): a CPU plan, labelled so. Nothing is allocated: shapes come from `nnx.eval_shape` and the step
is compiled from abstract arrays.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

from otter_jax.config_files import accept_overrides
from otter_jax.train.cli import shorthand_overrides

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes", "host_temp_size_in_bytes")  # host: Policy.offload_layer_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment file configs/X.py[:arg]; --config.a.b=v overrides")
    parser.add_argument("--topology", help="compile for a TPU slice (needs libtpu, the [aot] extra): a libtpu name "
                                           "(v5e:16x16, v5p:4x4x4, v4:2x4x4) or a Cloud name (v5e-256, v5p-128)")
    parser.add_argument("--devices", type=int, default=0,
                        help="plan for N devices, simulated on CPU (default: the devices of this machine)")
    parser.add_argument("--media", choices=("image", "video"), default="image",
                        help="batch layout for the compiled step: image groups (T=data.max_media, F=1) or video "
                             "(T=1, F=data.num_frames)")
    parser.add_argument("--per-chip-batch", type=int, default=0,
                        help="sequences per device in one micro-batch (global batch = this x devices, no "
                             "accumulation); default: the config's global_batch_size / grad_accum")
    parser.add_argument("--find-batch", action="store_true",
                        help="search the largest per-chip batch whose step compiles within the device memory")
    parser.add_argument("--generate", action="store_true",
                        help="also compile generation: the prefill and one decode step (batch = --per-chip-batch x "
                             "devices, bf16 weights)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--no-compile", action="store_true", help="skip compiling the train step (memory analysis)")
    for name in ("workdir", "coordinator", "num_processes", "process_id"):
        parser.set_defaults(**{name: None})
    accept_overrides(parser)


def _gib(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{int(n)} B"


def _count(state) -> tuple[int, int]:
    from flax import nnx
    import numpy as np

    n = b = 0
    for _, var in nnx.to_flat_state(state):
        v = var.get_value()
        n += math.prod(v.shape)
        b += math.prod(v.shape) * np.dtype(v.dtype).itemsize
    return n, b


def memory(compiled) -> dict | None:
    """The compiler's per-device bytes, plus the peak estimate (arguments + outputs - aliased + temporaries)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    m = {f: int(getattr(mem, f)) for f in MEMORY_FIELDS if getattr(mem, f, 0) or not f.startswith("host")}
    m["peak_estimate_bytes"] = (m.get("argument_size_in_bytes", 0) + m.get("output_size_in_bytes", 0)
                                - m.get("alias_size_in_bytes", 0) + m.get("temp_size_in_bytes", 0))
    return m


def is_out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "exceeds available HBM" in text or "Ran out of memory" in text


def oom_message(e: Exception) -> str:
    """The compiler's own sentence about the overflow (the first lines that name the sizes)."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    keep = [l for l in lines if "RESOURCE_EXHAUSTED" in l or "exceeds" in l or "Ran out of memory" in l]
    return " ".join(keep[:2] or lines[:1])[:600]


def verdict(result: dict, usable: int | None) -> dict:
    """A compiled step fits when its peak is within the device's usable HBM as well (see topology.usable_bytes)."""
    peak = (result.get("memory") or {}).get("peak_estimate_bytes")
    if result["fits"] and usable is not None and peak is not None and peak > usable:
        return result | {"fits": False, "error": f"compiled, but the peak of {_gib(peak)} per device exceeds the "
                                                 f"{_gib(usable)} of HBM a program may use"}
    return result


class Stopwatch:
    """Wall and CPU seconds since creation. Both, because XLA:TPU compiles on several threads: wall time depends on
    the cores free, CPU time on the work (on a 2-core host a 7B step compiles in ~4 min wall, ~6 CPU-minutes)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"compile_seconds": time.perf_counter() - self.wall,
                "compile_cpu_seconds": time.process_time() - self.cpu}


class Planner:
    """Everything a plan compiles, built once per config and mesh; `train_step(b)` compiles for b sequences/device."""

    def __init__(self, c, media: str = "image", devices=None):
        import jax
        from flax import nnx

        from otter_jax import config_files, sharding as S
        from otter_jax.models.config import SpecialTokens
        from otter_jax.train import config as C, state as ST

        cfg = C.model_config(c)
        v = cfg.text.vocab_size
        self.c = c
        self.cfg = C.model_config(c, SpecialTokens(media=v - 3, endofchunk=v - 4, answer=v - 2, pad=v - 1))
        self.policy = config_files.policy(c)
        self.devices = list(jax.devices() if devices is None else devices)
        self.mesh = S.make_mesh(**dict(c.mesh), devices=self.devices)
        self.rules = C.parse_rules(c.rules)
        self.graphdef, self.abstract = ST.abstract_state(self.cfg, self.policy, c)
        self.media = media
        self.T, self.F = (c.data.max_media, 1) if media == "image" else (1, c.data.num_frames)
        self._ts = None
        self._nnx = nnx

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind

    def counts(self) -> dict:
        from otter_jax import sharding as S
        from otter_jax.models.trainable import trainable_filter

        nnx, c = self._nnx, self.c
        model_state, opt_state = self.abstract[0], self.abstract[1]
        model_abstract = nnx.merge(self.graphdef, self.abstract)[0]
        trainable = nnx.state(model_abstract, trainable_filter(c.train.train_lm, c.train.train_vision))
        out = {"mesh": dict(self.mesh.shape), "devices": len(self.devices), "device_kind": self.device_kind}
        out["params_total"], out["param_bytes"] = _count(model_state)
        out["params_trainable"], _ = _count(trainable)
        _, out["optimizer_bytes"] = _count(opt_state)
        out["per_device_param_bytes"] = S.per_device_bytes(model_state, self.mesh, self.rules)
        out["per_device_optimizer_bytes"] = S.per_device_bytes(opt_state, self.mesh, self.rules)
        return out

    def batch_shape(self, global_batch: int, grad_accum: int) -> dict:
        c = self.c
        return {"global_batch_size": global_batch, "grad_accum": grad_accum, "seq_len": c.data.max_seq_len,
                "media": self.T, "frames": self.F, "image_size": c.data.image_size,
                "per_chip_batch": global_batch // grad_accum / len(self.devices)}

    def train_step(self, global_batch: int, grad_accum: int):
        """Lower and compile the train step for this global batch (raises the compiler's error when it does not fit)."""
        import jax
        import jax.numpy as jnp

        from otter_jax import sharding as S
        from otter_jax.train import optim, state as ST, step as STEP

        c = self.c
        if self._ts is None:
            shardings = S.state_shardings(self.abstract, self.mesh, self.rules)
            self._ts = ST.TrainState(self.graphdef, self.abstract, shardings, self.cfg)
        B, L, S_ = global_batch, c.data.max_seq_len, c.data.image_size
        batch_sh = S.batch_sharding(self.mesh, self.rules, 2)
        batch = {"vision_x": jax.ShapeDtypeStruct((B, self.T, self.F, 3, S_, S_), jnp.uint8, sharding=batch_sh),
                 **{k: jax.ShapeDtypeStruct((B, L), jnp.int32, sharding=batch_sh)
                    for k in ("input_ids", "attention_mask", "labels")
                    + (STEP.PACKED_INPUTS if c.data.get("pack_episodes", 1) > 1 else ())}}
        fn = STEP.jit_train_step(self._ts, self.mesh, self.rules, grad_accum, optim.schedule(c.optim, c.train.steps),
                                 c.train.train_lm, c.train.train_vision)
        return fn.lower(self._ts.abstract(), batch).compile()

    def try_train_step(self, per_chip: int) -> dict:
        """{fits, memory | error, compile_seconds, compile_cpu_seconds} for `per_chip` sequences per device, no
        accumulation."""
        from otter_jax.train import topology

        clock = Stopwatch()
        try:
            compiled = self.train_step(per_chip * len(self.devices), 1)
        except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory verdict is an answer
            if not is_out_of_memory(e):
                raise
            return {"fits": False, "error": oom_message(e), **clock.read()}
        return verdict({"fits": True, "memory": memory(compiled), **clock.read()},
                       topology.usable_bytes(self.device_kind))


def find_batch(planner: Planner, start: int = 1, limit: int = 64, log=print) -> tuple[int, dict, dict]:
    """Largest per-chip batch that compiles: double from `start` until one fails, then bisect.
    Returns (batch, its result, every tried batch -> result); batch 0 when even `start` does not fit."""
    tried: dict[int, dict] = {}

    def attempt(b: int) -> bool:
        tried[b] = planner.try_train_step(b)
        r = tried[b]
        what = (f"peak {_gib(r['memory']['peak_estimate_bytes'])}" if r["fits"] and r["memory"] else
                "fits" if r["fits"] else "does not fit")
        log(f"  per-chip batch {b}: {what} ({r['compile_seconds']:.0f} s compile)")
        return r["fits"]

    lo, hi = 0, None
    b = start
    while b <= limit:
        if attempt(b):
            lo, b = b, b * 2
        else:
            hi = b
            break
    if hi is None:
        hi = limit + 1
    if lo == 0 and start > 1:  # start was too optimistic: search below it
        hi, lo = start, 0
        b = start // 2
        while b >= 1 and not attempt(b):
            hi, b = b, b // 2
        lo = max(b, 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return lo, tried.get(lo, {}), tried


def plan(c, media: str = "image", compile_step: bool = True, devices=None, per_chip_batch: int = 0,
         find: bool = False, generate: bool = False, log=lambda *_: None) -> dict:
    """The numbers `otter-jax plan` prints, as a dict (keys as in `--json`)."""
    from otter_jax.train import flops, topology

    planner = Planner(c, media, devices)
    out = planner.counts()
    out["platform"] = planner.devices[0].platform
    out["hbm_bytes_per_device"] = topology.hbm_bytes(planner.device_kind)
    out["usable_bytes_per_device"] = topology.usable_bytes(planner.device_kind)
    n = len(planner.devices)
    if per_chip_batch:
        B, k = per_chip_batch * n, 1
    else:
        B, k = c.train.global_batch_size, c.train.grad_accum
    out["batch"] = planner.batch_shape(B, k)
    out["per_chip_batch"] = out["batch"]["per_chip_batch"]
    L = c.data.max_seq_len
    out["train_tflops_per_step"] = flops.train_flops(planner.cfg, B // k, L, planner.T, planner.F, c.train.train_lm,
                                                     c.train.train_vision) * k / 1e12
    if find:
        best, result, tried = find_batch(planner, max(per_chip_batch, 1), log=log)
        out["find_batch"] = {str(b): {"fits": r["fits"], "peak_bytes": (r.get("memory") or {}).get(
            "peak_estimate_bytes"), "compile_seconds": round(r["compile_seconds"], 1),
            "compile_cpu_seconds": round(r["compile_cpu_seconds"], 1)} for b, r in sorted(tried.items())}
        out["find_batch"] = {b: v | ({"why_not": tried[int(b)]["error"]} if "error" in tried[int(b)] else {})
                             for b, v in out["find_batch"].items()}
        if best:
            out["batch"] = planner.batch_shape(best * n, 1)
            out["per_chip_batch"] = best
            out["train_tflops_per_step"] = flops.train_flops(planner.cfg, best * n, L, planner.T, planner.F,
                                                             c.train.train_lm, c.train.train_vision) / 1e12
            out["fits"], out["compiled_memory_per_device"] = True, result["memory"]
            out["compile_seconds"], out["compile_cpu_seconds"] = result["compile_seconds"], result["compile_cpu_seconds"]
        else:
            out["fits"], out["compiler_message"] = False, tried[min(tried)].get("error")
            out["compiled_memory_per_device"] = tried[min(tried)].get("memory")
    elif compile_step:
        clock = Stopwatch()
        try:
            compiled = planner.train_step(B, k)
            r = verdict({"fits": True, "memory": memory(compiled)}, out["usable_bytes_per_device"])
            out["fits"], out["compiled_memory_per_device"] = r["fits"], r["memory"]
            if "error" in r:
                out["compiler_message"] = r["error"]
        except Exception as e:  # noqa: BLE001
            if not is_out_of_memory(e):
                raise
            out["fits"], out["compiler_message"] = False, oom_message(e)
        out.update(clock.read())
    m = out.get("compiled_memory_per_device")
    out["peak_bytes_per_device"] = m["peak_estimate_bytes"] if m else None
    if generate and out.get("per_chip_batch"):
        from otter_jax.generate.plan import compile_generation

        out["generate"] = compile_generation(planner, max(int(out["per_chip_batch"]), 1) * n)
    return out


def report(p: dict) -> str:
    where = "" if p.get("platform") == "tpu" else " (CPU plan: memory figures are XLA:CPU's, not an accelerator's)"
    lines = [f"mesh {p['mesh']} on {p['devices']} x {p['device_kind']}{where}",
             f"parameters: {p['params_total']:,} total, {p['params_trainable']:,} trainable "
             f"({_gib(p['param_bytes'])})",
             f"optimizer state: {_gib(p['optimizer_bytes'])} (AdamW moments of the trainable parameters)",
             f"per device: parameters {_gib(p['per_device_param_bytes'])} + optimizer "
             f"{_gib(p['per_device_optimizer_bytes'])} = "
             f"{_gib(p['per_device_param_bytes'] + p['per_device_optimizer_bytes'])}",
             f"batch {p['batch']}: {p['train_tflops_per_step']:,.4g} model TFLOPs per step (analytic count)"]
    m = p.get("compiled_memory_per_device")
    if m:
        lines.append("compiled train step, per device: " + ", ".join(
            f"{k.replace('_size_in_bytes', '').replace('_bytes', '')} {_gib(v)}" for k, v in m.items()))
    if "fits" in p:
        hbm = p.get("hbm_bytes_per_device")
        of = f" of {_gib(hbm)} HBM" if hbm else ""
        if p["fits"]:
            peak = p.get("peak_bytes_per_device")
            lines.append(f"verdict: fits, {p['per_chip_batch']:g} sequences per chip"
                         + (f", peak {_gib(peak)}{of}" if peak is not None else ""))
        else:
            lines.append(f"verdict: does not fit{of}: {p.get('compiler_message')}")
    if p.get("platform") == "tpu" and p.get("compile_seconds") is not None:
        lines.append(f"compiled in {p['compile_seconds']:.0f} s ({p.get('compile_cpu_seconds', 0):.0f} CPU-seconds)")
    for name, g in (p.get("generate") or {}).items():
        lines.append(f"generation {name}: " + ", ".join(f"{k} {_gib(v) if k.endswith('bytes') else v}"
                                                         for k, v in g.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.devices and not args.topology:
        import jax

        os.environ["JAX_PLATFORMS"] = "cpu"
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.devices)
    from otter_jax.train import config as C, topology

    try:
        c = C.load(args.config, shorthand_overrides(args) + args.overrides)
        devices = topology.devices(args.topology) if args.topology else None
    except (C.TrainConfigError, FileNotFoundError, topology.TopologyError) as e:
        raise SystemExit(f"otter-jax plan: {e}")
    log = (lambda *a: print(*a, flush=True))
    try:
        p = plan(c, args.media, not args.no_compile, devices, args.per_chip_batch, args.find_batch, args.generate,
                 log=log)
    except ValueError as e:  # a mesh that does not match the slice, a batch the mesh cannot split
        raise SystemExit(f"otter-jax plan: {e}")
    print(report(p))
    if args.json:
        print(json.dumps({k: v for k, v in p.items()}, default=str))
    return 0 if p.get("fits", True) else 1
