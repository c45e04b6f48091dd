"""Compile-only TPU devices for ahead-of-time plans: a pod slice described by name, no chip needed.

libtpu's compiler runs on any host: `jax.experimental.topologies.get_topology_desc` returns device objects of a
slice that programs can be lowered and compiled for (not run), and `compiled.memory_analysis()` is then the real
per-chip footprint. Slice names follow libtpu ("v5e:16x16", "v5p:4x4x4", "v4:2x4x4", "v6e:4x4"); the Cloud
accelerator names users rent ("v5e-256", "v5litepod-256", "v5p-128", "v4-64", "v6e-16") are accepted too.
"""
from __future__ import annotations

import math
import os
import re

# Cloud accelerator name -> (libtpu generation, TensorCores per chip in the name's count).
_GENERATIONS = {"v4": ("v4", 2), "v5p": ("v5p", 2), "v5e": ("v5e", 1), "v5litepod": ("v5e", 1), "v6e": ("v6e", 1)}
# The usual slice shapes for a chip count (2D tori for the single-core chips, 3D for v4/v5p).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
# HBM per chip, from the public spec sheets (what XLA may use is a little less: e.g. 15.75 GiB of a v5e's 16).
HBM_BYTES = (("TPU v6 lite", 32 * 2 ** 30), ("TPU v5 lite", 16 * 2 ** 30), ("TPU v5", 95 * 2 ** 30),
             ("TPU v4", 32 * 2 ** 30), ("TPU v3", 16 * 2 ** 30))

INSTALL_HINT = ("ahead-of-time TPU plans need libtpu: `pip install -e '.[aot]'` (or "
                "`pip install \"jax[tpu]==$(python -c 'import jax; print(jax.__version__)')\"`)")


class TopologyError(ValueError):
    """An unknown slice name, or no libtpu to compile with."""


def libtpu_name(name: str) -> str:
    """'v5e-256' -> 'v5e:16x16', 'v5p-128' -> 'v5p:4x4x4', 'v4-64' -> 'v4:2x4x4'; libtpu names pass through."""
    if ":" in name:
        return name
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip().lower())
    if not m:
        raise TopologyError(f"--topology {name!r}: use a libtpu slice name (v5e:16x16, v5p:4x4x4, v4:2x4x4) or a "
                            f"Cloud accelerator name (v5e-256, v5p-128, v4-64, v6e-16)")
    gen, per_chip = _GENERATIONS[m.group(1)]
    chips = int(m.group(2)) // per_chip
    shapes = _SHAPES_3D if gen in ("v4", "v5p") else _SHAPES_2D
    if chips not in shapes:
        raise TopologyError(f"--topology {name!r}: no standard {gen} slice of {chips} chips; give its shape, "
                            f"e.g. {gen}:{next(iter(shapes.values()))}")
    return f"{gen}:{shapes[chips]}"


def devices(name: str) -> list:
    """The compile-only devices of slice `name` (raises TopologyError without libtpu or for an unknown name)."""
    try:
        import libtpu  # noqa: F401  (jax finds the compiler through this package)
    except ImportError:
        raise TopologyError(INSTALL_HINT) from None
    # libtpu takes a machine-wide lock file by default, which only matters with real chips attached: let plans
    # (and a CPU job that probed for TPUs) compile side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    full = libtpu_name(name)
    # Two-core chips (v4, v5p) run as one "megacore" device per chip, as jax uses them; four chips per host.
    kw = (dict(chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=[False] * 3)
          if full.split(":")[0] in ("v4", "v5p") else {})
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=full, **kw).devices)
    except Exception as e:  # libtpu says why (unknown generation or shape) in its own words
        raise TopologyError(f"--topology {name!r} ({full}): {str(e).splitlines()[0]}") from None


RESERVED_BYTES = 2 ** 28  # what XLA:TPU keeps back: a v5e's compiler reports "available HBM (15.75G)" of 16 GiB


def hbm_bytes(device_kind: str) -> int | None:
    for kind, size in HBM_BYTES:
        if device_kind.startswith(kind):
            return size
    return None


def usable_bytes(device_kind: str) -> int | None:
    """HBM a program may use. A compile for compile-only devices can succeed past it (seen: 17.7 GiB on a v5e),
    so a plan fits only when it compiles AND its peak is within this."""
    size = hbm_bytes(device_kind)
    return None if size is None else size - RESERVED_BYTES


def chips(name: str) -> int:
    return math.prod(int(x) for x in libtpu_name(name).split(":")[1].split("x"))
