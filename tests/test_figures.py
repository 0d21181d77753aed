"""Scaling figures from a runs.csv: fits recover a known law, bands, the frontier, tables, refusals."""
import csv

import numpy as np
import pytest

from omnimouse_jax.errors import UserError
from omnimouse_jax.scaling import figures
from omnimouse_jax.scaling.sweep import RUN_COLUMNS

E, A, ALPHA, B, BETA = 1.5, 40.0, 0.3, 300.0, 0.35
SIZES = {"s": 1e4, "m": 1e5, "l": 1e6}
DATA = (1e5, 1e6, 1e7)


def _law(n, d):
    return E + A * n ** -ALPHA + B * d ** -BETA


def _write_runs(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in RUN_COLUMNS})


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """3 sizes x 3 data sizes x 2 seeds from the known law with 0.1% noise, a bounded score, and one failed run."""
    rng = np.random.default_rng(0)
    rows = []
    for size, n in SIZES.items():
        for d in DATA:
            for seed in (0, 1):
                loss = _law(n, d) * (1 + 0.001 * rng.standard_normal())
                row = {"name": f"{size}-{d:g}-s{seed}", "size": size, "status": "finished", "seed": seed, "N": n,
                       "D": d, "flops": 6 * n * d, "val_loss": loss, "device_hours": 0.1}
                if d == DATA[-1]:
                    row["neural_prediction"] = 0.4 - 2.0 * n ** -0.3 + 0.001 * rng.standard_normal()
                rows.append(row)
    rows.append({"name": "broken", "size": "s", "status": "failed", "error": "config.data.fraction=2.0: bad"})
    root = tmp_path_factory.mktemp("figures")
    _write_runs(root / "runs.csv", rows)
    return root


@pytest.fixture(scope="module")
def made(sweep_dir):
    return figures.make_figures(sweep_dir, sweep_dir / "out", bootstrap=100)


def test_fits_recover_the_generating_law(made):
    fits = made["fits"]
    joint = fits.joint
    for name, true in (("alpha", ALPHA), ("beta", BETA), ("E", E)):
        lo, hi = joint.intervals[name]
        # 0.1% noise on 18 runs: the estimate is within 5% of the truth and its 95% interval narrow around it
        assert joint.params[name] == pytest.approx(true, rel=0.05) and lo < joint.params[name] < hi
        assert 0.85 * true < lo and hi < 1.15 * true, (name, lo, hi)
    assert joint.intervals["beta"][0] > 0  # loss falls with data
    # Per size, loss vs D is E + A N^-alpha (a constant) plus B D^-beta: the power fit's exponent is beta.
    assert set(fits.by_size) == set(SIZES)
    for size, result in fits.by_size.items():
        lo, hi = result.intervals["alpha"]
        assert result.params["alpha"] == pytest.approx(BETA, rel=0.05) and 0.85 * BETA < lo < hi < 1.15 * BETA
        assert result.params["E"] == pytest.approx(E + A * SIZES[size] ** -ALPHA, rel=0.05)
    assert set(fits.by_data) == set(DATA)
    assert "neural_prediction" in fits.metrics and fits.metrics["neural_prediction"].form == "bounded"
    assert fits.metrics["neural_prediction"].params["S_max"] == pytest.approx(0.4, abs=0.02)


def test_curve_is_the_law_and_band_brackets_it(made):
    joint = made["fits"].joint
    n, d = np.array([3e4, 3e5]), np.array([3e5, 3e6])
    p = joint.params
    by_hand = p["E"] + p["A"] * n ** -p["alpha"] + p["B"] * d ** -p["beta"]
    mid, lo, hi = figures.curve(joint, {"N": n, "D": d})
    np.testing.assert_allclose(mid, by_hand, rtol=1e-12)
    assert np.all(lo <= mid) and np.all(mid <= hi) and np.all(hi - lo > 0)
    np.testing.assert_allclose(mid, _law(n, d), rtol=0.01)


