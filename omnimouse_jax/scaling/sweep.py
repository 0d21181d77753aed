"""`omnimouse sweep`: expand a sweep config into runs, run or emit them, and collect `S/runs.csv`.

    omnimouse sweep --config experiments/sweeps/scaling_demo.py --workdir S --config.data.root=STORE \\
        [--launcher local|slurm|tpu|print] [--processes N] [--no-evaluate] [--collect]

A sweep config is a Python file whose `get_sweep(arg)` returns a dict:
  name       the sweep's name
  overrides  {config key: value} applied to every run (e.g. data.root, the store's path)
  evaluate   True to run `omnimouse evaluate` on each trained run (default True)
  evaluate_args  extra arguments for `omnimouse evaluate` (e.g. ["--max-batches", "8"])
  evaluate_split the split each run is scored on (default "test"; the OmniMouse corpus: "final_test"); its scores
             are written to the run's eval.json, which the sweep collects, whatever the split
  runs       [{name, size, config: "FILE[:ARG]", overrides: {key: value}}]; `size` labels the model size (runs of
             one size share a compiled step, so the local launcher compiles each size once before running its others)
Overrides given on the command line (`--config.a.b=v`) apply to every run, after the config's own.

Run `name` lives in `S/runs/name`. A run is finished when its newest checkpoint step equals its config.train.steps
(and, with evaluation on, `eval.json` exists). Every launch skips finished runs; training resumes unfinished ones
from their checkpoint, so re-running a sweep retries exactly the failed and unfinished runs. `local` runs each run as
its own process (a failing run is recorded in `S/status.json` with its error and the sweep goes on) with one JAX
compilation cache, `S/compile_cache`, for all of them. `slurm` and `tpu` write `S/launch/commands.txt` (one shell
command per unfinished run) and a submit script that hands it to `launch/slurm.sbatch` or `launch/tpu_pod.sh`; `print`
prints the commands. Every launcher then collects `S/runs.csv` (see RUN_COLUMNS and `collect`).

Data size D is the number of unique neural tokens a run may train on: for each selected session, its neurons times
the samples of the train-tier trials the run's data.fraction selects (a nested prefix of the trials, exactly those
the input pipeline draws windows from), summed over sessions. A model sees at most model.max_neurons neurons of an
example, so tokens seen per step is the expected number of real neuron tokens in a batch, batch x block samples x
E[min(neurons, max_neurons)] over the session mix; epochs = tokens seen / D. N is params_core (everything but the
per-session tables). FLOPs are XLA's cost analysis of the compiled step (one device's share) x devices x steps;
flops_6ND = 6 N x tokens seen is the usual estimate, for comparison.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from omnimouse_jax.config import apply_override, call_file_function, load_config, load_config_file
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.pipeline import TrainWindows
from omnimouse_jax.data.store import open_store
from omnimouse_jax.errors import UserError
from omnimouse_jax.files import write_text_atomic
from omnimouse_jax.resources import shipped

# eval.json table columns (the paper's results table) -> runs.csv column names.
METRIC_COLUMNS = {"Forecast": "forecast", "Forecast+Stim": "forecast_stim", "Population": "population",
                  "Pop.+Stim": "population_stim", "Gaze": "gaze", "Pupil": "pupil", "Running": "running",
                  "Neural prediction": "neural_prediction"}
RUN_COLUMNS = ("name", "size", "status", "error", "seed", "fraction", "steps", "steps_done", "batch_size", "N",
               "params_total", "params_embedding", "D", "unique_windows", "tokens_seen", "epochs", "flops",
               "flops_6ND", "device_hours", "train_loss", "val_loss", "val_step") + tuple(METRIC_COLUMNS.values()) + (
               "workdir",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep: a config spec with overrides (key, text) and its own workdir."""

    name: str
    size: str
    config: str
    overrides: tuple[tuple[str, str], ...]
    workdir: Path
    eval_extra: tuple[str, ...] = ()

    def train_args(self) -> list[str]:
        return ["train", "--config", self.config, "--workdir", str(self.workdir),
                *(f"--config.{key}={text}" for key, text in self.overrides)]

    def eval_args(self) -> list[str]:
        return ["evaluate", "--workdir", str(self.workdir), *self.eval_extra]

    def shell_command(self, evaluate: bool, program: str = "omnimouse") -> str:
        """One shell line: train, then (if evaluate) evaluate."""
        line = shlex.join([program, *self.train_args()])
        return line + (" && " + shlex.join([program, *self.eval_args()]) if evaluate else "")

    def resolved_config(self):
        """The run's full config: its config file's, with the run's overrides applied."""
        return load_config(self.config, list(self.overrides))


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    spec: str
    workdir: Path
    runs: tuple[Run, ...]
    evaluate: bool

    @property
    def status_path(self) -> Path:
        return self.workdir / "status.json"

    @property
    def csv_path(self) -> Path:
        return self.workdir / "runs.csv"


