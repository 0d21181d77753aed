"""Multi-process training (jax.distributed over local processes), the sharded neuron-table lookup, and compile-only
planning."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from device_flags import without_fake_devices
from mice_runs import QUIET_RUN, RUN_CONFIG
from omnimouse_jax.config import load_config
from omnimouse_jax.errors import UserError
from omnimouse_jax.parallel import distributed, sharding

ROOT = Path(__file__).resolve().parents[1]
RUN = {**QUIET_RUN, "checkpoint.every_steps": 3}


def _overrides(**values):
    return [f"--config.{k}={v}" for k, v in values.items()]


def _env(tmp_path: Path):
    # The processes compile into a cache in the test's directory: the multi-process test needs its first run's
    # entries (process 0 writes them) to be there for its restart. conftest's 8-device flag is not theirs to keep.
    env = {**os.environ, "XLA_FLAGS": without_fake_devices(os.environ["XLA_FLAGS"])}
    return {**env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "compile_cache"), "PYTHON": sys.executable}


def _launch(num_processes: int, args, env, timeout_s: int) -> subprocess.CompletedProcess:
    """launch/local_multiprocess.sh; on timeout its whole process group is killed (a training process blocked in a
    collective does not act on SIGTERM) and the test fails with the output so far."""
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), str(num_processes), "--", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{num_processes} processes still running after {timeout_s}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(*args):
    return [sys.executable, "-m", "omnimouse_jax.cli", "train", "--config", RUN_CONFIG, *args]


def _losses(workdir):
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [r["step"] for r in records], {r["step"]: r["loss"] for r in records if "loss" in r}


# --- the process group ----------------------------------------------------------------------------------------------
def test_process_group_from_flags_slurm_or_nothing():
    assert distributed.detect("localhost:1234", 2, 1, environ={}) == distributed.ProcessGroup("flags", "localhost:1234", 2, 1)
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
             "SLURM_LOCALID": "1"}
    assert distributed.detect(environ=slurm) == distributed.ProcessGroup("slurm", None, 4, 3)
    assert distributed.detect(environ={**slurm, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.detect(environ={}) is None
    with pytest.raises(UserError, match="--num-processes, --process-id: missing"):
        distributed.detect("localhost:1234", environ={})
    with pytest.raises(UserError, match="--coordinator 'localhost': expected HOST:PORT"):
        distributed.detect("localhost", 2, 0, environ={})
    with pytest.raises(UserError, match="--process-id 2 --num-processes 2"):
        distributed.detect("localhost:1234", 2, 2, environ={})


def test_unreachable_coordinator_fails_in_bounded_time_naming_the_process(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(_train_cmd("--workdir", str(tmp_path / "w"), "--coordinator", f"localhost:{_free_port()}",
                                     "--num-processes", "2", "--process-id", "1", "--init-timeout", "2"),
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert "process 1 of 2" in proc.stderr and "not reachable within 2s" in proc.stderr
    assert time.monotonic() - start < 60


def test_processes_with_different_configs_fail_naming_both_and_the_key(mice_store, tmp_path):
    port, procs = _free_port(), []
    for pid, steps in ((0, 3), (1, 4)):
        args = ["--workdir", str(tmp_path / "w"), "--coordinator", f"localhost:{port}", "--num-processes", "2",
                "--process-id", str(pid), "--init-timeout", "60",
                *_overrides(**{"data.root": mice_store, "train.steps": steps})]
        procs.append(subprocess.Popen(_train_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**_env(tmp_path), "JAX_PLATFORMS": "cpu"}, cwd=ROOT))
    for pid, proc in enumerate(procs):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert f"process {pid}: processes 0 and 1 run different configs: config.train.steps: 3 vs 4" in err
    assert not (tmp_path / "w").exists()  # nothing was started


def test_launcher_kills_a_process_that_ignores_sigterm_after_its_grace(tmp_path):
    """When process 1 fails, the launcher sends process 0 SIGTERM and, since a process blocked in a collective with
    the failed one never reaches its handler (here: one that ignores SIGTERM), SIGKILL after STOP_GRACE; it exits
    with process 1's status. The processes are stand-ins for `python -m omnimouse_jax.cli train`."""
    pid_file = tmp_path / "process_0.pid"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [[ $1 == -c ]]; then exec {sys.executable} "$@"; fi
