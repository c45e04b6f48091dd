"""Training checkpoints: model + optimizer state, and a JSON `meta` item (config, global data position), one orbax
step directory each.

Separate from `otter_jax.checkpoint` (a model-only checkpoint for conversion and inference; `otter-jax convert
--from-checkpoint` makes one from these): these exist to resume training exactly. The data position is global (the
next global step of the loader's one global order), so a run resumes on any number of processes. Saves are
asynchronous (the step loop continues while arrays are written) and kept N deep.

Fallback: only a checkpoint that is incomplete or corrupt (an item or file missing, a file that does not decode) is
skipped for the one before it, and every process takes the same decision (each reports what it saw; one bad read
anywhere falls back everywhere). Any other error (I/O hiccup, permission, out of memory) stops the run as it is:
silently rolling back and renaming the newest checkpoint would throw away training.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)
ITEMS = ("state", "meta")
# tensorstore status codes that mean "this checkpoint's bytes are missing or wrong" (not a transient failure).
CORRUPT_CODES = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "INVALID_ARGUMENT", "FAILED_PRECONDITION")
OK, CORRUPT, ERROR = 0, 1, 2
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


def is_corruption(e: BaseException) -> bool:
    """Whether a restore error means missing or undecodable checkpoint bytes (vs. a failure of the machine or the
    file system, which must surface). Looks through the exception's causes."""
    while e is not None:
        if isinstance(e, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, EOFError)):
            return True
        if isinstance(e, KeyError) and "was not found in the checkpoint" in str(e):
            return True  # an item directory is missing
        if isinstance(e, (ValueError, RuntimeError)) and str(e).startswith(CORRUPT_CODES):
            return True
        e = e.__cause__ or e.__context__
    return False


class Checkpoints:
    def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        _use_array_handler()
        self.every = max(int(every), 1)  # applied here: orbax would also save the first step of every run
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step: int, state: nnx.State, data_iter, meta: dict, force: bool = False) -> bool:
        """Start saving at multiples of `every` or when forced (returns at once when async); True if saving.
        Every process calls it: the data position is gathered over processes."""
        if not force and step % self.every:
            return False
        data = data_iter.global_state() if hasattr(data_iter, "global_state") else data_iter.get_state()
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat(state)),
                                  meta=ocp.args.JsonSave(meta | {"data": data}))
        return self.manager.save(step, args=args, force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, template: nnx.State, data_iter, check: Callable[[dict], None] | None = None
                       ) -> tuple[int, nnx.State, dict] | None:
        """(step, state, meta) from the newest complete checkpoint; `data_iter` is set in place. None if none.

        `check(meta)` runs before the arrays are read: a run config that cannot resume this checkpoint raises there,
        instead of looking like an unreadable checkpoint."""
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in flat(template).items()}
        unreadable = []
        for step in reversed(self.steps()):
            out = None
            meta = self._read(step, meta=ocp.args.JsonRestore())
            if meta is not None:
                meta = dict(meta.meta)
                if "data" not in meta:
                    raise RuntimeError(f"{self.directory}/{step}: no global data position in its meta (written by an "
                                       f"older otter-jax); start a new config.workdir")
                if check is not None:
                    check(meta)  # outside _read: a refusal is the caller's error, not a bad checkpoint
                out = self._read(step, state=ocp.args.StandardRestore(target))
            if meta is None or out is None:
                unreadable.append(step)
                continue
            self._set_aside(unreadable)
            if hasattr(data_iter, "set_global_state"):
                data_iter.set_global_state(meta["data"])
            else:
                data_iter.set_state(meta["data"])
            return step, unflat(template, out.state), meta
        if self.steps():
            raise RuntimeError(f"{self.directory}: no checkpoint could be restored (steps {self.steps()})")
        return None

    def _read(self, step: int, **items):
        """The named items of one step, or None when the checkpoint is incomplete or corrupt on any process (with a
        warning); any other error on any process raises on every process."""
        err, status, out = None, OK, None
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - classified below, and re-raised unless it means corruption
            err, status = e, (CORRUPT if is_corruption(e) else ERROR)
        worst = status
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            seen = np.asarray(multihost_utils.process_allgather(np.int32(status)))
            worst = int(seen.max())
            if worst == ERROR and status != ERROR:
                raise RuntimeError(f"checkpoint {self.directory}/{step}: processes "
                                   f"{np.flatnonzero(seen == ERROR).tolist()} failed to read it (see their logs); "
                                   f"not falling back")
        if status == ERROR:
            raise err
        if worst == CORRUPT:
            why = (f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}" if err is not None
                   else "corrupt on another process")
            log.warning("checkpoint %s/%d is incomplete or corrupt (%s); falling back to the previous one",
                        self.directory, step, why)
            return None
        return out

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
