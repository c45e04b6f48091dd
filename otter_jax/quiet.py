"""Quiet command-line output: what a user reads should be our lines, not library boilerplate.

Set up once by `otter-jax` before any heavy import (environment variables are read at import time):
- TensorFlow's C++ INFO/WARNING preamble (TF_CPP_MIN_LOG_LEVEL=2), transformers' warnings such as "You are using a
  model of type otter ..." (TRANSFORMERS_VERBOSITY=error), absl WARNING lines such as TFDS's "Variant folder ...";
- TFDS's "Downloading and preparing dataset ..." / "... downloaded and prepared" lines, which it prints to stdout
  unconditionally (patched out right after `tensorflow_datasets.core.dataset_builder` is imported);
- progress bars when stderr is not a terminal (TQDM_DISABLE=1): a log file full of carriage returns and escape
  codes is unreadable.
A variable the user already set wins; `-v` keeps everything.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_TFDS_BUILDER = "tensorflow_datasets.core.dataset_builder"


def _silence_tfds_builder(module) -> None:
    cls = getattr(module, "DatasetBuilder", None)
    if cls is not None:
        cls._log_download_bytes = lambda self: None
        cls._log_download_done = lambda self: None


def _absl_errors_only(module) -> None:
    module.set_verbosity(module.ERROR)


HOOKS = {_TFDS_BUILDER: _silence_tfds_builder, "absl.logging": _absl_errors_only}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `HOOKS[name](module)` right after `name` is first imported (wraps that module's loader only)."""

    def __init__(self):
        self.pending = {n: h for n, h in HOOKS.items() if n not in sys.modules}

    def find_spec(self, fullname, path, target=None):
        hook = self.pending.pop(fullname, None)
        if hook is None:
            return None
        if not self.pending:
            sys.meta_path.remove(self)
        spec = next((s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                     for s in [f.find_spec(fullname, path, target)] if s is not None), None)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                hook(module)

        spec.loader = Loader()
        return spec


def no_tpu_here() -> bool:
    """libtpu is installed (the [aot] extra, for `otter-jax plan --topology`) but this host has no TPU chip and no
    GPU plugin: jax would probe for TPUs at start and print libtpu's errors about it, so the CPU is the platform.
    TPU VMs show their chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5e, v5p, v6e) and are left alone."""
    import glob

    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return False
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return False
    return importlib.util.find_spec("jax_cuda12_plugin") is None and importlib.util.find_spec("jax_plugins") is None


def quiet_output(verbose: bool = False) -> list[str]:
    """Quiet what follows; returns the environment variables it set (an in-process caller may unset them)."""
    if verbose:
        return []
    wanted = {"TF_CPP_MIN_LOG_LEVEL": "2", "TRANSFORMERS_VERBOSITY": "error"}
    if no_tpu_here():
        wanted["JAX_PLATFORMS"] = "cpu"
    if not sys.stderr.isatty():
        wanted["TQDM_DISABLE"] = "1"
    set_here = [k for k in wanted if k not in os.environ]
    for k in set_here:
        os.environ[k] = wanted[k]
    for name, hook in HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        finder = _AfterImport()
        if finder.pending:
            sys.meta_path.insert(0, finder)
    return set_here
