"""The training loop: exact resume after SIGTERM and SIGKILL, checkpoint fallback only on corruption, models from
training checkpoints, TensorBoard output, the demo run."""
import errno
import glob
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


from train_helpers import CACHE_DIR, demo_root, tiny_config  # noqa: F401
from otter_jax.train import config as C, data, loop

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints 2, 4, 6 and the exported model)."""
    workdir = tmp_path_factory.mktemp("full")
    return workdir, loop.train(tiny_config(workdir))


class _SigtermAt(data.SyntheticBatches):
    """Sends this process a real SIGTERM while the batch of step `AT` is being fetched."""
    AT = 3

    def __next__(self):
        if self.step == self.AT - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_sigterm_saves_and_resume_is_exact_with_corrupt_fallback(full, tmp_path, monkeypatch, caplog, capsys):
    workdir, full = full
    assert sorted(full.losses) == [1, 2, 3, 4, 5, 6] and full.last_step == 6 and not full.preempted
    assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
    assert full.eval_losses and all(v > 0 for v in full.eval_losses.values())

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(data, "SyntheticBatches", _SigtermAt)
        stopped = loop.train(tiny_config(run))
    assert stopped.preempted and stopped.last_step == 3
    assert f"preempted at step 3: checkpoint {run / 'checkpoints'}/3 saved" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is not None
    assert sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit()) == [2, 3]
    assert stopped.losses == {s: full.losses[s] for s in (1, 2, 3)}

    resumed = loop.train(tiny_config(run))  # same command again: resumes at 3
    assert resumed.start_step == 3 and sorted(resumed.losses) == [4, 5, 6]
    for s in (4, 5, 6):
        assert resumed.losses[s] == full.losses[s], (s, resumed.losses[s], full.losses[s])  # bitwise

    # Break the newest checkpoint (6): the next start warns and falls back to 4, then still matches.
    for f in glob.glob(str(run / "checkpoints" / "6" / "state" / "**" / "*"), recursive=True):
        if os.path.isfile(f):
            with open(f, "wb") as fh:
                fh.write(b"\0garbage")
    with caplog.at_level(logging.WARNING, logger="otter_jax.train.checkpoints"):
        again = loop.train(tiny_config(run, train=dict(steps=6)))
    assert any("incomplete or corrupt" in r.message and "/6 " in r.message for r in caplog.records)
    assert again.start_step == 4 and {s: again.losses[s] for s in (5, 6)} == {s: full.losses[s] for s in (5, 6)}
    assert os.path.isdir(run / "checkpoints" / "6.unreadable")  # set aside for inspection

    # Resuming in the other layer layout is refused by name before any array is read; nothing is set aside.
    kept = sorted(os.listdir(run / "checkpoints"))
    with pytest.raises(C.TrainConfigError, match="scan_layers=True"):
        loop.train(tiny_config(run, policy=dict(scan_layers=False), train=dict(steps=8)))
    assert sorted(os.listdir(run / "checkpoints")) == kept


def test_sigkill_mid_run_then_resume_is_bitwise_exact(full, tmp_path):
    """A real SIGKILL at step 5 (no handler runs, nothing is saved then); the same command resumes from the last
    checkpoint (4) and gives bitwise the losses of the uninterrupted run."""
    _, full = full
    env = dict(os.environ, OTTER_TEST_COMPILE_CACHE=CACHE_DIR)
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, str(HERE / "sigkill_worker.py"), str(tmp_path / "run"), "5"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stdout[-2000:] + p.stderr[-2000:]
    resumed = loop.train(tiny_config(tmp_path / "run"))
    assert resumed.start_step == 4 and sorted(resumed.losses) == [5, 6]
    assert {s: resumed.losses[s] for s in (5, 6)} == {s: full.losses[s] for s in (5, 6)}


def test_fallback_only_on_corruption(full, tmp_path, monkeypatch, caplog):
    """A checkpoint with a missing file falls back; an I/O or memory error while reading surfaces as it is and
    renames nothing."""
    import shutil

    import orbax.checkpoint as ocp

    workdir, _ = full
    run = tmp_path / "run"
    shutil.copytree(workdir / "checkpoints", run / "checkpoints")
    before = sorted(os.listdir(run / "checkpoints"))
    for error in (OSError(errno.EIO, "Input/output error"), MemoryError("out of memory"),
                  ValueError("UNAVAILABLE: connection reset by peer")):
        def restore(self, *args, error=error, **kwargs):
            raise error

        with monkeypatch.context() as m:
            m.setattr(ocp.CheckpointManager, "restore", restore)
            with pytest.raises(type(error), match=re.escape(str(error))):
                loop.train(tiny_config(run))
        assert sorted(os.listdir(run / "checkpoints")) == before
    os.remove(run / "checkpoints" / "6" / "state" / "manifest.ocdbt")  # incomplete: a file is gone
    with caplog.at_level(logging.WARNING, logger="otter_jax.train.checkpoints"):
        again = loop.train(tiny_config(run))
    assert again.start_step == 4 and any("incomplete or corrupt" in r.message for r in caplog.records)


def test_model_from_a_training_checkpoint(full, tmp_path):
    """`convert --from-checkpoint` writes the model of any training checkpoint (= the run's own export at that step);
    a training checkpoint given where a model is expected names that command; --to-torch takes one directly."""
    from otter_jax import checkpoint
    from otter_jax.cli import main
    from otter_jax.convert.torch_io import CheckpointError

    workdir, _ = full
    step = workdir / "checkpoints" / "6"
    with pytest.raises(CheckpointError, match=f"otter-jax convert --from-checkpoint {step} --out MODEL_DIR"):
        checkpoint.load_model(str(workdir / "checkpoints"))
    assert main(["convert", "--from-checkpoint", str(step), "--out", str(tmp_path / "m")]) == 0
    ours, cfg = checkpoint.load_model(str(tmp_path / "m"))
    exported, cfg2 = checkpoint.load_model(str(workdir / "model"))
    assert cfg == cfg2
    from flax import nnx

    a, b = nnx.to_flat_state(nnx.state(ours)), nnx.to_flat_state(nnx.state(exported))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()), err_msg=str(path))
    assert main(["convert", "--to-torch", str(workdir), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists() and glob.glob(str(tmp_path / "hf" / "model*.safetensors"))


def test_demo_config_loss_falls(demo_root, tmp_path):
    """configs/demo.py on the bundled demo data (image groups only, to compile one shape): the answer-token
    loss must fall well below its start."""
    c = C.load(f"configs/demo.py:{demo_root}", [
        f"--config.workdir={tmp_path}", "--config.train.steps=40", "--config.train.log_every=5",
        "--config.train.eval_every=0", "--config.train.eval_batches=0", "--config.checkpoint.enabled=False",
        "--config.data.group_weights=IMAGE_TEXT=1", "--config.optim.warmup_steps=5", "--config.train.progress=False"])
    r = loop.train(c)
    first = sum(r.losses[s] for s in (1, 2, 3)) / 3
    last = sum(r.losses[s] for s in (38, 39, 40)) / 3
    assert last < 0.6 * first, (first, last)