# ------------------------------------------------------------------------------------------------------ loading


def parse_sweep_arg(arg: str, **defaults) -> dict:
    """Parses a sweep file's 'k=v,k=v' argument against `defaults`, each value taking its default's type; tuple
    defaults take '+'-separated items (e.g. sizes=1M+5M) of their first item's type."""
    values = dict(defaults)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, text = item.partition("=")
        if not sep or key not in defaults:
            raise UserError(f"sweep argument {item!r}: expected k=v with k one of {', '.join(defaults)}")
        default = defaults[key]
        kind = type(default[0]) if isinstance(default, tuple) and default else type(default)
        try:
            parsed = [kind(t) for t in text.split("+")] if isinstance(default, tuple) else [kind(text)]
        except ValueError:
            raise UserError(f"sweep argument {item!r}: expected {kind.__name__} values") from None
        values[key] = tuple(parsed) if isinstance(default, tuple) else parsed[0]
    return values


def _text(value) -> str:
    """A config value as override text that omnimouse_jax.config parses back to the same value."""
    return value if isinstance(value, str) else repr(value)


def load_sweep(spec: str, workdir, overrides=(), evaluate: bool | None = None) -> Sweep:
    """Expands the sweep file `spec` = 'FILE[:ARG]' (its get_sweep(ARG)) into runs under `workdir`.

    `overrides` ((key, text) pairs) apply to every run after the file's own; they are checked against each run's
    config now, so a typo fails before anything runs. `evaluate` overrides the file's `evaluate` setting.
    """
    path, doc = call_file_function(spec, "get_sweep", "sweep")
    if hasattr(doc, "to_dict"):
        doc = doc.to_dict()
    where = f"{path}: get_sweep"
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), (list, tuple)) or not doc["runs"]:
        raise UserError(f"{where} must return a dict with a non-empty list 'runs'")
    common = doc.get("overrides", {})
    if not isinstance(common, dict):
        raise UserError(f"{where}: 'overrides' must be a dict of config keys to values")
    eval_extra = doc.get("evaluate_args", [])
    if not isinstance(eval_extra, (list, tuple)) or not all(isinstance(a, str) for a in eval_extra):
        raise UserError(f"{where}: 'evaluate_args' must be a list of strings")
    split = doc.get("evaluate_split", "test")
    if not isinstance(split, str) or not split:
        raise UserError(f"{where}: 'evaluate_split' must be a split name such as test or final_test")
    workdir = Path(workdir).absolute()
    runs, seen = [], set()
    for i, entry in enumerate(doc["runs"]):
        if not isinstance(entry, dict) or not {"name", "config"} <= set(entry):
            raise UserError(f"{where}: runs[{i}] must be a dict with 'name', 'config' and optional 'size', 'overrides'")
        name = entry["name"]
        if not isinstance(name, str) or not _NAME.match(name) or name in seen:
            raise UserError(f"{where}: runs[{i}] name {name!r} must be unique and made of letters, digits and _.=+-")
        seen.add(name)
        run_overrides = entry.get("overrides", {})
        if not isinstance(run_overrides, dict):
            raise UserError(f"{where}: runs[{i}] ({name}) 'overrides' must be a dict")
        merged = {k: _text(v) for k, v in {**common, **run_overrides}.items()}
        merged.update(dict(overrides))
        runs.append(Run(name, str(entry.get("size", entry["config"].partition(":")[2] or "default")),
                        str(entry["config"]), tuple(merged.items()), workdir / "runs" / name,
                        tuple(eval_extra) + _split_args(split, workdir / "runs" / name)))
    _check_sweep_overrides(runs, overrides)
    evaluate = bool(doc.get("evaluate", True)) if evaluate is None else evaluate
    return Sweep(str(doc.get("name", path.stem)), spec, workdir, tuple(runs), evaluate)


