"""Checkpoints: model and optimizer state, the grain iterator, and a JSON record (step, RNG seed, device-hours,
session layout, config) saved together by one orbax CheckpointManager, asynchronously, with a keep policy.

Restore tries the newest step first and falls back to older ones if it is unreadable, saying so in one line (orbax's
own tracebacks for the damaged files are silenced), so a checkpoint truncated by a crash never costs more than the
interval since the previous one. Training moves the damaged step aside; reading for evaluation leaves every file as
it is, and a step asked for by number must be readable.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from omnimouse_jax.errors import UserError
from omnimouse_jax.faults import ENV as FAULT_ENV, kill_point
from omnimouse_jax.parallel import _jax_compat

# Replica-parallel saving slices every replicated array per device, one small XLA compile each: seconds of overhead
# for the many small parameters of a model. Keep it for arrays large enough to gain from parallel writes.
_absl = logging.getLogger("absl")
_level, _ = _absl.level, _absl.setLevel(logging.ERROR)  # the override is deliberate: no warning
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=4 << 20), override=True)
_absl.setLevel(_level)


class Checkpointer:
    def __init__(self, directory, *, keep: int = 3, use_async: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=use_async, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, meta: dict) -> None:
        """Starts saving (returns before the write finishes when asynchronous)."""
        kill_point("save_start", step)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(keys_to_data(state)),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta)), force=True)
        kill_point("save_inflight", step)
        if os.environ.get(FAULT_ENV, "").startswith("save_done:"):
            self.manager.wait_until_finished()
            kill_point("save_done", step)

    def read_meta(self, step: int | None = None, log=None) -> tuple[int, dict]:
        """(step, meta): the JSON record of `step`, or of the newest step whose record reads (older ones tried in
        turn, each damaged one named in one line). UserError if `step`'s record is damaged or none reads."""
        def read(candidate):
            return self.manager.restore(candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

        return self._first_readable(read, step, log)

    def restore(self, abstract_state, data_iterator=None, step: int | None = None, log=None,
                read_only: bool = False, partial: bool = False):
        """(step, state, meta, data_restored) from `step` or the newest readable checkpoint.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) that the restored arrays follow. The
        grain iterator is restored in place when given and when the checkpoint holds this process's iterator file
        (the same process count); otherwise data_restored is False and the caller positions it from the step.
        Falling back past unreadable newer steps moves them aside so training can save them anew, unless
        `read_only`. With `partial`, `abstract_state` may name a part of the saved tree (the model without its
        optimizer, for inference) and only that part is read."""
        def read(candidate):
            items = {"state": _restore_args(abstract_state, partial), "meta": ocp.args.JsonRestore()}
            iterator_file = (self.directory / str(candidate) / "data" /
                             f"process_{jax.process_index()}-of-{jax.process_count()}.json")
            with_data = data_iterator is not None and iterator_file.exists()
            if with_data:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            return restored["state"], restored["meta"], with_data

        log = log or _stderr
        found, (state, meta, with_data) = self._first_readable(read, step, log)
        if step is None and not read_only:
            self._quarantine([c for c in self.steps() if c > found], log)
        return found, state, meta, with_data

    def _first_readable(self, read, step: int | None, log):
        """(step, read(step)) for `step`, or for the newest step that `read` can read."""
        log = log or _stderr
        candidates = [step] if step is not None else self.steps()[::-1]
        if not candidates:
            raise UserError(f"{self.directory}: no checkpoint to restore")
        errors = []
        for candidate in candidates:
            try:
                with _quiet_orbax():
                    return candidate, read(candidate)
            except Exception as err:  # orbax raises many types for a damaged step; try the previous one
                errors.append(f"step {candidate}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                if step is None:
                    log(f"checkpoint {self.directory / str(candidate)} is unreadable ({errors[-1]}); trying an "
                        "older one")
        what = f"checkpoint step {step} is unreadable" if step is not None else "no readable checkpoint"
        raise UserError(f"{self.directory}: {what} ({'; '.join(errors)})")

    def _quarantine(self, steps: list[int], log) -> None:
        """Moves unreadable newer steps aside (kept for inspection, never deleted) so the run can save them anew."""
        if not steps or jax.process_index() != 0:
            return
        aside = self.directory.parent / "checkpoints_unreadable"
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.directory / str(step), target)
            log(f"moved unreadable checkpoint {self.directory / str(step)} to {target}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def saved_record(directory: Path, step: int | None = None) -> tuple[int, dict] | None:
    """(step, record) of `step`'s checkpoint in `directory`, or of the newest readable one: the run's config and
    layout, read without building a model. None when the directory holds no checkpoint (or none at `step`)."""
    if not Path(directory).is_dir():
        return None
    checkpointer = Checkpointer(directory, use_async=False)
    try:
        steps = checkpointer.steps()
        if not steps or (step is not None and step not in steps):
            return None
        return checkpointer.read_meta(step)
    finally:
        checkpointer.close()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_orbax():
    """Silences the tracebacks orbax, tensorstore and asyncio log while a damaged step is read: the caller reports
    the failure in one line."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "orbax", "jax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    """Typed PRNG keys (dropout streams) as their raw uint32 data, which orbax can store."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _restore_args(abstract_state, partial: bool):
    if not partial:
        return ocp.args.StandardRestore(abstract_state)
    return ocp.args.PyTreeRestore(abstract_state, ocp.checkpoint_utils.construct_restore_args(abstract_state),
                                  partial_restore=True)


def data_to_keys(restored, like):
    """Undoes `keys_to_data` where `like` (arrays or ShapeDtypeStructs) holds a typed key."""
    def impl(x):  # a ShapeDtypeStruct has no key_impl(); its key dtype carries the implementation
        return jax.random.key_impl(x) if isinstance(x, jax.Array) else _jax_compat.key_impl_of_dtype(x.dtype)

    return jax.tree.map(lambda r, x: jax.random.wrap_key_data(r, impl=impl(x)) if _is_key(x) else r, restored, like)


def abstract_like(state):
    """ShapeDtypeStructs (keeping shardings) of a pytree of arrays or ShapeDtypeStructs: the target orbax restores
    into, with typed keys as their raw data (see keys_to_data)."""
    def one(x):
        shape = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
        return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, state)
