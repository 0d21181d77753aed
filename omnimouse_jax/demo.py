"""`omnimouse demo --out DIR`: the main job on built-in synthetic data, end to end.

    omnimouse demo --out results/demo        (what `make demo` runs)

1. synthesize digital mice with known ground truth (DIR/store);
2. run the CPU scaling sweep experiments/sweeps/scaling_demo.py (model size x data size, 2 seeds at the smallest size),
   training and evaluating every run in every regime against the baselines (DIR/sweep);
3. fit the scaling laws with bootstrap intervals and draw the figures (DIR/figures);
4. write DIR/report.md (figures, the regimes-vs-baselines table of the largest run, fitted laws, the plain-words
   verdicts) and DIR/results.json.
Every stage skips what a previous demo in DIR already finished, so an interrupted demo resumes.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from omnimouse_jax.data.store import open_store
from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice
from omnimouse_jax.evaluate.options import EvalOptions
from omnimouse_jax.evaluate.regimes import evaluate_workdir
from omnimouse_jax.evaluate.report import ablation_markdown, paper_markdown
from omnimouse_jax.files import write_text_atomic
from omnimouse_jax.resources import shipped
from omnimouse_jax.scaling import figures, sweep as sweeps
from omnimouse_jax.scaling.fit import saturation_verdict

SWEEP_FILE = shipped("experiments/sweeps/scaling_demo.py")
# The regimes table's quick evaluation, sized to the demo's budget.
QUICK_EVAL = dict(max_batches=8, train_batches=20, cnn_steps=60)


def _stage(number: int, text: str, start: float) -> None:
    print(f"[{number}/4 {time.monotonic() - start:6.0f}s] {text}", flush=True)


def synthesize(store: Path, mice: int, seed: int) -> list[str]:
    """The demo's digital mice; reuses a complete store from an earlier demo."""
    config = DigitalMiceConfig(mice=mice, seed=seed)
    if (store / "catalog.json").exists():
        names = open_store(store).sessions
        if len(names) == mice:
            return names
    return write_digital_mice(store, config, layout="store")


def run_demo(out, *, steps: int = 60, processes: int = 2, bootstrap: int = 1000, mice: int = 3, seed: int = 0) -> int:
    """The demo's four stages into the directory `out` (see the module docstring), printing its progress; returns
    1 if a run of the sweep did not finish, else 0."""
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    timings = {}

    _stage(1, f"synthesizing {mice} digital mice into {out / 'store'}", start)
    names = synthesize(out / "store", mice, seed)
    timings["synthesize_s"] = time.monotonic() - start

    _stage(2, f"scaling sweep ({SWEEP_FILE.name}, {steps} steps per run) in {out / 'sweep'}", start)
    sweep = sweeps.load_sweep(f"{SWEEP_FILE}:steps={steps}", out / "sweep", [("data.root", str(out / "store"))])
    status = sweeps.run_local(sweep, processes=processes, log=lambda m: print("      " + m, flush=True))
    rows = sweeps.collect(sweep)
    failed = {name: s.get("error") for name, s in status.items() if s.get("state") != "finished"}
    timings["sweep_s"] = time.monotonic() - start - timings["synthesize_s"]

    _stage(3, f"fitting scaling laws ({bootstrap} bootstrap resamples) and drawing figures", start)
    made = figures.make_figures(out / "sweep", out / "figures", bootstrap=bootstrap)
    timings["fit_s"] = time.monotonic() - start - timings["synthesize_s"] - timings["sweep_s"]

    _stage(4, f"writing {out / 'report.md'}", start)
    main_run = _largest_run(rows)
    evaluation = None
    if main_run:  # the regimes table: the largest run against every baseline, fitted once here
        evaluation = evaluate_workdir(main_run["workdir"], regimes="paper", split="test",
                                      out=out / "main_run_eval.json",
                                      options=EvalOptions(**QUICK_EVAL),
                                      log=lambda m: print("      " + m, flush=True))
    verdicts = _verdicts(rows, made["fits"])
    timings["total_s"] = time.monotonic() - start
    results = {"store": str(out / "store"), "sessions": names, "runs": rows, "failed_runs": failed,
               "fits": made["fits"].to_json(), "verdicts": verdicts, "main_run": main_run and main_run["name"],
               "evaluation": evaluation, "timings": timings}

    write_text_atomic(out / "results.json", json.dumps(_finite(results), indent=1))
    write_text_atomic(out / "report.md", _report(out, rows, made, evaluation, main_run, verdicts, failed, timings))
    print(f"done in {timings['total_s']:.0f} s: {out / 'report.md'}")
    for line in verdicts.values():
        print("  " + line)
    return 0 if not failed else 1


