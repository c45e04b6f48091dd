"""The training loop: exact resume after SIGTERM, corrupt-checkpoint fallback, TensorBoard output, the demo run."""
import glob
import logging
import os
import signal

import pytest


from train_helpers import demo_root, tiny_config  # noqa: F401
from otter_jax.train import config as C, data, loop


class _SigtermAt(data.SyntheticBatches):
    """Sends this process a real SIGTERM while the batch of step `AT` is being fetched."""
    AT = 3

    def __next__(self):
        if self.step == self.AT - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_sigterm_saves_and_resume_is_exact_with_corrupt_fallback(tmp_path, monkeypatch, caplog):
    full = loop.train(tiny_config(tmp_path / "full"))
    assert sorted(full.losses) == [1, 2, 3, 4, 5, 6] and full.last_step == 6 and not full.preempted
    assert glob.glob(str(tmp_path / "full" / "tensorboard" / "events.out.tfevents.*"))
    assert full.eval_losses and all(v > 0 for v in full.eval_losses.values())

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(data, "SyntheticBatches", _SigtermAt)
        stopped = loop.train(tiny_config(run))
    assert stopped.preempted and stopped.last_step == 3
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

    # Resuming in the other layer layout is refused by name before any array is read; nothing is set aside.
    kept = sorted(os.listdir(run / "checkpoints"))
    with pytest.raises(C.TrainConfigError, match="scan_layers=True"):
        loop.train(tiny_config(run, policy=dict(scan_layers=False), train=dict(steps=8)))
    assert sorted(os.listdir(run / "checkpoints")) == kept


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