def _split_args(split: str, run_workdir: Path) -> tuple[str, ...]:
    """`evaluate` arguments scoring `split` into the run's eval.json (evaluate names other splits' files after them)."""
    return () if split == "test" else ("--split", split, "--out", str(run_workdir / "eval.json"))


def _check_sweep_overrides(runs: list[Run], overrides) -> None:
    """Command-line overrides must name keys of every run's config (one check per distinct config spec)."""
    if not overrides:
        return

    for spec in dict.fromkeys(r.config for r in runs):
        config = load_config_file(spec)
        for key, text in overrides:
            apply_override(config, key, text)


# ------------------------------------------------------------------------------------------------------ state


def checkpoint_steps(workdir: Path) -> list[int]:
    """The committed checkpoint steps of a run (orbax commits a step by renaming its directory to the step number)."""
    directory = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def expected_steps(run: Run) -> int | None:
    """config.train.steps of the run, or None if its config does not load."""
    try:
        return int(run.resolved_config().train.steps)
    except UserError:
        return None


def is_finished(run: Run, evaluate: bool) -> bool:
    """Trained to config.train.steps and, when evaluating, evaluated."""
    steps = checkpoint_steps(run.workdir)
    if not steps or steps[-1] != expected_steps(run):
        return False
    return not evaluate or (run.workdir / "eval.json").is_file()


def read_status(sweep: Sweep) -> dict[str, dict]:
    """Per run: state (finished, failed, stopped, running), error, attempts, seconds, started, ended."""
    if not sweep.status_path.is_file():
        return {}
    try:
        return json.loads(sweep.status_path.read_text())["runs"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{sweep.status_path}: not a sweep status file; delete it to start the status afresh") from None


def _write_status(sweep: Sweep, status: dict) -> None:
    write_text_atomic(sweep.status_path, json.dumps({"sweep": sweep.name, "runs": status}, indent=1, sort_keys=True))


def evaluation_available() -> bool:
    try:
        return importlib.util.find_spec("omnimouse_jax.evaluate.report") is not None
    except ModuleNotFoundError:
        return False


# ------------------------------------------------------------------------------------------------------ local


def _error_from_log(path: Path) -> str:
    """The run's own one-line error (`omnimouse: error: ...`) or else the last line it printed."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("omnimouse: error:"):
            return line[len("omnimouse: error:"):].strip()[:500]
    return (lines[-1] if lines else "no output")[:500]


class _Job:
    """One run's commands (train, then maybe evaluate), executed one after another as child processes."""

    def __init__(self, run: Run, commands: list[list[str]], env: dict):
        self.run, self.commands, self.env = run, list(commands), env
        run.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = run.workdir / "sweep.log"
        self.log = open(self.log_path, "a")
        self.start = time.monotonic()
        self.process = None
        self._next()

    def _next(self) -> None:
        args = self.commands.pop(0)
        self.log.write(f"$ {shlex.join(args)}\n")
        self.log.flush()
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)

    def poll(self) -> int | None:
        """None while running; else the exit code of the last command run."""
        code = self.process.poll()
        if code is None:
            return None
        if code == 0 and self.commands:
            self._next()
            return None
        self.log.close()
        return code

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the trainer saves a checkpoint on SIGTERM and exits


