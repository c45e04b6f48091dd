"""Training checkpoints: model + optimizer state, data iterator state and the config, one orbax step directory each.

Separate from `otter_jax.checkpoint` (a model-only checkpoint for conversion and inference): these exist to resume
training exactly. Saves are asynchronous (the step loop continues while arrays are written), kept N deep, and a
latest checkpoint that cannot be read (corrupt, half-written) falls back to the one before it with a warning.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)
ITEMS = ("state", "data_iter", "meta")
# Replicated arrays are written in slices by all their replicas only when a slice is at least this big: slicing
# the many small replicated arrays (norms, gates, latents) costs a compiled program per shape for no gain.
MIN_REPLICA_SLICE_BYTES = 16 << 20


def _use_array_handler() -> None:
    from orbax.checkpoint._src.serialization import jax_array_handlers

    current = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(current, "_min_slice_bytes_for_replica_parallel", None) == MIN_REPLICA_SLICE_BYTES:
        return
    handler = jax_array_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns about every override
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_log.setLevel(level)


def flat(state: nnx.State) -> dict[str, Any]:
    """{"0.embed_tokens.embedding": array, "1.opt_state.0.mu...": array}: plain string keys for orbax."""
    return {".".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}


def unflat(template: nnx.State, values: dict[str, Any]) -> nnx.State:
    pairs = []
    for path, var in nnx.to_flat_state(template):
        key = ".".join(map(str, path))
        if key not in values:
            raise KeyError(f"checkpoint has no array {key}")
        pairs.append((path, var.replace(values[key])))
    return nnx.from_flat_state(pairs)


class Checkpoints:
    def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        _use_array_handler()
        self.every = max(int(every), 1)  # applied here: orbax would also save the first step of every run
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step: int, state: nnx.State, data_iter, meta: dict, force: bool = False) -> bool:
        """Start saving at multiples of `every` or when forced (returns at once when async); True if saving."""
        if not force and step % self.every:
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat(state)),
                                  data_iter=grain.checkpoint.CheckpointSave(data_iter),
                                  meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, template: nnx.State, data_iter, check: Callable[[dict], None] | None = None
                       ) -> tuple[int, nnx.State, dict] | None:
        """(step, state, meta) from the newest readable checkpoint; `data_iter` is set in place. None if none.

        `check(meta)` runs before the arrays are read: a run config that cannot resume this checkpoint raises there,
        instead of looking like an unreadable checkpoint."""
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in flat(template).items()}
        unreadable = []
        for step in reversed(self.steps()):
            meta = self._read(step, meta=ocp.args.JsonRestore())
            if meta is not None and check is not None:
                check(dict(meta.meta))  # outside _read: a refusal is the caller's error, not a bad checkpoint
            out = None if meta is None else self._read(step, state=ocp.args.StandardRestore(target),
                                                       data_iter=grain.checkpoint.CheckpointRestore(data_iter))
            if out is None:
                unreadable.append(step)
                continue
            self._set_aside(unreadable)
            return step, unflat(template, out.state), dict(meta.meta)
        if self.steps():
            raise RuntimeError(f"{self.directory}: no checkpoint could be restored (steps {self.steps()})")
        return None

    def _read(self, step: int, **items):
        """The named items of one step, or None (with a warning) when the checkpoint cannot be read."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: the caller tries the previous one
            log.warning("checkpoint %s/%d cannot be restored (%s: %s); falling back to the previous one",
                        self.directory, step, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
            return None

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unreadable checkpoints to `<step>.unreadable` (kept for inspection) so the run can save those
        steps again."""
        if not steps:
            return
        if jax.process_index() == 0:
            from etils import epath

            for step in steps:
                src = epath.Path(self.directory) / str(step)
                dst, n = epath.Path(f"{src}.unreadable"), 1
                while dst.exists():
                    dst, n = epath.Path(f"{src}.unreadable{n}"), n + 1
                src.rename(dst)
                log.warning("moved the unreadable checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("otter_jax_checkpoints_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
