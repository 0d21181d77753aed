"""`omnimouse sweep`: a 2x2 micro-sweep end to end (runs, runs.csv, resume, a failing run, figures), the print
launcher, and the SLURM/TPU scripts."""
import dataclasses
import json
import os
import shlex
import subprocess

import jax
import numpy as np
import pytest

from device_flags import without_fake_devices
from omnimouse_jax import cli
from omnimouse_jax.data.store import open_store
from omnimouse_jax.errors import UserError
from omnimouse_jax.scaling import figures, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH, BLOCK, MAX_NEURONS = 6, 8, 60, 32
SWEEP_FILE = '''
CONFIG = {config!r}
SIZES = {{"d16": {{"model.d_model": 16}}, "d32": {{"model.d_model": 32}}}}

def get_sweep(arg=""):
    runs = [{{"name": f"{{s}}-f{{f:g}}", "size": s, "config": CONFIG, "overrides": {{**m, "data.fraction": f}}}}
            for s, m in SIZES.items() for f in (0.5, 1.0)]
    runs.append({{"name": "broken", "size": "d32", "config": CONFIG, "overrides": {{"data.fraction": 2.0}}}})
    return {{"name": "micro", "evaluate": False, "runs": runs,
            "overrides": {{"model.num_layers": 1, "train.steps": {steps}, "train.eval_every_steps": {steps},
                          "checkpoint.every_steps": {steps}, "train.log_every_steps": 3, "train.tensorboard": False,
                          "data.num_threads": 1, "checkpoint.use_async": False}}}}
'''


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep_config") / "micro.py"
    path.write_text(SWEEP_FILE.format(config=os.path.join(ROOT, "experiments/configs/omnimouse.py:size=test"),
                                      steps=STEPS))
    return str(path)


def _sweep_args(sweep_file, workdir, store, *extra):
    return ["sweep", "--config", sweep_file, "--workdir", str(workdir), f"--config.data.root={store}", *extra]


@pytest.fixture(scope="module")
def swept(sweep_file, mice_store, tmp_path_factory):
    """The micro-sweep run once, two runs at a time; child processes get one CPU device (compiles faster) and this
    session's compilation cache."""
    workdir = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", without_fake_devices(os.environ.get("XLA_FLAGS", "")))
        mp.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
        code = cli.main(_sweep_args(sweep_file, workdir, mice_store, "--processes", "2"))
    return workdir, code