def run_local(sweep: Sweep, *, processes: int = 1, log=print) -> dict[str, dict]:
    """Runs every unfinished run as child processes, `processes` at a time; returns the status of every run.

    A run of a model size starts only when no other run of that size is running or one has already completed, so each
    size is compiled once and its other runs load the compiled step from `S/compile_cache`, or from the cache the user
    set in JAX_COMPILATION_CACHE_DIR (as `omnimouse train` keeps a cache that is already set).
    """
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    status = read_status(sweep)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(sweep.workdir / "compile_cache")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
    python = [sys.executable, "-m", "omnimouse_jax.cli"]
    todo = []
    for run in sweep.runs:
        if is_finished(run, sweep.evaluate):
            status.setdefault(run.name, {}).update(state="finished", error=None)
        else:
            todo.append(run)
    warm = {r.size for r in sweep.runs if checkpoint_steps(r.workdir)}
    log(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} finished, {len(todo)} to run "
        f"({processes} at a time)")
    running: dict[str, _Job] = {}
    done = 0
    try:
        while todo or running:
            while len(running) < processes:
                busy = {job.run.size for job in running.values()}
                run = next((r for r in todo if r.size in warm or r.size not in busy), None)
                if run is None:
                    break
                todo.remove(run)
                commands = [python + run.train_args()] + ([python + run.eval_args()] if sweep.evaluate else [])
                running[run.name] = _Job(run, commands, env)
                entry = status.setdefault(run.name, {})
                entry.update(state="running", error=None, attempts=entry.get("attempts", 0) + 1,
                             started=time.strftime("%Y-%m-%dT%H:%M:%S"))
                _write_status(sweep, status)
                log(f"  {run.name}: started (log {running[run.name].log_path})")
            time.sleep(0.2)
            for name, job in list(running.items()):
                code = job.poll()
                if code is None:
                    continue
                del running[name]
                warm.add(job.run.size)
                done += 1
                seconds = time.monotonic() - job.start
                if code == 0 and is_finished(job.run, sweep.evaluate):
                    state, error = "finished", None
                elif code == 0:
                    state, error = "stopped", "stopped before config.train.steps (interrupted); re-run to resume"
                else:
                    state, error = "failed", _error_from_log(job.log_path)
                status[name].update(state=state, error=error, seconds=round(seconds, 1),
                                    ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
                _write_status(sweep, status)
                log(f"  [{done}/{done + len(todo) + len(running)}] {name}: {state} in {seconds:.0f} s"
                    + (f": {error}" if error else ""))
    except KeyboardInterrupt:
        for job in running.values():
            job.terminate()
        for name, job in running.items():
            job.process.wait()
            status[name].update(state="stopped", error="interrupted; re-run the sweep to resume")
        _write_status(sweep, status)
        raise
    return status


# ------------------------------------------------------------------------------------------------------ clusters


def launch_dir() -> Path:
    """The launch/ scripts (the checkout's, or the installed copy), which the generated submit scripts call."""
    directory = shipped("launch")
    if not (directory / "slurm.sbatch").is_file():
        raise UserError(f"{directory}: launch scripts not found; reinstall omnimouse-jax or run from a clone")
    return directory


def pending_runs(sweep: Sweep) -> list[Run]:
    return [r for r in sweep.runs if not is_finished(r, sweep.evaluate)]


def write_cluster_scripts(sweep: Sweep, launcher: str) -> list[Path]:
    """Writes S/launch/commands.txt (one line per unfinished run) and S/launch/submit_<launcher>.sh; returns their
    paths. The submit script runs from the current directory, so relative paths in the configs keep their meaning."""
    runs = pending_runs(sweep)
    out = sweep.workdir / "launch"
    commands = out / "commands.txt"
    write_text_atomic(commands, "".join(r.shell_command(sweep.evaluate) + "\n" for r in runs))
    scripts = launch_dir()
    head = ["#!/usr/bin/env bash", f"# Generated by: omnimouse sweep --config {sweep.spec} --workdir {sweep.workdir} "
            f"--launcher {launcher}", f"# {len(runs)} unfinished runs of sweep {sweep.name}; re-run the sweep "
            "afterwards to retry failures and collect runs.csv.", "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}"]
    if launcher == "slurm":
        logs = out / "logs"
        body = [f"mkdir -p {shlex.quote(str(logs))}",
                f"sbatch --array=0-{max(len(runs) - 1, 0)}%${{MAX_PARALLEL:-{len(runs) or 1}}} "
                f"--job-name={shlex.quote('omnimouse-' + sweep.name)} "
                f"--output={shlex.quote(str(logs / '%A_%a.out'))} \"$@\" "
                f"{shlex.quote(str(scripts / 'slurm.sbatch'))} {shlex.quote(str(commands))}"]
    elif launcher == "tpu":
        body = [': "${TPU_NAME:?set TPU_NAME to the TPU VM (pod slice) name}"',
                ': "${TPU_ZONE:?set TPU_ZONE to its zone}"',
                f"{shlex.quote(str(scripts / 'tpu_pod.sh'))} \"$TPU_NAME\" \"$TPU_ZONE\" {shlex.quote(str(commands))}"]
    else:
        raise UserError(f"--launcher {launcher!r}: no scripts to write; expected slurm or tpu")
    submit = out / f"submit_{launcher}.sh"
    done = [] if runs else ['echo "nothing to run: every run is finished"', "exit 0"]
    write_text_atomic(submit, "\n".join(head + done + body) + "\n")
    submit.chmod(0o755)
    return [commands, submit]


# ------------------------------------------------------------------------------------------------------ collect


def _read_metrics(path: Path) -> tuple[dict, dict, dict]:
    """(step-0 record, last training record, last validation record) of a metrics.jsonl; empty dicts if absent."""
    first, train, validation = {}, {}, {}
    if not path.is_file():
        return first, train, validation
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("split") == "validation":
            validation = record
        elif record.get("step") == 0 and "params_core" in record:
            first = record
        elif "loss" in record:
            train = record
    return first, train, validation


_DATA_CACHE: dict[tuple, dict] = {}


def data_tokens(config) -> dict:
    """Unique training tokens D, distinct windows, and expected neural tokens per step for a run's config (see the
    module docstring); computed from the store with the input pipeline's own trial selection."""
    data, model = config.data, config.model
    sessions = data.get("sessions", "all")
    key = (str(Path(data.root).absolute()), json.dumps(sessions if isinstance(sessions, str) else list(sessions)),
           float(data.get("fraction", 1.0)), data.get("weighting", "balanced"), int(model.num_samples),
           int(model.max_neurons), int(config.train.batch_size))
    if key not in _DATA_CACHE:
        store = open_store(data.root)
        layout = SessionLayout.from_store(store, sessions)
        windows = TrainWindows(store, layout, block=key[4], max_neurons=key[5], global_batch=key[6], seed=0,
                               fraction=key[2], weighting=key[3])
        block = key[4]
        samples = np.array([int(np.sum(w.n_starts + block - 1)) for w in windows.windows])
        neurons = np.array(layout.n_neurons)
        seen_per_example = float(np.dot(windows.session_probs, np.minimum(neurons, key[5])))
        _DATA_CACHE[key] = {"D": int(np.dot(neurons, samples)), "unique_windows": windows.num_windows,
                            "tokens_per_step": key[6] * block * seen_per_example}
    return _DATA_CACHE[key]


def _eval_metrics(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())["table"]
        return {METRIC_COLUMNS[col]: v["model"] for col, v in table.items()
                if col in METRIC_COLUMNS and isinstance(v, dict) and v.get("model") is not None}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: expected an eval.json with a 'table' of {{column: {{'model': value}}}}") from None


def collect_run(run: Run, evaluate: bool, status: dict) -> dict:
    """One row of runs.csv (see RUN_COLUMNS); numbers not yet known are left empty."""
    row = {"name": run.name, "size": run.size, "workdir": str(run.workdir)}
    try:
        config = run.resolved_config()
    except UserError as err:
        return {**row, "status": "failed", "error": str(err)}
    steps_saved = checkpoint_steps(run.workdir)
    row.update(seed=config.seed, fraction=config.data.get("fraction", 1.0), steps=int(config.train.steps),
               batch_size=int(config.train.batch_size))
    if is_finished(run, evaluate):
        row.update(status="finished")
    else:
        entry = status.get(run.name, {})
        state = entry.get("state") if entry.get("state") in ("failed", "stopped") else None
        row.update(status=state or ("unfinished" if steps_saved else "pending"), error=entry.get("error"))
    first, train, validation = _read_metrics(run.workdir / "metrics.jsonl")
    if first:
        steps_done = int(train.get("step", 0))
        data = data_tokens(config)
        tokens_seen = data["tokens_per_step"] * steps_done
        row.update(steps_done=steps_done, N=first["params_core"], params_total=first["params_total"],
                   params_embedding=first["params_embedding"], D=data["D"], unique_windows=data["unique_windows"],
                   tokens_seen=round(tokens_seen), epochs=tokens_seen / data["D"],
                   flops=first["step_flops"] * first["devices"] * steps_done,
                   flops_6ND=6.0 * first["params_core"] * tokens_seen,
                   device_hours=train.get("device_hours"), train_loss=train.get("loss"))
    if validation:
        row.update(val_loss=validation["loss"], val_step=validation["step"])
    row.update(_eval_metrics(run.workdir / "eval.json"))
    return row


def collect(sweep: Sweep) -> list[dict]:
    """Collects one row per run into S/runs.csv (atomically) and returns the rows."""
    status = read_status(sweep)
    rows = [collect_run(run, sweep.evaluate, status) for run in sweep.runs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RUN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in RUN_COLUMNS})
    write_text_atomic(sweep.csv_path, buffer.getvalue())
    return rows


# ------------------------------------------------------------------------------------------------------ command
