"""`omnimouse figures`: the scaling figures and tables of a sweep, from its `runs.csv`.

    omnimouse figures --sweep S --out DIR [--y val_loss] [--form auto|chinchilla|power] [--bootstrap 1000]

Writes, each as PNG and SVG: `loss_vs_data` (loss against unique training tokens D, one curve per model size),
`loss_vs_params` (against non-embedding parameters N, one curve per data size), `metrics_vs_params` (each evaluation
regime's score against N at the largest data size, like the paper's model-size figure) and `compute_frontier` (loss
against training FLOPs, with the runs that no cheaper run beats joined up). Also `scaling.md` (every run in a table,
the fits with 95% bootstrap intervals, the figures) and `fits.json`.

Fits use omnimouse_jax.scaling.fit: the chinchilla law L = E + A N^-alpha + B D^-beta over all finished runs, and a
power law E + A x^-alpha per model size (in D) and per data size (in N); bands are the 2.5-97.5 percentiles of the
bootstrap draws' curves. Scores are fitted with the bounded form S_max - A N^-alpha, or log-linearly when too few
sizes allow it (the bounded form refused, or passing exactly through the sizes with no interval). With --form auto
a fit that has too few finished runs is skipped and the reason written to scaling.md; naming a form makes that a hard
error saying how many runs the form needs.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from omnimouse_jax.errors import UserError
from omnimouse_jax.files import write_text_atomic
from omnimouse_jax.scaling.columns import FORM_CHOICES
from omnimouse_jax.scaling.fit import fit_law
from omnimouse_jax.scaling.sweep import METRIC_COLUMNS, RUN_COLUMNS

FORMATS = ("png", "svg")
METRIC_TITLES = {slug: title for title, slug in METRIC_COLUMNS.items()}
_TEXT_COLUMNS = ("name", "size", "status", "error", "workdir")


def read_runs(path) -> list[dict]:
    """The rows of a sweep's runs.csv: numbers as floats, empty cells as None."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no runs.csv; run `omnimouse sweep` (or `omnimouse sweep --collect`) first")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", "size", "status", "N", "D") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: not a sweep table; missing columns {', '.join(missing)}")
        rows = []
        for i, raw in enumerate(reader, start=1):
            row = {}
            for key, text in raw.items():
                text = (text or "").strip()
                if key in _TEXT_COLUMNS or not text:
                    row[key] = text or None
                    continue
                try:
                    row[key] = float(text)
                except ValueError:
                    raise UserError(f"{path}: row {i}, column {key!r}: {text!r} is not a number") from None
            rows.append(row)
    return rows


def finished(rows: list[dict], y: str) -> list[dict]:
    """Finished runs with a positive finite N, D and y."""
    def ok(v):
        return v is not None and math.isfinite(v)

    return [r for r in rows if r["status"] == "finished" and ok(r.get("N")) and ok(r.get("D")) and ok(r.get(y))]


@dataclasses.dataclass
class SweepFits:
    """The fits behind the figures; `notes` says which fits were skipped and why."""

    y: str
    joint: object | None = None  # FitResult of the chinchilla law, or None
    by_size: dict = dataclasses.field(default_factory=dict)  # size -> power fit of y on D
    by_data: dict = dataclasses.field(default_factory=dict)  # D -> power fit of y on N
    metrics: dict = dataclasses.field(default_factory=dict)  # metric column -> bounded/loglinear fit on N
    metrics_by_size: dict = dataclasses.field(default_factory=dict)  # (metric column, size) -> loglinear fit on D
    frontier: object | None = None  # power fit of y on FLOPs over the compute-frontier runs
    notes: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"y": self.y, "chinchilla": self.joint.to_json() if self.joint else None,
                "by_size": {k: v.to_json() for k, v in self.by_size.items()},
                "by_data": {f"{k:g}": v.to_json() for k, v in self.by_data.items()},
                "metrics": {k: v.to_json() for k, v in self.metrics.items()},
                "metrics_vs_data": {f"{c} @ {size}": v.to_json() for (c, size), v in self.metrics_by_size.items()},
                "frontier": self.frontier.to_json() if self.frontier else None, "notes": self.notes}


def _fit(x, y, form, what: str, *, bootstrap: int, seed: int, strict: bool, notes: list, x_names, y_name):
    try:
        return fit_law(x, y, form, bootstrap=bootstrap, seed=seed, holdout_top=0, x_names=x_names, y_name=y_name)
    except UserError as err:
        message = f"{what}: {len(y)} finished runs; {err}"
        if strict:
            raise UserError(message) from None
        notes.append(message)
        return None