def _metrics(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _unique_tokens(store_root, fraction):
    """Neurons x samples of the first share of each session's train trials (by source order), from the store."""
    store, total, seen = open_store(store_root), 0, []
    for name in store.sessions:
        session = store.session(name)
        t = session.trials
        rows = np.flatnonzero(t["tier"] == "train")
        rows = rows[np.argsort(t["source_index"][rows])][: max(1, int(round(fraction * len(rows))))]
        samples = t["stop"][rows] - t["start"][rows]
        total += session.n_neurons * int(samples.sum())
        seen.append((int((samples - BLOCK + 1).sum()), min(session.n_neurons, MAX_NEURONS)))
    windows = np.array([w for w, _ in seen], float)
    per_example = float(np.dot(windows / windows.sum(), [n for _, n in seen]))
    return total, int(windows.sum()), per_example


def test_runs_csv_matches_the_runs_logs(swept, mice_store):
    workdir, code = swept
    assert code == 1  # one run failed
    assert not (workdir / "compile_cache").exists()  # the runs shared the cache set in JAX_COMPILATION_CACHE_DIR
    rows = {r["name"]: r for r in figures.read_runs(workdir / "runs.csv")}
    assert set(rows) == {"d16-f0.5", "d16-f1", "d32-f0.5", "d32-f1", "broken"}
    for name in ("d16-f0.5", "d16-f1", "d32-f0.5", "d32-f1"):
        row, records = rows[name], _metrics(workdir / "runs" / name)
        first, validation = records[0], [r for r in records if r.get("split") == "validation"][-1]
        last = [r for r in records if "loss" in r and "split" not in r][-1]
        assert row["status"] == "finished" and row["steps"] == row["steps_done"] == STEPS
        assert row["N"] == first["params_core"] and row["params_total"] == first["params_total"]
        assert row["flops"] == pytest.approx(first["step_flops"] * first["devices"] * STEPS)
        assert row["val_loss"] == pytest.approx(validation["loss"]) and row["val_step"] == STEPS
        assert row["train_loss"] == pytest.approx(last["loss"])
        assert row["device_hours"] == pytest.approx(last["device_hours"])
        d, windows, per_example = _unique_tokens(mice_store, row["fraction"])
        assert row["D"] == d and row["unique_windows"] == windows == first["unique_windows"]
        tokens_seen = STEPS * BATCH * BLOCK * per_example
        assert row["epochs"] == pytest.approx(tokens_seen / d)
        assert row["flops_6ND"] == pytest.approx(6 * row["N"] * tokens_seen, rel=1e-6)
    assert rows["d16-f1"]["D"] == 2 * rows["d16-f0.5"]["D"]  # 6 train trials per mouse: 3 of them, then 6
    assert rows["d16-f1"]["N"] < rows["d32-f1"]["N"]
    assert rows["broken"]["status"] == "failed" and "config.data.fraction=2.0" in rows["broken"]["error"]
    status = json.loads((workdir / "status.json").read_text())["runs"]
    assert status["broken"]["state"] == "failed" and status["d32-f1"]["state"] == "finished"


def test_rerun_skips_finished_runs_and_retries_the_failed_one(swept, sweep_file, mice_store, capsys):
    workdir, _ = swept
    before = {n: (workdir / "runs" / n / "metrics.jsonl").stat().st_mtime_ns for n in ("d16-f1", "d32-f0.5")}
    assert cli.main(_sweep_args(sweep_file, workdir, mice_store)) == 1
    assert "5 runs, 4 finished, 1 to run" in capsys.readouterr().out
    assert {n: (workdir / "runs" / n / "metrics.jsonl").stat().st_mtime_ns for n in before} == before
    status = json.loads((workdir / "status.json").read_text())["runs"]
    assert status["broken"]["attempts"] == 2 and status["d16-f1"]["attempts"] == 1


def test_print_lists_unfinished_runs_as_valid_shell(swept, sweep_file, mice_store, tmp_path, capsys):
    workdir, _ = swept
    assert cli.main(_sweep_args(sweep_file, workdir, mice_store, "--launcher", "print")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "--config.data.fraction=2.0" in lines[0]
    assert cli.main(_sweep_args(sweep_file, tmp_path / "fresh", mice_store, "--launcher", "print")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    args = shlex.split(lines[0])
    assert args[:2] == ["omnimouse", "train"] and f"--config.data.root={mice_store}" in args
    assert args[args.index("--workdir") + 1] == str(tmp_path / "fresh" / "runs" / "d16-f0.5")
    assert "--config.model.d_model=16" in args and "--config.data.fraction=0.5" in args
    assert subprocess.run(["bash", "-n", "-c", "\n".join(lines)]).returncode == 0
    # A run whose config now asks for more steps than its checkpoint holds is unfinished (and would resume).
    more = sweep.load_sweep(sweep_file, workdir, [("train.steps", "9")])
    assert not any(sweep.is_finished(r, False) for r in more.runs)


def test_paper_data_sessions_prints_every_size_at_every_nested_share(mice_store, tmp_path, capsys):
    spec = os.path.join(ROOT, "experiments/sweeps/paper_data_sessions.py")
    assert cli.main(["sweep", "--config", spec, "--workdir", str(tmp_path / "S"), f"--config.data.root={mice_store}",
                     "--launcher", "print"]) == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    grid = {(args[args.index("--config") + 1].rpartition(":size=")[2],
             next(a for a in args if a.startswith("--config.data.sessions=")).partition("=")[2]) for args in lines}
    assert grid == {(size, f"share:{share}") for size in ("1M", "5M", "20M", "80M", "300M")
                    for share in ("0.125", "0.25", "0.5", "1")}
    # Each run is scored on the OmniMouse corpus's held-out tiers, into the eval.json the sweep collects.
    for args in lines:
        evaluate = args[args.index("&&") + 1:]
        workdir = evaluate[evaluate.index("--workdir") + 1]
        assert evaluate[evaluate.index("--split") + 1] == "final_test"
        assert evaluate[evaluate.index("--out") + 1] == os.path.join(workdir, "eval.json")
    assert cli.main(["sweep", "--config", spec + ":split=test,sizes=1M", "--workdir", str(tmp_path / "T"),
                     f"--config.data.root={mice_store}", "--launcher", "print"]) == 0
    assert "--split" not in capsys.readouterr().out  # the test split is evaluate's default and writes eval.json
    # The shares select nested session sets (2 sessions here: 1, 1, 1 and 2 of them), so D grows with the share.
    runs = sweep.load_sweep(spec + ":sizes=1M", tmp_path / "S", [("data.root", str(mice_store))]).runs
    tokens = [sweep.data_tokens(run.resolved_config())["D"] for run in runs]
    assert tokens[0] == tokens[1] == tokens[2] < tokens[3]


def test_sweep_wide_override_typo_fails_before_running(sweep_file, mice_store, tmp_path):
    with pytest.raises(UserError, match="train.step: no such config key; did you mean train.steps"):
        sweep.load_sweep(sweep_file, tmp_path, [("train.step", "3")])
    assert not (tmp_path / "runs").exists()


def test_eval_json_fills_the_regime_columns(swept, sweep_file, mice_store):
    workdir, _ = swept
    loaded = sweep.load_sweep(sweep_file, workdir, [("data.root", str(mice_store))])
    table = {"Forecast": {"model": 0.21, "persistence": 0.1}, "Gaze": {"model": 0.7}, "Neural prediction": {"model": 0.3}}
    (workdir / "runs" / "d32-f1" / "eval.json").write_text(json.dumps({"regimes": {}, "table": table, "columns": {}}))
    rows = {r["name"]: r for r in sweep.collect(dataclasses.replace(loaded, evaluate=True))}
    assert rows["d32-f1"]["status"] == "finished"
    assert (rows["d32-f1"]["forecast"], rows["d32-f1"]["gaze"], rows["d32-f1"]["neural_prediction"]) == (0.21, 0.7, 0.3)
    assert rows["d16-f1"]["status"] == "unfinished"  # trained but not evaluated
    (workdir / "runs" / "d32-f1" / "eval.json").unlink()
    sweep.collect(loaded)  # runs.csv as the sweep itself left it, for the tests that follow


def test_score_vs_data_figure_of_the_micro_sweep(swept, sweep_file, mice_store, tmp_path):
    """The 2 x 2 sweep with regime scores (eval.json as `evaluate` writes its table) draws every regime against D."""
    workdir, _ = swept
    loaded = sweep.load_sweep(sweep_file, workdir, [("data.root", str(mice_store))])
    names = ("d16-f0.5", "d16-f1", "d32-f0.5", "d32-f1")
    for k, name in enumerate(names):
        table = {"Forecast": {"model": 0.1 + 0.01 * k}, "Neural prediction": {"model": 0.2 + 0.02 * k}}
        (workdir / "runs" / name / "eval.json").write_text(json.dumps({"regimes": {}, "table": table, "columns": {}}))
    try:
        rows = {r["name"]: r for r in sweep.collect(dataclasses.replace(loaded, evaluate=True))}
        assert all(rows[name]["status"] == "finished" for name in names)
        made = figures.make_figures(workdir, tmp_path, bootstrap=10)
        for fmt in figures.FORMATS:
            assert (tmp_path / f"metrics_vs_data.{fmt}").stat().st_size > 1000
        # Two data sizes per model size: the points are drawn, the 2-parameter trend needs a third.
        assert any("log-linear fit of forecast in D for size d16" in note for note in made["fits"].notes)
    finally:
        for name in names:
            (workdir / "runs" / name / "eval.json").unlink()
        sweep.collect(loaded)  # runs.csv as the sweep itself left it, for the tests that follow


def test_figures_of_the_micro_sweep(swept, tmp_path):
    workdir, _ = swept
    made = figures.make_figures(workdir, tmp_path, bootstrap=10)
    for stem in ("loss_vs_data", "loss_vs_params", "compute_frontier"):
        for fmt in figures.FORMATS:
            assert (tmp_path / f"{stem}.{fmt}").stat().st_size > 1000
    table = made["table"].read_text()
    for name in ("d16-f0.5", "d16-f1", "d32-f0.5", "d32-f1", "broken"):
        assert f"| {name} |" in table
    # 4 finished runs cannot support the 5-parameter chinchilla law; asking for it explicitly is refused.
    assert "needs at least 6 points" in table
    with pytest.raises(UserError, match="4 finished runs; form 'chinchilla' .* needs at least 6 points"):
        figures.make_figures(workdir, tmp_path, form="chinchilla", bootstrap=0)


def test_cluster_scripts(swept, sweep_file, mice_store, tmp_path):
    workdir, _ = swept
    loaded = sweep.load_sweep(sweep_file, tmp_path / "cluster", [("data.root", str(mice_store))])
    paths = []
    for launcher in ("slurm", "tpu"):
        commands, submit = sweep.write_cluster_scripts(loaded, launcher)
        paths.append(submit)
        for path in (commands, submit):
            assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path
    assert commands.read_text().count("omnimouse train") == 5
    assert "--array=0-4%" in paths[0].read_text() and "slurm.sbatch" in paths[0].read_text()
    # The array script runs line i+1 for task i (comments and blank lines skipped); srun is faked to run its command.
    bin_dir, listing = tmp_path / "bin", tmp_path / "cmds.txt"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "gcloud").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> "$GCLOUD_LOG"\n')
    for tool in ("srun", "gcloud"):
        (bin_dir / tool).chmod(0o755)
    listing.write_text("# runs\necho first\n\necho second\necho third\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "1",
           "GCLOUD_LOG": str(tmp_path / "gcloud.log")}
    out = subprocess.run(["bash", os.path.join(ROOT, "launch/slurm.sbatch"), str(listing)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "second", out.stderr
    out = subprocess.run(["bash", os.path.join(ROOT, "launch/tpu_pod.sh"), "pod", "zone-a", str(listing), "/p"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "3 runs, 0 failed" in out.stdout, out.stderr
    calls = (tmp_path / "gcloud.log").read_text()
    assert calls.count("--worker=all") == 3 and calls.count("--zone=zone-a") == 3
    assert "cd /p && " in calls and calls.strip().endswith("echo third")
    for script in ("local.sh", "slurm.sbatch", "tpu_pod.sh"):
        assert subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)]).returncode == 0