def test_figures_and_table_are_written(made, sweep_dir):
    stems = {p.stem for p in made["figures"]}
    assert stems == {"loss_vs_data", "loss_vs_params", "metrics_vs_params", "compute_frontier"}
    for stem in stems:
        for fmt in figures.FORMATS:
            path = sweep_dir / "out" / f"{stem}.{fmt}"
            assert path.stat().st_size > 1000
    assert (sweep_dir / "out" / "loss_vs_data.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = made["table"].read_text()
    for row in figures.read_runs(sweep_dir / "runs.csv"):
        assert f"| {row['name']} |" in table
    assert "config.data.fraction=2.0: bad" in table and "Neural prediction" in table


def test_frontier_mask_matches_brute_force():
    rng = np.random.default_rng(1)
    flops, y = rng.uniform(1, 100, 40), rng.uniform(1, 2, 40)
    expected = np.array([not np.any((flops <= flops[i]) & (y < y[i])) for i in range(40)])
    np.testing.assert_array_equal(figures.frontier_mask(flops, y), expected)


def test_too_few_runs_refuse_the_named_form(tmp_path):
    rows = [{"name": f"r{i}", "size": size, "status": "finished", "N": SIZES[size], "D": d, "val_loss": _law(
        SIZES[size], d), "flops": 1.0} for i, (size, d) in enumerate([("s", 1e5), ("s", 1e6), ("m", 1e5), ("m", 1e6)])]
    _write_runs(tmp_path / "runs.csv", rows)
    with pytest.raises(UserError, match="4 finished runs; form 'chinchilla' .* needs at least 6 points"):
        figures.make_figures(tmp_path, tmp_path / "out", form="chinchilla", bootstrap=0)
    with pytest.raises(UserError, match="needs at least 4 points"):
        figures.make_figures(tmp_path, tmp_path / "out", form="power", bootstrap=0)
    made = figures.make_figures(tmp_path, tmp_path / "out", bootstrap=0)  # auto: draws the points, notes the rest
    assert made["fits"].joint is None and any("needs at least 6 points" in n for n in made["fits"].notes)
    assert "needs at least 6 points" in made["table"].read_text()


def test_bad_tables_are_named(tmp_path):
    with pytest.raises(UserError, match="no runs.csv"):
        figures.read_runs(tmp_path / "runs.csv")
    (tmp_path / "runs.csv").write_text("name,size\nx,s\n")
    with pytest.raises(UserError, match="missing columns status, N, D"):
        figures.read_runs(tmp_path / "runs.csv")
    _write_runs(tmp_path / "runs.csv", [{"name": "x", "size": "s", "status": "finished", "N": "ten", "D": 1}])
    with pytest.raises(UserError, match="row 1, column 'N': 'ten' is not a number"):
        figures.read_runs(tmp_path / "runs.csv")


def _visible_tick_labels(fig, axis):
    fig.canvas.draw()
    lo, hi = sorted(axis.get_view_interval())
    return [(tick.get_loc(), tick.label1.get_text()) for tick in axis.get_major_ticks() + axis.get_minor_ticks()
            if lo <= tick.get_loc() <= hi and tick.label1.get_visible() and tick.label1.get_text()]


def test_log_axes_over_narrow_ranges_have_plain_labels():
    """The demo's losses span 0.988-1.113: matplotlib's default labelled that log axis 9.8x10^-1, 1.02x10^0, ..."""
    import matplotlib.pyplot as plt

    losses = {("d16", 1e4): 1.077, ("d16", 4e5): 0.988, ("d32", 1e4): 1.091, ("d32", 4e5): 0.992,
              ("d64", 1e4): 1.113, ("d64", 4e5): 0.995}
    points = [{"size": size, "N": 1e3, "D": d, "val_loss": loss} for (size, d), loss in losses.items()]
    fig = figures.loss_figure(plt, points, figures.SweepFits(y="val_loss"), along="D", group="size")
    ax = fig.axes[0]
    for axis in (ax.yaxis, ax.xaxis):  # D spans 40x, also under two decades
        labels = _visible_tick_labels(fig, axis)
        assert len(labels) >= 3, labels
        for loc, text in labels:
            assert "times" not in text and "^" not in text, text
            assert float(text.replace("\N{MINUS SIGN}", "-")) == pytest.approx(loc, rel=1e-6), (loc, text)
    # over two decades or more the decade labels (10^k) stay
    points = [{"size": "s", "N": 1e3, "D": d, "val_loss": loss} for d, loss in ((1e3, 50.0), (1e6, 0.2))]
    fig = figures.loss_figure(plt, points, figures.SweepFits(y="val_loss"), along="D", group="size")
    assert any("10^{" in text for _, text in _visible_tick_labels(fig, fig.axes[0].yaxis))
    plt.close("all")


def test_metrics_panel_has_a_y_label_and_the_fits_band(made, sweep_dir):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    points = figures.finished(figures.read_runs(sweep_dir / "runs.csv"), "val_loss")
    fig = figures.metrics_figure(plt, points, made["fits"])
    ax = fig.axes[0]
    assert made["fits"].metrics["neural_prediction"].intervals  # intervals exist, so a band is drawn
    assert ax.get_ylabel() == "single-trial correlation"
    assert any(isinstance(c, PolyCollection) for c in ax.collections)
    plt.close(fig)


def test_frontier_fit_line_is_in_the_legend(made, sweep_dir):
    import matplotlib.pyplot as plt

    points = figures.finished(figures.read_runs(sweep_dir / "runs.csv"), "val_loss")
    fig = figures.frontier_figure(plt, points, made["fits"])
    alpha = made["fits"].frontier.params["alpha"]
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith(f"power fit, alpha = {alpha:.3g} [") for t in texts), texts
    plt.close(fig)


