"""The analytic FLOP count behind MFU agrees with XLA's own count of the forward pass (one layer per stack, so
XLA's count-the-loop-body-once rule is exact), and device peaks are looked up by kind."""
import dataclasses
import types

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax.models import Otter, Policy, presets
from otter_jax.models.config import OtterConfig, SpecialTokens
from otter_jax.train import flops


def test_forward_flops_match_xla_cost_analysis():
    text = {"model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    d = presets.otter(text, cross_attn_every_n_layers=2)  # one scanned group
    d["vision_config"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                              image_size=56)
    d.update(vis_dim=128, perceiver_depth=1, perceiver_num_latents=8)
    cfg = dataclasses.replace(OtterConfig.from_hf_dict(d), tokens=SpecialTokens(media=509, endofchunk=508, answer=510))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Otter(cfg, Policy(), rngs=nnx.Rngs(0))))
    B, L, T = 2, 64, 2

    def forward(state, vision_x, ids):
        return nnx.merge(graphdef, state)(vision_x, ids).logits

    lowered = jax.jit(forward).lower(state, jax.ShapeDtypeStruct((B, T, 1, 3, 56, 56), jnp.float32),
                                     jax.ShapeDtypeStruct((B, L), jnp.int32))
    cost = lowered.cost_analysis()
    xla = (cost if isinstance(cost, dict) else cost[0])["flops"]
    ours = flops.forward_flops(cfg, B, L, T, 1).total
    assert 0.95 * xla <= ours <= xla, (ours, xla)  # XLA also counts softmax/norm/activation arithmetic
    train = flops.train_flops(cfg, B, L, T, 1)
    f = flops.forward_flops(cfg, B, L, T, 1)
    assert train == f.vision + 3 * (f.perceiver + f.cross_attention + f.head) + 2 * f.language


def test_device_peaks():
    tpu = types.SimpleNamespace(device_kind="TPU v5 lite", platform="tpu")
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")
    assert flops.device_peak_flops(tpu) == 197e12
    assert flops.device_peak_flops(h100) == 989e12 and flops.device_peak_flops(h100, "float32") == 989e12 / 2
    assert flops.device_peak_flops(jax.devices()[0]) is None  # CPU: unknown, so no MFU is claimed


def test_mfu_counts_real_tokens_only(tmp_path):
    """A half-padded batch does half the text work: the reporter scales the text FLOPs by the step's real tokens."""
    from otter_jax.train.metrics import Reporter

    rep = Reporter(str(tmp_path), 4, 2, peak_flops=1e12, n_devices=1, progress=False)
    rep.start(0)
    out = {"loss": 1.0, "grad_norm": 1.0, "lr": 1.0, "tokens": 64.0, "targets": 10.0, "media": 10.0}
    rep.step_done(1, out, (1e7, 1e8))  # 10 MFLOP per real token + 10 media items of 100 MFLOP (1 GFLOP)
    t0 = rep.t_last
    rows = rep.flush()
    assert rows and rows[0]["tokens"] == 64
    dt = rep.t_last - t0
    # The interval's model FLOPs are 1e9 + 64 * 1e7 = 1.64e9 (not the 128-slot shape's 2.28e9).
    assert abs(rep.last_speed["perf/model_tflops_per_device_per_s"] * dt * 1e12 - 1.64e9) < 1e3


def test_mfu_counts_real_media_only(tmp_path):
    """Vision and perceiver FLOPs are counted per real media item (the step's `media` output), so padded media
    slots are not model work, encoded or not (Policy.media_budget: tests/test_media_skip.py)."""
    from otter_jax.train.metrics import Reporter

    rep = Reporter(str(tmp_path), 4, 2, peak_flops=1e12, n_devices=1, progress=False)
    rep.start(0)
    out = {"loss": 1.0, "grad_norm": 1.0, "lr": 1.0, "tokens": 64.0, "targets": 10.0, "media": 6.0}
    rep.step_done(1, out, (1e7, 1e8))  # 10 MFLOP per real token, 100 MFLOP per real media item
    t0 = rep.t_last
    rep.flush()
    # 64 x 1e7 + 6 x 1e8 = 1.24e9 (not a 16-slot shape's 2.24e9).
    assert abs(rep.last_speed["perf/model_tflops_per_device_per_s"] * (rep.t_last - t0) * 1e12 - 1.24e9) < 1e3
