"""`omnimouse train`: pretrain an OmniMouse model from a config, sharded over a device mesh, resuming from the workdir.

    omnimouse train --config experiments/configs/omnimouse.py:size=tiny --workdir W [--config.train.steps=500 ...]
    omnimouse train --compile-only --config experiments/configs/omnimouse.py:size=300M --config.mesh.fsdp=8
    launch/local_multiprocess.sh 2 -- --config ... --workdir W      (or srun, or a TPU pod: one process per host)

Multi-process runs join jax.distributed first (omnimouse_jax.parallel.distributed: flags, SLURM or Cloud TPU), check
that every process runs the same config, and then train as one program over all processes' devices.
--compile-only plans a run instead: it compiles the train step for the config's mesh on abstract inputs and prints
per-device memory and FLOPs per step without allocating parameters (on a CPU it fakes the devices the mesh needs;
docs/performance.md has the table for every size).

Each step samples a masking strategy from the training mix (a pure function of seed and step), so one compiled step
serves every strategy. The next step is dispatched before the previous step's metrics are fetched. Checkpoints hold the
model, optimizer, data-iterator position, device-hours and the session layout; a workdir that has one resumes from it.
SIGINT/SIGTERM stop a run at any time: before the loop at once, inside it after the current step and a checkpoint; the
command then exits 130/143 (omnimouse_jax/interrupts.py). A non-finite loss stops the run before anything is saved
past the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import jax

from omnimouse_jax import interrupts
from omnimouse_jax.errors import UserError
from omnimouse_jax.parallel import _jax_compat
from omnimouse_jax.train.session import TrainingSession, compile_only


# config.train counts that must be positive integers before anything compiles (eval_every_steps=0 means never).
POSITIVE_TRAIN_KEYS = ("steps", "batch_size")


def check_train_counts(config) -> None:
    """UserError naming the first config.train count that is not a positive integer (steps=0 would otherwise
    compile, write a workdir without a checkpoint and exit 0)."""
    for key in POSITIVE_TRAIN_KEYS:
        value = config.train.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"config.train.{key}={value!r}: expected a positive integer")


def plan(config) -> dict:
    """omnimouse_jax.train.session.compile_only for config.mesh; on a CPU backend not yet started, first fakes as
    many CPU devices as the mesh needs, so a laptop can plan a cluster's run."""
    sizes = [int(config.mesh.get(axis, 1)) for axis in ("data", "fsdp", "tensor")]
    if all(size > 0 for size in sizes) and not _jax_compat.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", math.prod(sizes))

    return compile_only(config)


def print_plan(result: dict) -> None:
    """The compile-only numbers as a table: per device, then per step."""
    mib = lambda b: f"{b / 2**20:12,.2f} MiB"  # noqa: E731
    mesh = " x ".join(f"{axis}={size}" for axis, size in result["mesh"].items())
    rows = [("parameters", result["param_bytes"]), ("optimizer state", result["optimizer_bytes"]),
            ("other state (RNG)", result["other_state_bytes"]), ("batch", result["batch_bytes"]),
            ("arguments (XLA)", result["argument_bytes"]), ("outputs (XLA)", result["output_bytes"]),
            ("  of which donated", result["aliased_bytes"]), ("activations+temp (XLA)", result["temp_bytes"]),
            ("peak estimate", result["peak_bytes"])]
    print(f"compile-only: {result['devices']} devices, mesh {mesh}, global batch {result['global_batch']}, "
          f"{result['param_count']:,} parameters, {result['num_neuron_rows']:,} neuron rows from {result['source']}")
    print("per device:")
    for name, value in rows:
        print(f"  {name:<24}{mib(value)}")
    print(f"model FLOPs per step (dense attention, no remat): {result['flops_per_device']:.4g} per device, "
          f"{result['flops_per_step']:.4g} in all")


def train(config, workdir) -> dict:
    """Trains to config.train.steps (or until signalled) and returns the last logged training metrics."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return run_until_done_or_signalled(TrainingSession(config, workdir))


def run_until_done_or_signalled(session) -> dict:
    """Runs a training session to its last step and returns its last logged metrics. SIGINT/SIGTERM finish the
    current step and save; the session is closed either way, and then an interrupted run raises
    interrupts.Interrupted (exit 130/143 through the CLI)."""
    with contextlib.ExitStack() as stack:
        stop = interrupts.active() or stack.enter_context(interrupts.handled())
        with stop.deferring():  # also while closing: a second signal must not cut the final checkpoint's write
            try:
                metrics = session.run(stop)
            finally:
                session.close()
        stop.raise_if_requested()
        return metrics
