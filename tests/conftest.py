"""Shared fixtures. Eight simulated CPU devices for sharding tests, and one persistent JAX compilation cache for the
whole session (both must be set before jax is imported).

The compilation cache is set through environment variables, so it covers every test module and also the
subprocesses tests start (CLI runs, the serve server, the distributed and SIGKILL workers), which inherit
os.environ: a program that two tests (or a test and its subprocess) build separately compiles once. The folder is
a fresh temp dir per session, removed at the end; set OTTER_TEST_COMPILE_CACHE to a folder of your own to keep the
cache between local runs (it is then left in place).
"""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWN_CACHE = "OTTER_TEST_COMPILE_CACHE" not in os.environ
COMPILE_CACHE = os.environ.setdefault("OTTER_TEST_COMPILE_CACHE", tempfile.mkdtemp(prefix="otter-jax-cc-"))
os.environ["JAX_COMPILATION_CACHE_DIR"] = COMPILE_CACHE
# Cache every program, however small or quick to compile (jax's defaults skip those under 1 s).
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

_models: dict = {}


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # made here (an xdist worker shares its controller's)
        os.environ.pop("OTTER_TEST_COMPILE_CACHE", None)
        shutil.rmtree(COMPILE_CACHE, ignore_errors=True)


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
