"""Real multi-process jax.distributed runs on 127.0.0.1 (2 processes x 4 CPU devices, one 8-device (2, 2, 2) mesh)
training on the real demo store: the same per-step losses as 1 process with 8 devices, a preemption notice reaching
one host stops both at the same step with a checkpoint (and a model both export together), and that checkpoint
resumes on 1 process in the same global data order."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from flax import nnx

from train_helpers import CACHE_DIR, demo_root, store_config  # noqa: F401
from otter_jax import checkpoint
from otter_jax.data import loader
from otter_jax.train import data, loop

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(n: int, workdir: Path, out_dir: Path, *extra: str):
    """Start `n` dist_worker.py processes joined at one coordinator; `wait()` of the result checks each exits 0 and
    returns their JSON results and logs. (Started first, so the test's own run overlaps their compiles.)"""
    port = _free_port()
    env = dict(os.environ, OTTER_TEST_COMPILE_CACHE=CACHE_DIR)
    env.pop("XLA_FLAGS", None)
    procs, outs = [], []
    for pid in range(n):
        outs.append(out_dir / f"out{pid}.json")
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "dist_worker.py"), str(port), str(n), str(pid), str(workdir), str(outs[-1]),
             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

    def wait(timeout: int = 420) -> tuple[list[dict], list[str]]:
        logs = []
        for p in procs:
            try:
                logs.append(p.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
        for p, log in zip(procs, logs):
            assert p.returncode == 0, log[-3000:]
        return [json.loads(o.read_text()) for o in outs], logs

    return procs, wait


def test_real_store_two_processes_match_one_preempt_and_resume_on_one(demo_root, tmp_path):
    c = store_config(tmp_path / "single", demo_root)
    order = loader.global_order(data._store(c.data.store, "data.store"), data.loader_config(c, c.data.seed))
    assert len({order.batch(k)[0] for k in range(6)}) >= 2  # the steps below mix groups of unequal, odd sizes

    # Process 1 alone gets a SIGTERM while fetching step 3's batch: both processes stop at one step, save, exit 0.
    procs, wait = start_workers(2, tmp_path / "multi", tmp_path, str(demo_root), "3")
    try:
        single = loop.train(c)  # meanwhile the reference: 1 process, 8 devices, 6 steps
    except BaseException:
        for p in procs:
            p.kill()
        raise
    multi, logs = wait()
    assert all(m["process_count"] == 2 and m["local_devices"] == 4 and m["devices"] == 8 for m in multi)
    assert all(m["preempted"] for m in multi) and multi[0]["last_step"] == multi[1]["last_step"]
    stop = multi[0]["last_step"]
    assert 3 <= stop < 6 and "preempted at step %d" % stop in logs[0]
    assert multi[0]["losses"] == multi[1]["losses"]  # global losses, seen by both
    steps = sorted(int(s) for s in os.listdir(tmp_path / "multi" / "checkpoints") if s.isdigit())
    assert steps[-1] == stop
    # The model both processes exported together equals the model in their checkpoint of that step.
    exported, _ = checkpoint.load_model(str(tmp_path / "multi" / "model_at_stop"))
    from_ckpt, _, _ = checkpoint.load_training_checkpoint(str(tmp_path / "multi" / "checkpoints" / str(stop)))
    for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(exported)), nnx.to_flat_state(nnx.state(from_ckpt))):
        np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()), err_msg=str(path))
    assert (tmp_path / "multi" / "model_at_stop" / "tokenizer.json").exists()

    losses = {int(k): v for k, v in multi[0]["losses"].items()}
    assert sorted(losses) == list(range(1, stop + 1))
    for s, v in losses.items():
        assert abs(single.losses[s] - v) <= 1e-5 * abs(v), (s, single.losses[s], v)

    # Elastic resume: the 2-process checkpoint continues on 1 process in the same global order.
    resumed = loop.train(store_config(tmp_path / "multi", demo_root))
    assert resumed.start_step == stop and sorted(resumed.losses) == list(range(stop + 1, 7))
    for s, v in resumed.losses.items():
        assert abs(single.losses[s] - v) <= 1e-5 * abs(v), (s, single.losses[s], v)
