"""The pod policy end to end on CPU: packed demo rows (2 episodes a row), frozen towers in bf16, per-layer remat,
chunked attention and loss, activations pinned to the (data, fsdp, tensor) mesh; the answer-token loss falls."""
import jax.numpy as jnp

from train_helpers import CACHE_DIR, demo_root  # noqa: F401
from otter_jax.train import config as C, loop


def test_packed_pod_policy_training(demo_root, tmp_path):
    c = C.load(f"configs/demo.py:{demo_root}", [
        f"--config.workdir={tmp_path}", "--config.train.steps=30", "--config.train.log_every=5",
        "--config.train.eval_every=0", "--config.train.eval_batches=0", "--config.checkpoint.enabled=False",
        "--config.data.group_weights=IMAGE_TEXT=1", "--config.optim.warmup_steps=5", "--config.train.progress=False",
        "--config.data.pack_episodes=2", "--config.data.max_seq_len=288", "--config.data.max_media=8",
        "--config.policy.dtype=float32", "--config.policy.frozen_param_dtype=bfloat16",
        "--config.policy.remat=nothing_saveable", "--config.policy.attention=chunked",
        "--config.policy.attention_chunk=96", "--config.policy.loss_chunk=96",
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"])
    r = loop.train(c)
    first = sum(r.losses[s] for s in (1, 2, 3)) / 3
    last = sum(r.losses[s] for s in (28, 29, 30)) / 3
    assert last < 0.7 * first, (first, last)