def frontier_mask(flops, y) -> np.ndarray:
    """Runs that no run of at most the same FLOPs beats: the compute frontier."""
    flops, y = np.asarray(flops, float), np.asarray(y, float)
    order = np.lexsort((y, flops))
    keep, best = np.zeros(len(y), bool), np.inf
    for i in order:
        if y[i] < best:
            keep[i], best = True, y[i]
    return keep


def fit_sweep(rows: list[dict], *, y: str = "val_loss", form: str = "auto", bootstrap: int = 1000,
              seed: int = 0) -> SweepFits:
    """Fits the sweep's scaling laws on its finished runs (see the module docstring).

    form: "auto" skips fits with too few runs and records why in `notes`; "chinchilla" or "power" makes that fit
    required and raises UserError (saying how many runs it needs) when the sweep cannot support it."""
    if form not in FORM_CHOICES:
        raise UserError(f"--form {form!r}: expected one of {', '.join(FORM_CHOICES)}")
    points = finished(rows, y)
    if not points:
        raise UserError(f"no finished run has a value of {y!r} (and N, D); nothing to fit or plot")
    fits = SweepFits(y=y)
    kw = dict(bootstrap=bootstrap, seed=seed, notes=fits.notes, y_name=y)
    N, D, Y = (np.array([p[k] for p in points]) for k in ("N", "D", y))
    if form in ("auto", "chinchilla"):
        fits.joint = _fit({"N": N, "D": D}, Y, "chinchilla", "chinchilla fit over all runs", strict=form == "chinchilla",
                          x_names=None, **kw)
    for size in dict.fromkeys(p["size"] for p in points):
        sel = np.array([p["size"] == size for p in points])
        result = _fit(D[sel], Y[sel], "power", f"power fit in D for size {size}", strict=form == "power",
                      x_names=("D",), **kw)
        if result is not None:
            fits.by_size[size] = result
    for d in np.unique(D):
        sel = D == d
        result = _fit(N[sel], Y[sel], "power", f"power fit in N at D = {d:.4g}", strict=form == "power",
                      x_names=("N",), **kw)
        if result is not None:
            fits.by_data[float(d)] = result
    at_max = [p for p in points if p["D"] == D.max()]
    for column in METRIC_COLUMNS.values():
        scored = [p for p in at_max if p.get(column) is not None]
        if not scored:
            continue
        xn, score = np.array([p["N"] for p in scored]), np.array([p[column] for p in scored])
        quiet = []  # the bounded form's refusal matters only if the log-linear fallback fails too
        result = _fit(xn, score, "bounded", f"bounded fit of {column}", strict=False, x_names=("N",),
                      **{**kw, "notes": quiet, "y_name": column})
        if result is None or result.bootstrap["skipped"]:
            # refused, or passing exactly through too few sizes (no interval): the 2-parameter trend can be judged
            trend = _fit(xn, score, "loglinear", f"log-linear fit of {column}", strict=False, x_names=("N",),
                         **{**kw, "notes": quiet if result else fits.notes, "y_name": column})
            if trend is not None and (result is None or not trend.bootstrap["skipped"]):
                result = trend
        if result is not None:
            fits.metrics[column] = result
    for column in METRIC_COLUMNS.values():  # every regime's score against data, per model size
        for size in dict.fromkeys(p["size"] for p in points):
            scored = [p for p in points if p["size"] == size and p.get(column) is not None]
            if len({p["D"] for p in scored}) < 2:
                continue
            result = _fit(np.array([p["D"] for p in scored]), np.array([p[column] for p in scored]), "loglinear",
                          f"log-linear fit of {column} in D for size {size}", strict=False, x_names=("D",),
                          **{**kw, "y_name": column})
            if result is not None:
                fits.metrics_by_size[(column, size)] = result
    flops = np.array([p.get("flops") or np.nan for p in points])
    ok = np.isfinite(flops) & (flops > 0)
    if ok.any():
        mask = frontier_mask(flops[ok], Y[ok])
        fits.frontier = _fit(flops[ok][mask], Y[ok][mask], "power", "power fit of the compute frontier", strict=False,
                             x_names=("flops",), **kw)
    return fits


# ------------------------------------------------------------------------------------------------------ curves


