"""Scaling-law fits: Chinchilla's published numbers, scale invariance, planted laws and breaks, bad input."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from omnimouse_jax import cli
from omnimouse_jax.errors import UserError
from omnimouse_jax.scaling import fit
from omnimouse_jax.scaling.columns import FORM_NAMES

CHINCHILLA_CSV = Path(__file__).parent / "data" / "chinchilla_points.csv"
# Besiroglu et al. 2024 (Epoch AI): estimates and 95% bootstrap intervals after dropping the 5 highest-loss points
EPOCH_INTERVALS = {"A": (285, 744), "B": (1042, 5810), "E": (1.769, 1.871), "alpha": (0.317, 0.373),
                   "beta": (0.331, 0.415)}


def _chinchilla_points():
    with open(CHINCHILLA_CSV) as f:
        rows = list(csv.DictReader(f))
    x = {"params": np.array([float(r["params"]) for r in rows]), "tokens": np.array([float(r["tokens"]) for r in rows])}
    return x, np.array([float(r["loss"]) for r in rows])


def _bnsl(x, a, b, c0, c1, d1, f1):
    return a + b * x ** -c0 * (1 + (x / d1) ** (1 / f1)) ** (-c1 * f1)


@pytest.fixture(scope="module")
def chinchilla_fit():
    x, y = _chinchilla_points()
    return fit.fit_law(x, y, "chinchilla", bootstrap=0, exclude_top_loss=5, holdout_top=0, y_name="loss")


def test_chinchilla_matches_epoch_estimates(chinchilla_fit):
    p = chinchilla_fit.params
    assert p["alpha"] == pytest.approx(0.347, abs=0.005)
    assert p["beta"] == pytest.approx(0.367, abs=0.005)
    assert p["E"] == pytest.approx(1.817, abs=0.005)
    for name, (lo, hi) in EPOCH_INTERVALS.items():
        assert lo < p[name] < hi, name
    assert chinchilla_fit.n_points == 240 and len(chinchilla_fit.exclusions) == 5
    # Epoch dropped the 5 highest losses: every excluded loss is above every kept one
    assert min(e["loss"] for e in chinchilla_fit.exclusions) > chinchilla_fit.y.max()
    assert chinchilla_fit.starts["at_optimum"] >= chinchilla_fit.starts["total"] // 2


def test_chinchilla_answer_does_not_depend_on_objective_scale(chinchilla_fit):
    x, y = _chinchilla_points()
    scaled = fit.fit_law(x, y, "chinchilla", bootstrap=0, exclude_top_loss=5, holdout_top=0, objective_scale=1e-3)
    for name, value in chinchilla_fit.params.items():
        assert scaled.params[name] == pytest.approx(value, rel=1e-6), name
    assert scaled.objective["value"] == pytest.approx(1e-3 * chinchilla_fit.objective["value"], rel=1e-9)


def test_compute_optimal_minimises_loss_at_fixed_budget(chinchilla_fit):
    budget = 5.76e23  # Chinchilla's training compute
    opt = fit.compute_optimal(chinchilla_fit, budget)
    n_opt, d_opt = opt["N_opt"]["estimate"], opt["D_opt"]["estimate"]
    assert 6 * n_opt * d_opt == pytest.approx(budget, rel=1e-9)

    def loss_at(log_n):  # the fitted law along the budget's iso-FLOP line
        n = np.exp(log_n)
        return chinchilla_fit.predict(np.array([[n, budget / (6 * n)]]))[0]

    best = minimize_scalar(loss_at, bounds=(np.log(1e8), np.log(1e13)), method="bounded", options={"xatol": 1e-8})
    assert np.log(n_opt) == pytest.approx(best.x, abs=1e-3)


def test_bootstrap_warm_start_finds_the_full_search_basin():
    """Each bootstrap draw (warm-started, coarse grid) equals a from-scratch full search on the same resample."""
    rng = np.random.default_rng(3)
    N = np.repeat(np.logspace(6, 9, 8), 4)
    D = N * np.tile([5.0, 20.0, 80.0, 320.0], 8)
    y = (1.7 + 400 * N ** -0.34 + 1500 * D ** -0.28) * np.exp(0.01 * rng.standard_normal(len(N)))
    result = fit.fit_law({"N": N, "D": D}, y, "chinchilla", bootstrap=3, seed=7, holdout_top=0)
    counts = fit.resample_counts(len(y), 3, seed=7)
    for r in range(3):
        idx = np.repeat(np.arange(len(y)), counts[r])
        alone = fit.fit_law({"N": N[idx], "D": D[idx]}, y[idx], "chinchilla", bootstrap=0, holdout_top=0)
        for name, value in alone.params.items():
            assert result.draws[name][r] == pytest.approx(value, rel=1e-4), (r, name)


def test_planted_chinchilla_law_recovered():
    rng = np.random.default_rng(0)
    N = np.repeat(np.logspace(6, 9, 8), 4)
    D = N * np.tile([5.0, 20.0, 80.0, 320.0], 8)
    y = (1.7 + 400 * N ** -0.34 + 1500 * D ** -0.28) * np.exp(0.005 * rng.standard_normal(len(N)))
    p = fit.fit_law({"N": N, "D": D}, y, "chinchilla", bootstrap=0, holdout_top=0).params
    assert p["alpha"] == pytest.approx(0.34, abs=0.03)
    assert p["beta"] == pytest.approx(0.28, abs=0.03)
    assert p["E"] == pytest.approx(1.7, abs=0.05)


def test_planted_power_law_intervals_cover_the_truth():
    truth = {"E": 0.5, "A": 30.0, "alpha": 0.3}
    x = np.repeat(np.logspace(4, 8, 8), 3)
    covered = {k: 0 for k in truth}
    alphas = []
    for repeat in range(20):
        rng = np.random.default_rng(100 + repeat)
        y = (truth["E"] + truth["A"] * x ** -truth["alpha"]) * np.exp(0.02 * rng.standard_normal(len(x)))
        result = fit.fit_law(x, y, "power", bootstrap=100, seed=repeat, holdout_top=0)
        alphas.append(result.params["alpha"])
        for k, v in truth.items():
            lo, hi = result.intervals[k]
            covered[k] += lo <= v <= hi
    assert all(c >= 15 for c in covered.values()), covered
    assert np.median(alphas) == pytest.approx(0.3, abs=0.02)


def test_planted_break_found_and_located_and_preferred_by_aicc():
    rng = np.random.default_rng(5)
    x = np.repeat(np.logspace(4, 8, 10), 2)
    y = _bnsl(x, 0.2, 5.0, 0.1, 0.5, 1e6, 0.3) * np.exp(0.01 * rng.standard_normal(len(x)))
    result = fit.fit_law(x, y, "bnsl", bootstrap=100, seed=0, holdout_top=0)
    verdict = fit.break_verdict(result)
    assert verdict.claimed is True and "break found" in verdict.text
    assert abs(np.log10(result.params["d1"] / 1e6)) < 0.3
    lo, hi = result.intervals["c1"]
    assert lo <= 0.5 <= hi
    power = fit.fit_law(x, y, "power", bootstrap=0, holdout_top=0)
    assert result.aicc < power.aicc and result.bic < power.bic


def test_no_break_claimed_on_a_plain_power_law():
    rng = np.random.default_rng(6)
    x = np.repeat(np.logspace(4, 8, 10), 2)
    y = (0.2 + 5.0 * x ** -0.25) * np.exp(0.01 * rng.standard_normal(len(x)))
    result = fit.fit_law(x, y, "bnsl", bootstrap=100, seed=0, holdout_top=0)
    assert fit.break_verdict(result).claimed is False
    assert result.verdicts[0].claimed is False


def test_bnsl_predict_matches_the_published_formula():
    rng = np.random.default_rng(5)
    x = np.logspace(4, 8, 20)  # 20 points share the padded shape of the other bnsl tests (no recompile)
    y = _bnsl(x, 0.2, 5.0, 0.1, 0.5, 1e6, 0.3) * np.exp(0.01 * rng.standard_normal(len(x)))
    result = fit.fit_law(x, y, "bnsl", bootstrap=0, holdout_top=0)
    x_new = np.logspace(3, 9, 7)
    np.testing.assert_allclose(result.predict(x_new), _bnsl(x_new, **result.params), rtol=1e-10)


def test_saturation_verdicts_and_bounded_scores():
    x = np.repeat(np.logspace(3, 7, 9), 2)
    rng = np.random.default_rng(8)
    score = 0.9 - 2.0 * x ** -0.25 + 0.002 * rng.standard_normal(len(x))
    bounded = fit.fit_law(x, score, "bounded", bootstrap=100, seed=0, holdout_top=0)
    assert bounded.params["S_max"] == pytest.approx(0.9, abs=0.02)
    assert bounded.verdicts[0].claimed is True and "saturating" in bounded.verdicts[0].text
    # a power law whose floor sits far below the observed range: no bend inside it, so no saturation claim
    plain = (0.01 + 50.0 * x ** -0.3) * np.exp(0.01 * rng.standard_normal(len(x)))
    result = fit.fit_law(x, plain, "power", bootstrap=100, seed=0, holdout_top=0)
    assert fit.saturation_verdict(result).claimed is False


def test_loglinear_slope_matches_least_squares_and_heldout_error():
    rng = np.random.default_rng(9)
    x = np.repeat(np.logspace(2, 6, 5), 3)
    y = 0.1 + 0.05 * np.log10(x) + 0.01 * rng.standard_normal(len(x))
    result = fit.fit_law(x, y, "loglinear", bootstrap=500, seed=0, holdout_top=1)
    slope, intercept = np.polyfit(np.log10(x), y, 1)
    assert result.params["slope"] == pytest.approx(slope, rel=1e-10)
    assert result.params["intercept"] == pytest.approx(intercept, rel=1e-10)
    lo, hi = result.intervals["slope"]
    assert lo < slope < hi and hi - lo < 0.02
    held = x >= 1e6
    s2, i2 = np.polyfit(np.log10(x[~held]), y[~held], 1)
    expected = np.mean(np.abs(i2 + s2 * np.log10(x[held]) - y[held]) / y[held])
    assert result.heldout["n_points"] == 3
    assert result.heldout["error"] == pytest.approx(expected, rel=1e-9)


def test_too_few_points_are_refused_with_the_count_needed():
    with pytest.raises(UserError, match="needs at least 4 points"):
        fit.fit_law(np.array([1e3, 1e4, 1e5]), np.array([3.0, 2.0, 1.5]), "power")
    with pytest.raises(UserError, match="needs at least 7 points with at least 6 distinct"):
        fit.fit_law(np.repeat([1e3, 1e4, 1e5, 1e6, 1e7], 2), np.linspace(3, 1, 10), "bnsl")


def test_no_intervals_when_the_law_passes_through_an_unreplicated_x():
    """3 distinct x for the 3-parameter power law: every resample's fit passes exactly through an x seen once, so no
    interval is given (the demo's 3-size fits once printed estimates outside their own intervals)."""
    x3 = np.array([1e4, 1e4, 1e5, 1e6])  # one replicate, at the smallest x only
    y3 = 0.5 + 30.0 * x3 ** -0.3 * np.array([1.01, 0.99, 1.0, 1.0])
    bare = fit.fit_law(x3, y3, "power", bootstrap=50, holdout_top=0)
    assert bare.intervals == {} and bare.derived_intervals == {} and bare.bootstrap["used"] == 0
    assert "no intervals: 3 distinct x for 3 parameters, 2 of them seen once" in bare.summary()
    assert fit.saturation_verdict(bare).claimed is None
    assert np.isfinite(bare.params["alpha"])
    # Every x replicated, or more distinct x than parameters: intervals, each around its estimate.
    rng = np.random.default_rng(3)
    for x in (np.repeat([1e4, 1e5, 1e6], 2), np.array([1e4, 1e5, 1e6, 1e7])):
        y = (0.5 + 30.0 * x ** -0.3) * np.exp(0.01 * rng.standard_normal(len(x)))
        result = fit.fit_law(x, y, "power", bootstrap=50, holdout_top=0)
        assert result.bootstrap["skipped"] is None and result.bootstrap["used"] > 0
        for name, (lo, hi) in result.intervals.items():
            assert lo <= result.params[name] <= hi, (x, name)


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return str(path)


@pytest.mark.parametrize("rows, columns, message", [
    ([(1e3, 3.0), (1e4, 2.0), (1e5, 1.5), (1e6, 1.2), (1e7, 1.1)], ("size", "loss"), "no column 'params'"),
    ([(1e3, 3.0), (1e4, 2.0), (-2e5, 1.5), (1e6, 1.2), (1e7, 1.1)], ("params", "loss"),
     "column 'params' must be finite and positive; row 3 is -200000"),
    ([(1e3, 3.0), (1e4, 0.0), (1e5, 1.5), (1e6, 1.2), (1e7, 1.1)], ("params", "loss"),
     "column 'loss' must be finite and positive; row 2 is 0"),
    ([(1e3, 3.0), (1e4, "n/a"), (1e5, 1.5), (1e6, 1.2), (1e7, 1.1)], ("params", "loss"),
     "row 2, column 'loss': 'n/a' is not a number"),
    ([(1e3, 3.0), (1e4, 2.0), (1e5, 1.5)], ("params", "loss"), "needs at least 5 points"),
    ([], ("params", "loss"), "no data rows; form 'power' has 3 parameters and needs at least 5 points"),
])
def test_bad_csv_exits_2_naming_file_and_column(tmp_path, capsys, rows, columns, message):
    path = _write_csv(tmp_path / "runs.csv", columns, rows)
    code = cli.main(["fit", "--csv", path, "--form", "power", "--x", "params", "--y", "loss"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"omnimouse: error: {path}: ") and message in err[0]


@pytest.mark.parametrize("form, header, rows", [
    # 6 points for the 5-parameter law: once "0 converged" and intervals up to 1e70, with exit 0
    ("chinchilla", ("N", "D", "loss"), [(1e6, 1e8, 3.1), (1e7, 1e8, 2.8), (1e8, 1e9, 2.4), (1e6, 1e9, 2.9),
                                        (1e7, 1e10, 2.3), (1e8, 1e10, 2.1)]),
    ("power", ("params", "loss"), [(1e3, 3.0), (1e4, 2.0), (1e5, 1.5), (1e6, 1.25)]),
])
def test_fit_command_needs_parameters_plus_two_points_and_says_why(tmp_path, capsys, form, header, rows):
    path = _write_csv(tmp_path / "runs.csv", header, rows)
    code = cli.main(["fit", "--csv", path, "--form", form, "--x", ",".join(header[:-1]), "--y", "loss"])
    err = capsys.readouterr().err.strip().splitlines()
    needed = len(rows) + 1  # one point short: the law has len(rows) - 1 parameters
    assert code == 2 and len(err) == 1
    assert f"needs at least {needed} points" in err[0] and f"got {len(rows)} points" in err[0]
    assert "parameters + 2, because" in err[0] and "fitted exactly" in err[0]
    # the library alone still fits with one point to spare (the figures' per-size curves rely on it)
    x = {name: [row[j] for row in rows] for j, name in enumerate(header[:-1])}
    assert fit.fit_law(x, [row[-1] for row in rows], form, bootstrap=0, holdout_top=0).n_points == len(rows)


def test_cli_json_holds_the_report(tmp_path, capsys):
    rng = np.random.default_rng(10)
    x = np.repeat(np.logspace(4, 8, 10), 2)
    y = (0.5 + 30 * x ** -0.3) * np.exp(0.01 * rng.standard_normal(len(x)))
    y[0] = 40.0  # an outlier for --exclude-top-loss
    path = _write_csv(tmp_path / "runs.csv", ("params", "loss"), zip(x, y))
    code = cli.main(["fit", "--csv", path, "--form", "power", "--x", "params", "--y", "loss", "--bootstrap", "100",
                     "--exclude-top-loss", "1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["n_points"] == 19 and doc["exclusions"] == [{"row": 1, "loss": 40.0}]
    assert set(doc["estimates"]) == set(doc["intervals"]) == {"E", "A", "alpha"}
    assert doc["starts"]["converged"] >= 1 and doc["bootstrap"]["used"] == 100
    assert doc["heldout"]["n_points"] == 2 and 0 <= doc["heldout"]["error"] < 0.05
    assert "Huber" in doc["objective"]["name"] and doc["optimizer"] and doc["aicc"] is not None
    assert doc["verdicts"][0]["kind"] == "saturation"


def test_cli_form_choices_match_the_library():
    assert FORM_NAMES == fit.FORMS


def test_rows_with_empty_cells_are_skipped_and_counted(tmp_path, capsys):
    rows = [(1e3, 3.0), (1e4, 2.0), (1e5, 1.5), (1e6, 1.25), (1e7, 1.12), (1e8, "")]  # the last: an unfinished run
    path = _write_csv(tmp_path / "runs.csv", ("params", "loss"), rows)
    assert cli.main(["fit", "--csv", path, "--form", "power", "--x", "params", "--y", "loss", "--bootstrap", "0",
                     "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 rows" in captured.err and json.loads(captured.out)["n_points"] == 5
