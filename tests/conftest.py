"""Shared fixtures. Eight simulated CPU devices for sharding tests (must be set before jax is imported)."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

_models: dict = {}


@pytest.fixture(scope="session")
def golden_model():
    """name -> (model, config) loaded from the golden safetensors once per session."""
    from golden_helpers import golden_dir
    from otter_jax import convert

    def load(name: str):
        if name not in _models:
            _models[name] = convert.load_torch_checkpoint(str(golden_dir(name)))
        return _models[name]

    return load