def law(form: str, params: dict, x: dict) -> np.ndarray:
    """The fitted law at `x` ({"x": ...} or {"N": ..., "D": ...}); params may hold arrays (one value per bootstrap
    draw), giving one row per draw."""
    p = {k: np.asarray(v, float).reshape(-1, 1) for k, v in params.items()}
    if form == "chinchilla":
        return p["E"] + p["A"] * x["N"] ** -p["alpha"] + p["B"] * x["D"] ** -p["beta"]
    if form == "power":
        return p["E"] + p["A"] * x["x"] ** -p["alpha"]
    if form == "bounded":
        return p["S_max"] - p["A"] * x["x"] ** -p["alpha"]
    if form == "loglinear":
        return p["intercept"] + p["slope"] * np.log10(x["x"])
    raise UserError(f"no curve for form {form!r}")


def curve(result, x: dict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(estimate, 2.5th, 97.5th percentile over bootstrap draws) of a fit at x; no band without draws."""
    mid = law(result.form, result.params, x)[0]
    if not result.bootstrap["used"]:
        return mid, None, None
    drawn = law(result.form, result.draws, x)
    with np.errstate(all="ignore"):
        lo, hi = np.nanpercentile(drawn, [2.5, 97.5], axis=0)
    return mid, lo, hi


def _interval(result, name: str) -> str:
    value = result.params[name]
    ci = result.intervals.get(name)
    return f"{value:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


# ------------------------------------------------------------------------------------------------------ figures


def _grid(values, points: int = 64) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    return np.geomspace(lo / 1.3, hi * 1.3, points) if hi > lo else np.array([lo / 1.3, lo * 1.3])


def _draw(ax, x, mid, lo, hi, color, label=None, style="-"):
    ax.plot(x, mid, style, color=color, lw=1.5, label=label)
    if lo is not None:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


def readable_log_axis(axis) -> None:
    """Plain tick labels on a log axis spanning less than two decades (call after plotting). Matplotlib labels such
    an axis at its minor ticks in scientific form (8.6x10^-1); plain numbers in 1-2-5 steps, or evenly spaced within
    a decade, read as the values they are."""
    from matplotlib.ticker import FixedLocator, LogLocator, MaxNLocator, NullLocator, ScalarFormatter  # lazy: drawing

    lo, hi = sorted(axis.get_view_interval())
    if hi >= 100 * lo:
        return
    ticks = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    if len(ticks) < 3:
        ticks = MaxNLocator(nbins=5).tick_values(lo, hi)
        ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(ScalarFormatter(useOffset=False))
    axis.set_minor_locator(NullLocator())


def _readable_log_axes(ax) -> None:
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            readable_log_axis(axis)


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = out / f"{stem}.{fmt}"
        tmp = path.with_name(f".{path.stem}.tmp.{fmt}")
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    return paths


def loss_figure(plt, points, fits: SweepFits, *, along: str, group: str):
    """y against `along` (D or N), one colour per value of `group` (size or D), fitted curves with bands."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    groups = list(dict.fromkeys(p[group] for p in points))
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, max(len(groups), 1)))
    x_all = np.array([p[along] for p in points])
    for g, color in zip(groups, colors):
        sel = [p for p in points if p[group] == g]
        label = f"{g}" if group == "size" else f"D = {g:.3g}"
        ax.scatter([p[along] for p in sel], [p[fits.y] for p in sel], color=color, s=22, zorder=3, label=label)
        own = (fits.by_size if group == "size" else fits.by_data).get(g)
        xs = _grid([p[along] for p in sel])
        if own is not None:
            _draw(ax, xs, *curve(own, {"x": xs}), color)
        if fits.joint is not None:
            other = "N" if along == "D" else "D"
            fixed = float(np.mean([p[other] for p in sel]))
            xs = _grid(x_all)
            _draw(ax, xs, *curve(fits.joint, {along: xs, other: np.full_like(xs, fixed)}), color, style="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("unique training tokens D (neural tokens)" if along == "D" else "non-embedding parameters N")
    ax.set_ylabel(fits.y.replace("_", " "))
    title = "loss vs data, per model size" if along == "D" else "loss vs model size, per data size"
    if fits.joint is not None:
        exponent = "beta" if along == "D" else "alpha"
        title += f"\nchinchilla (dashed): {exponent} = {_interval(fits.joint, exponent)}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="size" if group == "size" else None)
    ax.grid(True, which="both", alpha=0.25)
    _readable_log_axes(ax)
    return fig


def _score_panels(plt, columns):
    """(figure, panels): one log-x panel per metric column, at most 4 a row, unused panels hidden."""
    cols = min(4, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for row in axes:  # every score in the paper's table is a single-trial correlation
        row[0].set_ylabel("single-trial correlation", fontsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    return fig, list(axes.flat)[:len(columns)]


def _finish_panel(ax, column: str, title_suffix: str, xlabel: str) -> None:
    ax.set_xscale("log")
    ax.set_title(METRIC_TITLES[column] + title_suffix, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    _readable_log_axes(ax)


def metrics_figure(plt, points, fits: SweepFits):
    """Each regime's score against N at the largest D, with its fit and 95% band; None (and a note) without scores."""
    at_max = [p for p in points if p["D"] == max(q["D"] for q in points)]
    columns = [c for c in METRIC_COLUMNS.values() if any(p.get(c) is not None for p in at_max)]
    if not columns:
        fits.notes.append("metrics_vs_params: no run at the largest D has evaluation metrics (eval.json); not drawn")
        return None
    fig, panels = _score_panels(plt, columns)
    for ax, column in zip(panels, columns):
        sel = [p for p in at_max if p.get(column) is not None]
        xn = np.array([p["N"] for p in sel])
        ax.scatter(xn, [p[column] for p in sel], color="C0", s=20, zorder=3)
        result = fits.metrics.get(column)
        fitted = ""
        if result is not None:
            xs = _grid(xn)
            _draw(ax, xs, *curve(result, {"x": xs}), "C0")
            fitted = f" ({result.form}{'' if result.bootstrap['used'] else ', no interval'})"
        _finish_panel(ax, column, fitted, "N")
    fig.suptitle(f"evaluation metrics vs non-embedding parameters (D = {at_max[0]['D']:.3g})", fontsize=10)
    fig.tight_layout()
    return fig


def metrics_vs_data_figure(plt, points, fits: SweepFits):
    """Each regime's score against D, one colour per model size, with its log-linear fit and 95% band (the paper's
    data-scaling figure); None (and a note) unless some size has scores at two or more data sizes."""
    sizes = list(dict.fromkeys(p["size"] for p in points))
    columns = [c for c in METRIC_COLUMNS.values()
               if any(len({p["D"] for p in points if p["size"] == s and p.get(c) is not None}) > 1 for s in sizes)]
    if not columns:
        fits.notes.append("metrics_vs_data: no model size has evaluation metrics at two or more data sizes; not drawn")
        return None
    fig, panels = _score_panels(plt, columns)
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, max(len(sizes), 1)))
    for ax, column in zip(panels, columns):
        for size, color in zip(sizes, colors):
            sel = [p for p in points if p["size"] == size and p.get(column) is not None]
            if not sel:
                continue
            xd = np.array([p["D"] for p in sel])
            ax.scatter(xd, [p[column] for p in sel], color=color, s=20, zorder=3, label=size)
            result = fits.metrics_by_size.get((column, size))
            if result is not None:
                xs = _grid(xd)
                _draw(ax, xs, *curve(result, {"x": xs}), color)
        _finish_panel(ax, column, "", "unique training tokens D")
    panels[0].legend(fontsize=7, title="size", title_fontsize=7)
    fig.suptitle("evaluation metrics vs data, per model size (log-linear fits, 95% bands)", fontsize=10)
    fig.tight_layout()
    return fig


def frontier_figure(plt, points, fits: SweepFits):
    """Loss against training FLOPs, the frontier joined up and its power fit; None (and a note) without FLOPs."""
    sel = [p for p in points if (p.get("flops") or 0) > 0]
    if not sel:
        fits.notes.append("compute_frontier: no finished run records FLOPs; not drawn")
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    flops, y = np.array([p["flops"] for p in sel]), np.array([p[fits.y] for p in sel])
    sizes = list(dict.fromkeys(p["size"] for p in sel))
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(sizes)))
    for size, color in zip(sizes, colors):
        mask = np.array([p["size"] == size for p in sel])
        ax.scatter(flops[mask], y[mask], color=color, s=22, zorder=3, label=size)
    mask = frontier_mask(flops, y)
    order = np.argsort(flops[mask])
    ax.plot(flops[mask][order], y[mask][order], "k-", lw=1, label="frontier")
    if fits.frontier is not None:
        xs = _grid(flops[mask])
        _draw(ax, xs, *curve(fits.frontier, {"x": xs}), "k", style=":",
              label=f"power fit, alpha = {_interval(fits.frontier, 'alpha')}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(fits.y.replace("_", " "))
    ax.set_title("compute frontier", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    _readable_log_axes(ax)
    return fig


# ------------------------------------------------------------------------------------------------------ tables


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def runs_table(rows: list[dict]) -> str:
    """Every run as a Markdown table; metric columns only where some run has them, errors only where some failed."""
    columns = [("name", "run"), ("size", "size"), ("status", "status"), ("seed", "seed"), ("N", "N"), ("D", "D"),
               ("epochs", "epochs"), ("steps_done", "steps"), ("flops", "FLOPs"), ("device_hours", "device-hours"),
               ("train_loss", "train loss"), ("val_loss", "val loss")]
    columns += [(c, METRIC_TITLES[c]) for c in METRIC_COLUMNS.values() if any(r.get(c) is not None for r in rows)]
    if any(r.get("error") for r in rows):
        columns.append(("error", "error"))
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def _fit_lines(fits: SweepFits) -> list[str]:
    def line(head, r, names):
        skipped = r.bootstrap.get("skipped")
        return (f"- {head} on {r.n_points} runs: " + ", ".join(f"{k} = {_interval(r, k)}" for k in names)
                + (f" ({skipped})" if skipped else ""))

    lines = []
    if fits.joint is not None:
        joint_names = ("E", "A", "B", "alpha", "beta")
        lines.append(line(f"chinchilla, {fits.y} = E + A N^-alpha + B D^-beta", fits.joint, joint_names))
    for size, r in fits.by_size.items():
        lines.append(line(f"size {size}, {fits.y} = E + A D^-alpha", r, ("E", "A", "alpha")))
    for d, r in fits.by_data.items():
        lines.append(line(f"D = {d:.4g}, {fits.y} = E + A N^-alpha", r, ("E", "A", "alpha")))
    for column, r in fits.metrics.items():
        lines.append(line(f"{METRIC_TITLES[column]} vs N ({r.form})", r, tuple(r.params)))
    for (column, size), r in fits.metrics_by_size.items():
        lines.append(line(f"{METRIC_TITLES[column]} vs D, size {size} ({r.form})", r, tuple(r.params)))
    if fits.frontier is not None:
        lines.append(line(f"compute frontier, {fits.y} = E + A C^-alpha", fits.frontier, ("E", "A", "alpha")))
    lines += [f"- skipped: {note}" for note in fits.notes]
    return lines or ["- no fits"]


def make_figures(sweep_dir, out, *, y: str = "val_loss", form: str = "auto", bootstrap: int = 1000,
                 seed: int = 0) -> dict:
    """Reads S/runs.csv, fits, and writes the figures (PNG and SVG), scaling.md and fits.json into `out`.

    Returns {"figures": [paths], "table": path, "fits_json": path, "fits": SweepFits}."""
    import matplotlib  # lazy: only drawing needs matplotlib (pyplot adds about 0.5 s to an import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the file-only backend is chosen

    sweep_dir, out = Path(sweep_dir), Path(out)
    rows = read_runs(sweep_dir / "runs.csv")
    if y not in RUN_COLUMNS or y in _TEXT_COLUMNS:
        raise UserError(f"--y {y!r}: expected a numeric runs.csv column such as val_loss or train_loss")
    fits = fit_sweep(rows, y=y, form=form, bootstrap=bootstrap, seed=seed)
    points = finished(rows, y)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {"loss_vs_data": loss_figure(plt, points, fits, along="D", group="size"),
             "loss_vs_params": loss_figure(plt, points, fits, along="N", group="D"),
             "metrics_vs_params": metrics_figure(plt, points, fits),
             "metrics_vs_data": metrics_vs_data_figure(plt, points, fits),
             "compute_frontier": frontier_figure(plt, points, fits)}
    figures = []
    for stem, fig in drawn.items():
        if fig is not None:
            figures += _save(fig, out, stem)
            plt.close(fig)
    text = [f"# Scaling results: {sweep_dir}", "",
            f"{len(rows)} runs, {sum(r['status'] == 'finished' for r in rows)} finished; fits use the {len(points)} "
            f"finished runs with {y}, with {bootstrap} bootstrap resamples (95% percentile intervals in brackets).", "",
            "## Runs", "", runs_table(rows), "", "## Fits", "", *_fit_lines(fits), "", "## Figures", ""]
    text += [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    table = out / "scaling.md"
    write_text_atomic(table, "\n".join(text) + "\n")
    fits_json = out / "fits.json"
    write_text_atomic(fits_json, json.dumps(fits.to_json(), indent=1))
    return {"figures": figures, "table": table, "fits_json": fits_json, "fits": fits}
