"""`otter-jax plan --config configs/X.py [--devices N] [--config.mesh.fsdp=8 ...]`: what a training job needs per
device, before renting the devices: parameter counts, optimizer bytes, per-device parameter + optimizer bytes under
the mesh and rules, and XLA's memory analysis of the compiled train step (on N simulated CPU devices).

Nothing is allocated: shapes come from `nnx.eval_shape`, and the step is compiled from abstract arrays.
"""
from __future__ import annotations

import argparse
import math
import os

from otter_jax.config_files import accept_overrides
from otter_jax.train.cli import shorthand_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment file configs/X.py[:arg]; --config.a.b=v overrides")
    parser.add_argument("--devices", type=int, default=0,
                        help="plan for N devices, simulated on CPU (default: the devices of this machine)")
    parser.add_argument("--media", choices=("image", "video"), default="image",
                        help="batch layout for the compiled step: image groups (T=data.max_media, F=1) or video "
                             "(T=1, F=data.num_frames)")
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


def plan(c, media: str = "image", compile_step: bool = True) -> dict:
    """The numbers `otter-jax plan` prints, as a dict."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from otter_jax import config_files, sharding as S
    from otter_jax.models.config import SpecialTokens
    from otter_jax.models.trainable import trainable_filter
    from otter_jax.train import config as C, flops, optim, state as ST, step as STEP

    cfg = C.model_config(c)
    v = cfg.text.vocab_size
    cfg = C.model_config(c, SpecialTokens(media=v - 3, endofchunk=v - 4, answer=v - 2, pad=v - 1))
    policy = config_files.policy(c)
    mesh = S.make_mesh(**dict(c.mesh))
    rules = C.parse_rules(c.rules)
    graphdef, abstract = ST.abstract_state(cfg, policy, c)
    model_state, opt_state = abstract[0], abstract[1]
    model_abstract = nnx.merge(graphdef, abstract)[0]
    trainable = nnx.state(model_abstract, trainable_filter(c.train.train_lm, c.train.train_vision))
    out = {"mesh": dict(mesh.shape), "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind}
    out["params_total"], out["param_bytes"] = _count(model_state)
    out["params_trainable"], _ = _count(trainable)
    _, out["optimizer_bytes"] = _count(opt_state)
    out["per_device_param_bytes"] = S.per_device_bytes(model_state, mesh, rules)
    out["per_device_optimizer_bytes"] = S.per_device_bytes(opt_state, mesh, rules)
    B, L = c.train.global_batch_size, c.data.max_seq_len
    T, F = (c.data.max_media, 1) if media == "image" else (1, c.data.num_frames)
    out["batch"] = {"global_batch_size": B, "grad_accum": c.train.grad_accum, "seq_len": L, "media": T,
                    "frames": F, "image_size": c.data.image_size}
    out["train_tflops_per_step"] = flops.train_flops(cfg, B, L, T, F, c.train.train_lm, c.train.train_vision) / 1e12
    if compile_step:
        shardings = S.state_shardings(abstract, mesh, rules)
        ts = ST.TrainState(graphdef, abstract, shardings, cfg)
        batch_sh = S.batch_sharding(mesh, rules, 2)
        S_ = c.data.image_size
        batch = {"vision_x": jax.ShapeDtypeStruct((B, T, F, 3, S_, S_), jnp.uint8, sharding=batch_sh),
                 **{k: jax.ShapeDtypeStruct((B, L), jnp.int32, sharding=batch_sh)
                    for k in ("input_ids", "attention_mask", "labels")}}
        fn = STEP.jit_train_step(ts, mesh, rules, c.train.grad_accum, optim.schedule(c.optim, c.train.steps),
                                 c.train.train_lm, c.train.train_vision)
        compiled = fn.lower(ts.abstract(), batch).compile()
        mem = compiled.memory_analysis()
        if mem is not None:
            fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                      "temp_size_in_bytes", "generated_code_size_in_bytes")
            out["compiled_memory_per_device"] = {f: int(getattr(mem, f)) for f in fields if hasattr(mem, f)}
            m = out["compiled_memory_per_device"]
            out["compiled_memory_per_device"]["peak_estimate_bytes"] = (
                m.get("argument_size_in_bytes", 0) + m.get("output_size_in_bytes", 0)
                - m.get("alias_size_in_bytes", 0) + m.get("temp_size_in_bytes", 0))
    return out


def report(p: dict) -> str:
    lines = [f"mesh {p['mesh']} on {p['devices']} x {p['device_kind']}",
             f"parameters: {p['params_total']:,} total, {p['params_trainable']:,} trainable "
             f"({_gib(p['param_bytes'])})",
             f"optimizer state: {_gib(p['optimizer_bytes'])} (AdamW moments of the trainable parameters)",
             f"per device: parameters {_gib(p['per_device_param_bytes'])} + optimizer "
             f"{_gib(p['per_device_optimizer_bytes'])} = "
             f"{_gib(p['per_device_param_bytes'] + p['per_device_optimizer_bytes'])}",
             f"batch {p['batch']}: {p['train_tflops_per_step']:,.4g} model TFLOPs per step"]
    m = p.get("compiled_memory_per_device")
    if m:
        lines.append("compiled train step, per device: " + ", ".join(
            f"{k.replace('_size_in_bytes', '').replace('_bytes', '')} {_gib(v)}" for k, v in m.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.devices:
        import jax

        os.environ["JAX_PLATFORMS"] = "cpu"
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.devices)
    from otter_jax.train import config as C

    try:
        c = C.load(args.config, shorthand_overrides(args) + args.overrides)
    except (C.TrainConfigError, FileNotFoundError) as e:
        raise SystemExit(f"otter-jax plan: {e}")
    print(report(plan(c, args.media, not args.no_compile)))
    return 0
