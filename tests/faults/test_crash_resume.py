"""kill -9 at several points around checkpoint writes, and damaged checkpoints: the resumed run's metrics from the
restore point on equal an uninterrupted run's, and nothing already saved is lost."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mice_runs import RUN_CONFIG
from omnimouse_jax.config import load_config
from omnimouse_jax.train.trainer import train

# The uninterrupted reference is the session's shared six_step_run (checkpoints every 3 steps); these runs save every
# 2 and keep the newest 2, which losses do not depend on, so that a resumed run also prunes an old checkpoint.
STEPS, EVERY, KEEP = 6, 2, 2


def _overrides(store):
    return {"data.root": str(store), "train.steps": STEPS, "checkpoint.every_steps": EVERY,
            "checkpoint.keep": KEEP, "train.log_every_steps": 1, "train.eval_every_steps": 0, "train.tensorboard": False,
            "data.num_threads": 1}


def _losses(workdir):
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "split" not in r}


@pytest.fixture(scope="module")
def reference(six_step_run):
    assert json.loads((six_step_run / "config.json").read_text())["train"]["steps"] == STEPS
    return _losses(six_step_run)


def _run_killed(store, workdir, kill_at):
    cmd = [sys.executable, "-m", "omnimouse_jax.cli", "train", "--config", RUN_CONFIG, "--workdir", str(workdir),
           *[f"--config.{k}={v}" for k, v in _overrides(store).items()]]
    env = {**os.environ, "OMNIMOUSE_KILL_AT": kill_at,
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.mark.parametrize("kill_at", ["save_start:4", "save_inflight:4", "save_done:4"])
def test_kill9_around_a_checkpoint_then_resume_matches(mice_store, reference, tmp_path, kill_at):
    workdir = tmp_path / "w"
    _run_killed(mice_store, workdir, kill_at)
    train(load_config(RUN_CONFIG, [(k, str(v)) for k, v in _overrides(mice_store).items()]), workdir)
    resumed = _losses(workdir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in resumed], [reference[s] for s in resumed], rtol=1e-6)
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [4, 6]  # 2 pruned


@pytest.mark.parametrize("damaged", ["state", "meta"])
def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(mice_store, six_step_run, reference, tmp_path, capsys,
                                                                damaged):
    """A truncated array file or JSON record in the newest checkpoint: reading for evaluation scores the previous
    step and moves nothing (and a request for the damaged step by number is refused); training resumes from the
    previous step, moves the damaged one aside, and says so in a few lines."""
    from omnimouse_jax.errors import UserError
    from omnimouse_jax.train.restore import load_trained

    workdir = tmp_path / "w"
    shutil.copytree(six_step_run, workdir)  # checkpoints 3 and 6
    for path in (workdir / "checkpoints" / "6" / damaged).rglob("*"):
        if damaged == "meta" and path.name == "metadata":
            path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        if damaged == "state" and path.is_file() and "ocdbt.process" in str(path) and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])  # a truncated data file
    assert load_trained(workdir).step == 3
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    with pytest.raises(UserError, match="checkpoint step 6 is unreadable"):
        load_trained(workdir, step=6)
    capsys.readouterr()
    train(load_config(RUN_CONFIG, [(k, str(v)) for k, v in _overrides(mice_store).items()]), workdir)
    err = capsys.readouterr().err
    assert "checkpoints/6 is unreadable" in err and "checkpoints_unreadable/6-" in err
    assert len(err.splitlines()) <= 10, err[-3000:]
    resumed = _losses(workdir)
    np.testing.assert_allclose([resumed[s] for s in range(4, STEPS + 1)], [reference[s] for s in range(4, STEPS + 1)],
                               rtol=1e-6)
    assert len(os.listdir(workdir / "checkpoints_unreadable")) == 1


@pytest.mark.parametrize("skip", [0, 3])
def test_a_non_finite_batch_is_skipped_and_counted_or_stops_the_run(mice_store, tmp_path, monkeypatch, skip):
    from omnimouse_jax.data import pipeline

    real = pipeline.TrainWindows.__call__

    def poisoned(self, batch_index):
        batch = real(self, batch_index)
        if batch_index == 2:  # the third step's batch carries a NaN response
            batch["responses"][0, 0, 0] = np.nan
        return batch

    monkeypatch.setattr(pipeline.TrainWindows, "__call__", poisoned)
    overrides = {**_overrides(mice_store), "train.steps": 5, "checkpoint.every_steps": 5, "optim.skip_nonfinite": skip}
    config = load_config(RUN_CONFIG, [(k, str(v)) for k, v in overrides.items()])
    if skip == 0:
        with pytest.raises(FloatingPointError, match="non-finite loss .* at step 3"):
            train(config, tmp_path / "w")
        return
    train(config, tmp_path / "w")
    records = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
    steps = [r for r in records if "loss" in r and "split" not in r]
    assert [r["step"] for r in steps] == [1, 2, 4, 5] and steps[-1]["skipped_nonfinite"] == 1
    assert all(np.isfinite(r["loss"]) for r in steps)
