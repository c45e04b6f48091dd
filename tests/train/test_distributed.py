"""A real 2-process jax.distributed run on 127.0.0.1 (4 CPU devices each, one 8-device (2, 2, 2) mesh) gives the
same per-step losses as 1 process with 8 devices."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from train_helpers import CACHE_DIR, tiny_config
from otter_jax.train import loop

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    port = _free_port()
    env = dict(os.environ, OTTER_TEST_COMPILE_CACHE=CACHE_DIR)
    env.pop("XLA_FLAGS", None)
    procs, outs = [], []
    for pid in range(2):
        outs.append(tmp_path / f"out{pid}.json")
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "dist_worker.py"), str(port), "2", str(pid), str(tmp_path / "multi"),
             str(outs[-1])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    multi = [json.loads(o.read_text()) for o in outs]
    assert all(m["process_count"] == 2 and m["local_devices"] == 4 and m["devices"] == 8 for m in multi)
    # both processes saw the same (global) losses and wrote one checkpoint set together
    assert multi[0]["losses"] == multi[1]["losses"]
    ckpt = Path(multi[0]["checkpoints"])
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(ckpt / "6" / "data_iter"))

    single = loop.train(tiny_config(tmp_path / "single"))
    losses = {int(k): v for k, v in multi[0]["losses"].items()}
    assert sorted(losses) == sorted(single.losses) == [1, 2, 3, 4, 5, 6]
    for s, v in single.losses.items():
        assert abs(losses[s] - v) <= 1e-6 * abs(v), (s, losses[s], v)
    for s, v in single.eval_losses.items():
        assert abs(multi[0]["eval"][str(s)] - v) <= 1e-6 * abs(v)
