"""`otter-jax plan --topology`: the real TPU compiler's verdict for a pod slice, compiled on this CPU host (libtpu,
the [aot] extra, which CI installs). Tiny models on a 4-chip v5e slice keep each compile to seconds."""
import json
import pathlib
import subprocess
import sys

import pytest

from train_helpers import tiny_config

pytest.importorskip("libtpu", reason="ahead-of-time TPU plans need libtpu: pip install -e '.[aot]'")

from otter_jax.models import presets  # noqa: E402
from otter_jax.train import topology  # noqa: E402
from otter_jax.train.plan import find_batch, plan  # noqa: E402

GIB = 2 ** 30
ROOT = pathlib.Path(__file__).resolve().parents[2]


def pod_like(tmp_path, **policy):
    """The tiny model with the 7B presets' policy (chunked attention and loss) and pure FSDP."""
    pol = presets.pod_policy(**{"attention_chunk": 16, "loss_chunk": 16, **policy})
    return tiny_config(tmp_path, mesh=dict(data=1, fsdp=-1, tensor=1), policy=pol)


def test_slice_names():
    assert topology.libtpu_name("v5e-256") == "v5e:16x16"
    assert topology.libtpu_name("v5p-128") == "v5p:4x4x4"
    assert topology.libtpu_name("v4-64") == "v4:2x4x4"
    assert topology.libtpu_name("v5e:2x2") == "v5e:2x2"
    with pytest.raises(topology.TopologyError, match="v5e-256"):
        topology.libtpu_name("tpu-big")
    assert len(topology.devices("v5e-4")) == 4
    assert len(topology.devices("v4-16")) == 8  # one megacore device per two-core chip


def test_tpu_plan_fits_and_reports(tmp_path):
    p = plan(pod_like(tmp_path), devices=topology.devices("v5e:2x2"), per_chip_batch=2, generate=True)
    assert p["platform"] == "tpu" and p["device_kind"] == "TPU v5 lite"
    assert p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert p["fits"] and p["per_chip_batch"] == 2 and p["batch"]["global_batch_size"] == 8
    assert p["hbm_bytes_per_device"] == 16 * GIB
    state = p["per_device_param_bytes"] + p["per_device_optimizer_bytes"]
    assert state <= p["compiled_memory_per_device"]["argument_size_in_bytes"]
    assert state < p["peak_bytes_per_device"] < GIB
    gen = p["generate"]  # bf16 prefill of 8 prompts of 1024 tokens and one cached decode step
    assert gen["shape"] == {"batch": 8, "prompt": 1024, "max_new": 256}
    assert 0 < gen["prefill"]["peak_bytes"] < GIB and 0 < gen["decode_step"]["peak_bytes"] < GIB


def test_frozen_parameters_stored_in_bf16(tmp_path):
    fp32 = plan(pod_like(tmp_path, frozen_param_dtype=""), compile_step=False)
    mixed = plan(pod_like(tmp_path), compile_step=False)
    frozen = fp32["params_total"] - fp32["params_trainable"]
    assert fp32["param_bytes"] == 4 * fp32["params_total"]
    assert mixed["param_bytes"] == 4 * fp32["params_trainable"] + 2 * frozen
    assert mixed["optimizer_bytes"] == fp32["optimizer_bytes"]  # fp32 moments of the fp32 trainable masters


def test_does_not_fit_gives_the_compilers_verdict(tmp_path):
    """A batch far beyond the chip: the compile fails and the plan says so with the compiler's HBM figure."""
    c = pod_like(tmp_path, attention="dense", loss_chunk=0)
    c.data.max_seq_len = 1024  # [B, 2 heads, 1024, 1024] float32 scores: 8 MiB a sequence, 32 GiB at 4096
    p = plan(c, devices=topology.devices("v5e:2x2"), per_chip_batch=4096)
    assert p["fits"] is False and "HBM" in p["compiler_message"]


def test_find_batch_bisects():
    class Fake:  # fits up to 5 sequences per chip
        def try_train_step(self, b):
            return {"fits": b <= 5, "memory": {"peak_estimate_bytes": b * GIB} if b <= 5 else None,
                    "compile_seconds": 0.0}

    best, result, tried = find_batch(Fake(), log=lambda *_: None)
    assert best == 5 and result["fits"] and sorted(tried) == [1, 2, 4, 5, 6, 8]
    best, _, tried = find_batch(Fake(), start=16, log=lambda *_: None)
    assert best == 5 and max(tried) == 16


def test_cli_json_last_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "otter_jax.cli", "plan", "--config", "configs/demo.py",
                          "--topology", "v5e-4", "--per-chip-batch", "1", "--json", "--config.mesh.data=1",
                          "--config.mesh.fsdp=-1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    p = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("fits", "peak_bytes_per_device", "hbm_bytes_per_device", "device_kind", "mesh", "per_chip_batch"):
        assert key in p
    assert p["fits"] and p["device_kind"] == "TPU v5 lite" and "verdict: fits" in out.stdout
    assert p["compile_cpu_seconds"] > 0 and "CPU-seconds" in out.stdout


def test_a_compile_past_the_usable_hbm_is_not_a_fit():
    """Compile-only TPU programs can compile beyond the chip (17.7 GiB on a v5e was seen): the peak decides too."""
    from otter_jax.train.plan import verdict

    usable = topology.usable_bytes("TPU v5 lite")
    assert usable == int(15.75 * GIB)
    r = verdict({"fits": True, "memory": {"peak_estimate_bytes": int(17.66 * GIB)}}, usable)
    assert not r["fits"] and "exceeds" in r["error"]
    assert verdict({"fits": True, "memory": {"peak_estimate_bytes": 9 * GIB}}, usable)["fits"]
