"""Multi-process runs on JAX's multi-controller runtime: one process per host (or per local process group), joined
by `jax.distributed` before anything touches a device.

Where the process group comes from, first match wins:
  1. explicit flags `--coordinator HOST:PORT --num-processes P --process-id I` (launch/local_multiprocess.sh);
  2. SLURM (`srun` with more than one task): JAX reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID;
  3. a Cloud TPU VM: JAX finds the pod's hosts from the TPU metadata;
  otherwise the run is a single process and nothing is initialised.

CPU processes exchange collectives through gloo, so a multi-process run can be tested on one machine. Failures are
bounded in time and name the process: an unreachable coordinator (or a peer that never joins) fails after the
initialisation timeout, and processes whose configs differ fail at the config check, naming the differing keys.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sys
import time
from collections.abc import Mapping

import jax

from omnimouse_jax.errors import UserError
from omnimouse_jax.parallel import _jax_compat

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class DistributedError(UserError):
    """A process group that cannot form or disagrees with itself: not bad usage, so exit code 1."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """How this process joins the run; None fields are left to JAX's cluster detection."""

    source: str  # "flags", "slurm" or "tpu"
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def describe(self) -> str:
        who = "this process" if self.process_id is None else f"process {self.process_id}"
        of = "" if self.num_processes is None else f" of {self.num_processes}"
        at = "" if self.coordinator is None else f", coordinator {self.coordinator}"
        return f"{who}{of} ({self.source}{at})"


def detect(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
           environ: Mapping[str, str] | None = None) -> ProcessGroup | None:
    """The process group from explicit flags, SLURM or a Cloud TPU VM; None for a single-process run."""
    environ = os.environ if environ is None else environ
    flags = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(value is not None for value in flags.values()):
        missing = [name for name, value in flags.items() if value is None]
        if missing:
            raise UserError(f"{', '.join(missing)}: missing; --coordinator, --num-processes and --process-id go "
                            "together")
        if not _ADDRESS.match(coordinator):
            raise UserError(f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. localhost:12355")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"--process-id {process_id} --num-processes {num_processes}: expected "
                            "0 <= process id < number of processes")
        return ProcessGroup("flags", coordinator, num_processes, process_id)
    if all(var in environ for var in _SLURM_VARS) and int(environ["SLURM_NTASKS"]) > 1:
        return ProcessGroup("slurm", None, int(environ["SLURM_NTASKS"]), int(environ["SLURM_PROCID"]))

    if _jax_compat.running_in_cloud_tpu_vm():
        return ProcessGroup("tpu")
    return None


def initialize(group: ProcessGroup | None, *, timeout_s: int = 300) -> None:
    """Joins the process group (once; a repeated call with a group already joined is a no-op).

    Must run before any device is used: a backend created earlier would not see the other processes. Raises
    DistributedError naming this process if the coordinator cannot be reached or a peer does not join in time."""
    if group is None or jax.distributed.is_initialized():
        return
    if _jax_compat.backends_are_initialized():
        raise RuntimeError("jax.distributed must be initialised before any device is used; call "
                           "omnimouse_jax.parallel.distributed.initialize first")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes reach each other over TCP
    if group.coordinator is not None and group.process_id != 0:
        # jaxlib aborts the process (no Python exception) when the coordinator never answers, so probe it first.
        _wait_for_coordinator(group, timeout_s)
    # Process 0 hosts the coordinator and waits for its peers; if one never joins, jaxlib aborts after the timeout,
    # so say here which process is waiting for what.
    print(f"omnimouse: {group.describe()}: joining the process group (timeout {timeout_s}s)", file=sys.stderr,
          flush=True)
    try:
        jax.distributed.initialize(group.coordinator, group.num_processes, group.process_id,
                                   initialization_timeout=int(timeout_s))
    except Exception as err:  # jaxlib raises its own runtime error type; its first line says why
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"{group.describe()}: could not join the process group within {timeout_s}s: "
                               f"{first}") from None
    _keep_compile_cache_only_if_shared(timeout_s)


def _wait_for_coordinator(group: ProcessGroup, timeout_s: float) -> None:
    host, _, port = group.coordinator.rpartition(":")
    deadline, reason = time.monotonic() + timeout_s, "no answer"
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as err:
            reason = err.strerror or type(err).__name__
        if time.monotonic() >= deadline:
            raise DistributedError(f"{group.describe()}: coordinator {group.coordinator} not reachable within "
                                   f"{timeout_s}s ({reason}); is process 0 running there?")
        time.sleep(0.25)


def check_same_config(config_json: str, *, timeout_s: int = 300) -> None:
    """Fails on every process, naming the processes and keys, unless all processes run the same config.

    Each process publishes its config through the coordinator's key-value store and compares its own with every
    other's; a process that never publishes makes the others fail after `timeout_s`. A no-op in a single process."""
    everyone = _exchange("config", config_json, timeout_s=timeout_s, what="its config")
    if everyone is None:
        return
    me = jax.process_index()
    mine = _flatten(json.loads(config_json))
    for other, theirs_json in enumerate(everyone):
        theirs = _flatten(json.loads(theirs_json))
        differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differing:
            low, high = sorted((me, other))
            a, b = (mine, theirs) if me == low else (theirs, mine)
            shown = "; ".join(f"config.{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in differing[:5])
            more = f" (and {len(differing) - 5} more)" if len(differing) > 5 else ""
            raise DistributedError(f"process {me}: processes {low} and {high} run different configs: {shown}{more}")


def _keep_compile_cache_only_if_shared(timeout_s: int) -> None:
    """Turns JAX's persistent compilation cache off for this run unless every process computes the same cache keys.

    Only process 0 writes entries and every process reads them, so the keys must not depend on the process. On the
    CPU backend they do (the device topology in each key names the process's own devices): a restarted run would load
    process 0's step from the cache and compile the others' afresh, and those processes hang in their first
    collective (docs/reliability.md). Must run before the first compile, which fixes JAX's choice for the process."""
    fingerprint = _jax_compat.topology_fingerprint(jax.devices())
    everyone = _exchange("topology", fingerprint, timeout_s=timeout_s, what="its device topology")
    if everyone is None or len(set(everyone)) == 1:
        return
    jax.config.update("jax_enable_compilation_cache", False)
    if jax.process_index() == 0:
        print(f"omnimouse: the persistent compilation cache is off for this run: its keys differ between the "
              f"processes on this backend ({jax.default_backend()}), so a restart would mix cached and fresh "
              "programs", file=sys.stderr, flush=True)


def _exchange(name: str, value: str, *, timeout_s: int, what: str) -> list[str] | None:
    """Every process's `value` for `name`, in process order, through the coordinator's key-value store; None in a
    single process. DistributedError naming the process that did not publish within `timeout_s`."""
    client = _jax_compat.distributed_client()
    if client is None or jax.process_count() == 1:
        return None
    me = jax.process_index()
    client.key_value_set(f"omnimouse/{name}/{me}", value)
    everyone = []
    for other in range(jax.process_count()):
        if other == me:
            everyone.append(value)
            continue
        try:
            everyone.append(client.blocking_key_value_get(f"omnimouse/{name}/{other}", int(timeout_s * 1000)))
        except Exception as err:  # the coordinator's deadline error: that process never got this far
            raise DistributedError(f"process {me}: process {other} did not report {what} within {timeout_s}s "
                                   f"({str(err).strip().splitlines()[0] if str(err).strip() else 'timeout'})") from None
    return everyone


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def is_main_process() -> bool:
    """True on the process that writes run-wide files (metrics.jsonl, config.json, TensorBoard)."""
    return jax.process_index() == 0