if [[ " $* " == *" --process-id 1 "* ]]; then sleep 1; exit 3; fi
trap '' TERM
echo $$ > {pid_file}
exec sleep 300
""")
    fake.chmod(0o755)
    start = time.monotonic()
    proc = _launch(2, ["--workdir", str(tmp_path / "w")], {**os.environ, "PYTHON": str(fake), "STOP_GRACE": "2"},
                   timeout_s=60)
    assert proc.returncode == 3, proc.stderr
    assert "process 1 exited with status 3; stopping the others" in proc.stderr
    assert time.monotonic() - start < 30
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- the sharded neuron table ---------------------------------------------------------------------------------------
def test_sharded_row_lookup_moves_rows_not_the_table():
    """take_rows under data=2 x fsdp=4 equals jnp.take in value and gradient; the gradient stays split along rows and
    the compiled step never gathers the whole table."""
    mesh = sharding.make_mesh(load_config(RUN_CONFIG, [("mesh.data", "2"), ("mesh.fsdp", "4")]).mesh)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(64, 16)).astype(np.float32)
    index = rng.integers(0, 64, (8, 32)).astype(np.int32)
    weight = rng.normal(size=(8, 32, 16)).astype(np.float32)

    def loss(t, i):
        return jnp.sum(sharding.take_rows(t, i, "neuron_rows") * weight)

    table_d = jax.device_put(table, NamedSharding(mesh, P("fsdp", None)))
    index_d = jax.device_put(index, NamedSharding(mesh, P(("data", "fsdp"), None)))
    with sharding.use_rules(mesh):
        step = jax.jit(jax.value_and_grad(loss), out_shardings=(None, NamedSharding(mesh, P("fsdp", None))))
        compiled = step.lower(table_d, index_d).compile()
        value, grad = compiled(table_d, index_d)
        rows = jax.jit(lambda t, i: sharding.take_rows(t, i, "neuron_rows"))(table_d, index_d)
    np.testing.assert_array_equal(np.asarray(rows), table[index])
    expected_grad = np.zeros_like(table)
    np.add.at(expected_grad, index, weight)
    np.testing.assert_allclose(float(value), np.sum(table[index] * weight), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-5, atol=1e-5)
    assert grad.sharding.spec == P("fsdp", None) and grad.addressable_shards[0].data.shape == (16, 16)
    hlo = compiled.as_text()
    assert "f32[16,16]" in hlo and "f32[64,16]" not in hlo  # only 16-row shards exist on a device


def test_table_and_its_optimizer_state_are_split_along_rows():
    """Abstract (planning) and real model + optimizer state agree on every sharding; under fsdp=4 the neuron table,
    its bias and their Adam moments are split along rows."""
    from flax import nnx

    from omnimouse_jax.train.optim import make_optimizer
    from omnimouse_jax.train.session import abstract_state, create_model_and_optimizer

    config = load_config(RUN_CONFIG, [("mesh.data", "2"), ("mesh.fsdp", "4")])
    mesh = sharding.make_mesh(config.mesh)
    tx, _ = make_optimizer(config.optim, 10)
    _, abstract = abstract_state(config, tx, mesh)
    with sharding.use_rules(mesh):
        _, real = nnx.split(nnx.jit(lambda: create_model_and_optimizer(config, tx))())
    flat = lambda tree: {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
    abstract, real = flat(abstract), flat(real)
    assert abstract.keys() == real.keys()
    for key in real:
        assert abstract[key].shape == real[key].shape, key
        assert abstract[key].sharding.is_equivalent_to(real[key].sharding, real[key].ndim), key
    table_keys = [k for k in real if "'neuron_table'" in k or "'neuron_bias'" in k]
    moments = [k for k in table_keys if "['mu']" in k or "['nu']" in k]
    assert len(table_keys) == 6 and len(moments) == 4  # the two tables and their two Adam moments each
    for key in table_keys:
        assert real[key].sharding.spec[0] == "fsdp", key
        assert real[key].addressable_shards[0].data.shape[0] == real[key].shape[0] // 4, key


# --- compile-only -----------------------------------------------------------------------------------------------------
def test_compile_only_plans_memory_and_flops_without_allocating(tmp_path, capsys, monkeypatch):
    from omnimouse_jax.cli import main
    from omnimouse_jax.model import masking
    from omnimouse_jax.train import trainer
    from omnimouse_jax.parallel import sharding
    from omnimouse_jax.train.session import abstract_fields, per_device_bytes

    results, print_plan = [], trainer.print_plan
    monkeypatch.setattr(trainer, "print_plan", lambda result: (results.append(result), print_plan(result)))
    before = {id(x) for x in jax.live_arrays()}
    argv = ["train", "--compile-only", "--config", RUN_CONFIG,
            *_overrides(**{"mesh.data": 2, "mesh.fsdp": 4, "data.root": tmp_path / "nowhere"})]
    assert main(argv) == 0
    out, (result,) = capsys.readouterr().out, results
    assert not [x for x in jax.live_arrays() if id(x) not in before]  # no parameter (or anything) was allocated
    assert "8 devices, mesh data=2 x fsdp=4 x tensor=1" in out and "from config.model (no store at" in out
    for field in ("parameters", "optimizer state", "batch", "arguments (XLA)", "activations+temp (XLA)",
                  "peak estimate", "FLOPs per step"):
        assert field in out, field
    # float32 parameters split 4 ways by fsdp; the few that have no fsdp-split axis (norm scales, convolution and
    # latent tensors and the population decoder's kernel, none with an `embed` axis) are replicated, which costs the
    # test model about 3%: allow 4% (a parameter set not split at all would cost 300%).
    even_split = result["param_count"] * 4 / 4
    assert even_split <= result["param_bytes"] <= 1.04 * even_split
    # Adam's mu and nu (one per parameter, same split), plus a few int32 step counters of the optimizer chain.
    assert 0 <= result["optimizer_bytes"] - 2 * result["param_bytes"] < 64
    # One int32 per example and masking field, split like the batch over data x fsdp = 8 devices.
    batch = result["global_batch"]
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 4, "tensor": 1}))
    fields_bytes = per_device_bytes(abstract_fields(batch, sharding.batch_sharding(mesh)))
    assert fields_bytes == 4 * (batch // 8) * len(masking.FIELDS)
    # XLA's own argument size (from the partitioned program) is exactly our per-device accounting.
    assert result["argument_bytes"] == (result["param_bytes"] + result["optimizer_bytes"] + result["other_state_bytes"]
                                        + result["batch_bytes"] + fields_bytes)
    assert result["aliased_bytes"] >= result["param_bytes"] + result["optimizer_bytes"]  # the state is donated
    assert result["temp_bytes"] > 0 and result["flops_per_step"] == 8 * result["flops_per_device"] > 0
    assert f"{result['param_bytes'] / 2**20:,.2f} MiB" in out


# --- the multi-process run ----------------------------------------------------------------------------------------
def test_two_processes_train_like_one_resume_as_two_and_their_checkpoint_restores_in_one(mice_store, tmp_path):
    """2 processes x 4 CPU devices through the launcher: the losses of one process with 8 devices, metrics written
    once; restarted in the same workdir (its compilation cache written by the first run's process 0), they resume to
    the reference's later losses; their checkpoint restores in a 1-process run. The table is split over all 8 devices
    of both processes (fsdp=8)."""
    from omnimouse_jax.train.trainer import train

    mesh = {"mesh.data": 1, "mesh.fsdp": 8}
    reference, multi = tmp_path / "reference", tmp_path / "multi"
    train(load_config(RUN_CONFIG, [(k, str(v)) for k, v in {**RUN, **mesh, "data.root": mice_store,
                                                         "train.steps": 6}.items()]), reference)
    _, ref_losses = _losses(reference)

    def two_processes(steps: int) -> subprocess.CompletedProcess:
        args = ["--config", RUN_CONFIG, "--workdir", str(multi),
                *_overrides(**RUN, **mesh, **{"data.root": mice_store, "train.steps": steps})]
        proc = _launch(2, args, _env(tmp_path), timeout_s=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "[process 1]" in proc.stderr and f"step {steps}/{steps}" in proc.stderr
        return proc

    two_processes(3)
    steps, multi_losses = _losses(multi)
    assert steps == [0, 1, 2, 3]  # one writer: process 0
    assert json.loads((multi / "metrics.jsonl").read_text().splitlines()[0])["devices"] == 8
    np.testing.assert_allclose([multi_losses[s] for s in (1, 2, 3)], [ref_losses[s] for s in (1, 2, 3)], rtol=1e-5)
    data_files = sorted(f for f in os.listdir(multi / "checkpoints" / "3" / "data") if f.startswith("process_"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    restarted = two_processes(5)
    assert "resumed from" in restarted.stdout
    _, resumed = _losses(multi)
    np.testing.assert_allclose([resumed[s] for s in (4, 5)], [ref_losses[s] for s in (4, 5)], rtol=1e-5)

    train(load_config(RUN_CONFIG, [(k, str(v)) for k, v in {**RUN, **mesh, "data.root": mice_store,
                                                         "train.steps": 6}.items()]), multi)
    _, resumed = _losses(multi)
    np.testing.assert_allclose(resumed[6], ref_losses[6], rtol=1e-5)