def test_scores_through_too_few_sizes_get_the_log_linear_trend_with_its_band(tmp_path):
    """The demo's shape: 3 sizes at the largest D, 2 seeds at the smallest. The 3-parameter bounded form passes
    exactly through them and gets no interval; the 2-parameter log-linear trend gets one, and its band."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    sizes = [("s", 1e4, 0.20), ("s", 1e4, 0.22), ("m", 1e5, 0.27), ("l", 1e6, 0.30)]
    rows = [{"name": f"r{i}", "size": size, "status": "finished", "N": n, "D": 1e6, "val_loss": 1.0 + 1 / n,
             "neural_prediction": score} for i, (size, n, score) in enumerate(sizes)]
    fits = figures.fit_sweep(rows, bootstrap=50)
    trend = fits.metrics["neural_prediction"]
    slope, intercept = np.polyfit(np.log10([n for _, n, _ in sizes]), [s for _, _, s in sizes], 1)
    assert trend.form == "loglinear" and trend.params["slope"] == pytest.approx(slope, rel=1e-9)
    assert trend.params["intercept"] == pytest.approx(intercept, rel=1e-9) and "slope" in trend.intervals
    fig = figures.metrics_figure(plt, figures.finished(rows, "val_loss"), fits)
    assert any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)
    assert fig.axes[0].get_title() == "Neural prediction (loglinear)"
    plt.close(fig)


def test_scores_against_data_per_size_get_log_linear_fits_bands_and_a_figure(tmp_path):
    """The paper's data-scaling figure: every regime's score against D, per model size, with the fitted trend."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    rng = np.random.default_rng(3)
    truth = {("s", "neural_prediction"): (0.05, 0.03), ("l", "neural_prediction"): (0.02, 0.05),
             ("s", "forecast"): (0.10, 0.01), ("l", "forecast"): (0.08, 0.02)}  # (intercept, slope per decade)
    rows = []
    for size in ("s", "l"):
        for d in DATA:
            for seed in (0, 1):
                row = {"name": f"{size}-{d:g}-s{seed}", "size": size, "status": "finished", "N": SIZES[size], "D": d,
                       "val_loss": _law(SIZES[size], d)}
                for column in ("neural_prediction", "forecast"):
                    a, b = truth[(size, column)]
                    row[column] = a + b * np.log10(d) + 0.002 * rng.standard_normal()
                rows.append(row)
    fits = figures.fit_sweep(rows, bootstrap=50)
    for (size, column), _ in truth.items():
        sel = [r for r in rows if r["size"] == size]
        slope, intercept = np.polyfit(np.log10([r["D"] for r in sel]), [r[column] for r in sel], 1)
        fit = fits.metrics_by_size[(column, size)]
        assert fit.params["slope"] == pytest.approx(slope, rel=1e-9) and "slope" in fit.intervals
        assert fit.params["intercept"] == pytest.approx(intercept, rel=1e-9)
    fig = figures.metrics_vs_data_figure(plt, figures.finished(rows, "val_loss"), fits)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["Neural prediction", "Forecast"] or titles == ["Forecast", "Neural prediction"]
    for ax in fig.axes[:2]:
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # a band per size
        assert ax.get_ylabel() == "single-trial correlation" or ax is not fig.axes[0]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["s", "l"]
    plt.close(fig)
    _write_runs(tmp_path / "runs.csv", rows)
    made = figures.make_figures(tmp_path, tmp_path / "out", bootstrap=20)
    assert (tmp_path / "out" / "metrics_vs_data.png").stat().st_size > 1000
    assert "Neural prediction vs D, size s (loglinear)" in made["table"].read_text()


def test_no_scores_at_several_data_sizes_draw_no_data_figure(made):
    assert not any(p.stem == "metrics_vs_data" for p in made["figures"])
    assert any(note.startswith("metrics_vs_data: no model size") for note in made["fits"].notes)