def _largest_run(rows: list[dict]) -> dict | None:
    """The finished run with the most parameters, then the most data: the one whose regimes table the report shows."""
    done = [r for r in rows if r["status"] == "finished" and r.get("N") and r.get("D")]
    return max(done, key=lambda r: (r["N"], r["D"], -(r.get("seed") or 0))) if done else None


def data_trend(rows: list[dict], fits, y: str = "val_loss") -> tuple[bool, str]:
    """Whether loss falls with data at every model size, and the evidence in words.

    It does when (1) at every size the loss (mean over seeds) drops at each step up in D, (2) the chinchilla fit's data
    exponent beta has a 95% interval above 0 with B > 0 (the law's data term, shared by every size), and (3) every
    size with enough distinct D for its own power fit's interval has an exponent interval above 0."""
    by_size: dict[str, dict[float, list[float]]] = {}
    for r in figures.finished(rows, y):
        by_size.setdefault(r["size"], {}).setdefault(float(r["D"]), []).append(float(r[y]))
    chains, monotone = [], True
    for size, points in by_size.items():
        means = [sum(v) / len(v) for _, v in sorted(points.items())]
        falls = len(means) > 1 and all(b < a for a, b in zip(means, means[1:]))
        monotone &= falls
        chains.append(f"{size}: {' > '.join(f'{m:.4f}' for m in means)}" + ("" if falls else " (not falling)"))
    evidence = [f"{y} from the least to the most data, {'; '.join(chains)}"]
    joint_ok = False
    if fits.joint is not None:
        low, high = fits.joint.intervals.get("beta", (math.nan, math.nan))
        joint_ok = low > 0 and fits.joint.params["B"] > 0
        evidence.append(f"chinchilla data exponent beta = {fits.joint.params['beta']:.3g} [{low:.3g}, {high:.3g}]")
    else:
        evidence.append("no chinchilla fit (too few finished runs)")
    own_ok = True
    for size, result in fits.by_size.items():
        if "alpha" not in result.intervals:  # too few distinct D for its own interval: (1) and (2) decide
            evidence.append(f"{size} alone: data exponent {result.params['alpha']:.3g} "
                            f"({result.bootstrap['skipped'] or 'no interval'})")
            continue
        low, high = result.intervals["alpha"]
        own_ok &= low > 0
        evidence.append(f"{size} alone: data exponent {result.params['alpha']:.3g} [{low:.3g}, {high:.3g}]")
    every = bool(by_size) and monotone and joint_ok and own_ok
    return every, "; ".join(evidence)


def _verdicts(rows: list[dict], fits) -> dict[str, str]:
    """Plain-words statements, each backed by the runs and an interval."""
    every, evidence = data_trend(rows, fits)
    out = {"data": ("Loss falls with data at every model size" if every else
                    "Loss does not fall with data at every model size") + f" ({evidence}; 95% intervals)."}
    for d, result in fits.by_data.items():
        verdict = saturation_verdict(result)
        out[f"model_size_at_D={d:.3g}"] = f"Model size at D = {d:.3g} neural tokens: {verdict.text}"
    return out


def _report(out, rows, made, evaluation, main_run, verdicts, failed, timings) -> str:
    lines = ["# OmniMouse-JAX demo: scaling on digital mice", "",
             f"Total run time {timings['total_s']:.0f} s on this machine (synthesis {timings['synthesize_s']:.0f} s, "
             f"sweep {timings['sweep_s']:.0f} s, fits and figures {timings['fit_s']:.0f} s).", "",
             "## Verdicts", ""] + [f"- {v}" for v in verdicts.values()]
    if failed:
        lines += ["", "## Runs that did not finish", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    if evaluation is not None:
        lines += ["", f"## Regimes vs baselines: {main_run['name']} (the largest model on all the data)", "",
                  paper_markdown(evaluation), "",
                  f"A quick look sized to the demo: {QUICK_EVAL['max_batches']} evaluation batches, baselines fit on "
                  f"{QUICK_EVAL['train_batches']} training batches, a {QUICK_EVAL['cnn_steps']}-step CNN. "
                  f"`omnimouse evaluate --workdir {main_run['workdir']} --regimes paper` evaluates every batch "
                  "(docs/evaluation.md)."]
        ablation = ablation_markdown(evaluation, heading="###")
        if ablation:
            lines += ["", ablation]
    lines += ["", "## Fitted laws and runs", "", f"See [{made['table'].name}](figures/{made['table'].name}) for the "
              "full runs table.", ""]
    lines += [line for line in made["table"].read_text().split("## Fits", 1)[1].split("## Figures")[0].strip().splitlines()]
    lines += ["", "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in made["figures"] if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def _finite(value):
    """JSON has no NaN or infinity: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
