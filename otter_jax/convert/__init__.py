"""Weight conversion between our model and PyTorch checkpoints (original Otter HF layout)."""
from otter_jax.convert.otter_hf import (  # noqa: F401
    abstract_model, arrays_to_torch, load_torch_checkpoint, read_config, save_torch_checkpoint, torch_to_arrays)
from otter_jax.convert.torch_io import CheckpointError  # noqa: F401
from otter_jax.models.config import ConfigError  # noqa: F401
