"""Device meshes, logical-axis rules, and building models whose parameters are born sharded.

Parameters name logical axes ("embed", "mlp", "heads", "kv_heads", "vocab", "layers", "norm"); a rules table maps
each to a mesh axis ("data", "fsdp", "tensor") or None. A dimension that the mapped mesh axes do not divide is
replicated instead (e.g. a 32004-row vocabulary on 8 tensor shards), and a mesh axis is used at most once per array.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),  # also the batch axis of activations (see `constrain`)
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by the fixed mesh axes ({known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} available")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return P(*spec)


def _names(var: nnx.Variable) -> tuple[str | None, ...]:
    meta = var.get_metadata()
    return tuple(meta.get("out_sharding") or meta.get("sharding_names") or ())


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """A NamedSharding for every variable of `state` (abstract or concrete)."""

    def one(var: nnx.Variable):
        value = var.get_value()
        names = _names(var) or (None,) * len(value.shape)
        return var.replace(NamedSharding(mesh, logical_to_spec(names, value.shape, mesh, rules)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(make: Callable[[], nnx.Module], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Initialise `make()` with every parameter created directly in its shards (never whole on one device)."""
    abstract = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract)
    shardings = nnx.to_pure_dict(state_shardings(state, mesh, rules))

    @functools.partial(jax.jit, out_shardings=shardings)
    def init():
        return nnx.to_pure_dict(nnx.state(make()))

    with jax.set_mesh(mesh):
        values = init()
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)


def place(abstract: nnx.Module, arrays: Mapping[str, np.ndarray], mesh: Mesh | None = None,
          rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Fill an abstract model (from `nnx.eval_shape`) with host arrays keyed by dotted path, each sent straight to
    its shards (or to the default device without a mesh). Non-parameter variables must be absent or also given."""
    graphdef, state = nnx.split(abstract)
    shardings = state_shardings(state, mesh, rules) if mesh is not None else None
    flat = dict(nnx.to_flat_state(state))
    sflat = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    new = {}
    for path, var in flat.items():
        key = ".".join(str(p) for p in path)
        if key not in arrays:
            raise KeyError(f"no value for parameter {key}")
        target = sflat[path].get_value() if sflat else None
        value = np.asarray(arrays[key]).astype(var.get_value().dtype, copy=False)
        new[path] = var.replace(jax.device_put(value, target) if target is not None else jax.numpy.asarray(value))
    return nnx.merge(graphdef, nnx.from_flat_state(new))


def flat_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of `model` as a host numpy array keyed by dotted path (gathers sharded arrays)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        out[".".join(str(p) for p in path)] = np.asarray(jax.device_get(var.get_value()))
    return out


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch-major array: leading axis over the mesh axes that "batch" maps to."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), (0,) * ndim, mesh, rules))


def per_device_bytes(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """Bytes of `state` (abstract is fine) held by the most loaded device once sharded by `rules`."""
    total = 0
    for (_, var), (_, shard) in zip(nnx.to_flat_state(state), nnx.to_flat_state(state_shardings(state, mesh, rules))):
        value = var.get_value()
        local = shard.get_value().shard_shape(value.shape)
        total += math.prod(local) * np.dtype(value.dtype).itemsize
    return total


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("otter_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """While tracing under this context, `constrain` pins activations to the mesh by logical names.

    Why: parameters say how they are split, activations do not; left to propagation, XLA may follow a weight's
    fsdp-split embedding axis into the activations and replicate the batch instead (every chip then computes the
    global batch: pure FSDP over 256 chips needed ~100 GiB per chip). Pinning the batch axis at block boundaries
    keeps every activation split like the batch."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """A sharding constraint on activation `x` from logical axis names; a no-op outside `activation_sharding`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def active_mesh() -> Mesh | None:
    """The mesh of the enclosing `activation_sharding` (None outside one)."""
    active = _ACTIVE.get()
    return None if active is None else active[0]


def logical_spec(names: Sequence[str | None], shape: Sequence[int]) -> P:
    """The PartitionSpec of an activation under the enclosing `activation_sharding` (for shard_map'd kernels)."""
    mesh, rules = _ACTIVE.get()
    return logical_to_spec(names, shape, mesh, rules)


def batch_shards(size: int) -> int:
    """How many ways the enclosing `activation_sharding` splits a batch axis of `size` rows (1 outside one)."""
    mesh = active_mesh()
    if mesh is None:
        return 1
    axes = logical_spec(("batch",), (size,))[0]
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
