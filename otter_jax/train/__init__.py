"""Sharded instruction tuning: config, optimizer, train state, jitted steps, data adapter, checkpoints, metrics,
the training loop, and the `train` / `plan` commands."""
