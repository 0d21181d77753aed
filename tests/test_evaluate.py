"""`omnimouse evaluate`: one evaluation of a briefly trained `test` model on digital mice, checked against numpy
recomputations from its saved predictions and the store; the parquet layout; the one-line errors."""
import json
import re

import numpy as np
import pytest

from mice_runs import TRIAL_LENGTH
from omnimouse_jax.data import pipeline
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.store import open_store
from omnimouse_jax.errors import UserError
from omnimouse_jax.evaluate import regimes as R
from omnimouse_jax.evaluate import report
from omnimouse_jax.model import masking

T, MAX_NEURONS, TRIAL = 60, 32, TRIAL_LENGTH
SAVED = ("causal_response_25", "all_response_only", "video_behavior")


@pytest.fixture(scope="module")
def workdir(six_step_run):
    return six_step_run


@pytest.fixture(scope="module")
def result(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate_out")
    # The CNN baseline is left out here (its compiles cost more than the rest); tests/test_baselines.py trains it.
    options = R.EvalOptions(train_batches=6, num_threads=1)
    return R.evaluate_workdir(workdir, out=out / "eval.json", baselines=("mean", "persistence", "ridge", "ln"),
                              baseline_workdirs={"twin": str(workdir)}, options=options, save_predictions=SAVED,
                              sensorium_submission=out / "submission.parquet"), out


def test_json_has_the_contract_keys_and_every_valid_preset(result):
    res, out = result
    assert json.loads((out / "eval.json").read_text()) == res
    assert {"workdir", "step", "split", "store", "regimes", "table", "columns"} <= set(res)
    assert res["step"] == 6 and res["split"] == "test"
    valid = masking.presets_for(MAX_NEURONS, T)
    assert list(res["regimes"]) == res["presets"] == valid
    # The test model's 32-neuron budget rules out the 64- and 1024-neuron population presets, and says so.
    assert sorted(res["presets_skipped"]) == sorted(set(masking.EVAL_PRESETS) - set(valid))
    assert "population_64_response" in res["presets_skipped"] and "max_neurons=32" in res["preset_selection"]
    for preset, entry in res["regimes"].items():
        assert {"model", "baselines", "ceiling", "fraction_of_ceiling"} <= set(entry)
        assert {"mean", "persistence", "twin"} <= set(entry["baselines"])
        assert ("ridge" in entry["baselines"]) == (not preset.startswith("video_"))
        assert ("ln" in entry["baselines"]) == R.Baselines.applicable("ln", preset)
    assert res["columns"] == {c: list(v) for c, v in R.PAPER_COLUMNS.items()}
    assert res["columns"]["Neural prediction"] == ["video_behavior", "response/correlation_pooled"]
    assert list(res["table"]["Forecast"]) == ["model", "twin", "mean", "persistence", "ridge", "ln", "ceiling"]
    assert res["table"]["Neural prediction"]["ln"] == res["regimes"]["video_behavior"]["baselines"]["ln"][
        "response/correlation_pooled"]
    assert res["table"]["Population"]["model"] is None
    md = (out / "eval.md").read_text()
    assert "| model |" in md and "Neural prediction" in md and "population_64_response" in md


def test_input_ablation_in_every_regime_that_shows_the_input(result):
    res, out = result
    assert res["evaluation"]["ablation"] is True
    ablated = {p: R.ablated_inputs(p) for p in res["presets"] if R.ablated_inputs(p)}
    # The presets with response targets that show video or encode behavior, e.g. both in video_behavior.
    assert ablated["video_behavior"] == ["video", "behavior"] and ablated["video_only"] == ["video"]
    assert ablated["causal_response_25_behavior"] == ["behavior"] and "causal_response_25" not in ablated
    assert "all_response_video" not in ablated  # no response targets
    for preset, entry in res["regimes"].items():
        assert ("ablation" in entry) == (preset in ablated), preset
        if preset not in ablated:
            continue
        ablation = entry["ablation"]
        assert ablation["excluded"] == 0 and ablation["examples"] > 0
        intact = ablation["intact"]["response/correlation"]
        # Every example has a donor, so the intact column is the regime's model score.
        assert intact == pytest.approx(entry["model"]["response/correlation"], abs=1e-9)
        assert set(ablation) == {"metric", "examples", "excluded", "intact", *ablated[preset]}
        for name in ablated[preset]:
            assert ablation[name]["drop"] == pytest.approx(intact - ablation[name]["response/correlation"])
    assert res["ablation"]["unused"] == R.unused_inputs(res["regimes"])
    assert res["ablation"]["min_drop"] == R.ABLATION_MIN_DROP
    md = (out / "eval.md").read_text()
    assert "## Input ablation" in md and "| video_behavior |" in md.split("## Input ablation")[1]
    for name, regimes in res["ablation"]["unused"].items():
        assert (f"WARNING: the model does not use the {name} in regimes {', '.join(regimes)} " in md) == bool(regimes)


def test_cli_budget_defaults_are_eval_options_and_the_help_states_them(monkeypatch, tmp_path, capsys):
    from omnimouse_jax.cli import main

    seen = []
    monkeypatch.setattr(R, "evaluate_workdir", lambda *args, options, **kwargs: seen.append(options) or {})
    monkeypatch.setattr(report, "paper_markdown", lambda result: "")
    monkeypatch.setattr(report, "ablation_warnings", lambda result: [])
    for argv in ([], ["--train-batches", "7", "--cnn-steps", "9"]):
        main(["evaluate", "--workdir", str(tmp_path), "--out", str(tmp_path / "eval.json"), *argv])
    assert seen[0] == R.EvalOptions()
    assert (seen[1].train_batches, seen[1].cnn_steps) == (7, 9)
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"fit on (default: {R.EvalOptions.train_batches})" in text
    assert f"CNN baseline (default: {R.EvalOptions.cnn_steps})" in text


def test_no_ablation_flag(workdir, tmp_path):
    from omnimouse_jax.cli import main

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--workdir", str(workdir), "--regimes", "video_only", "--baselines", "none",
                 "--max-batches", "1", "--no-ablation", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["evaluation"]["ablation"] is False and "ablation" not in res
    assert "ablation" not in res["regimes"]["video_only"]
    assert "Input ablation" not in out.with_suffix(".md").read_text()


def test_out_into_a_directory_not_made_yet(workdir, tmp_path):
    from omnimouse_jax.cli import main

    out = tmp_path / "new" / "deeper" / "eval.json"
    assert main(["evaluate", "--workdir", str(workdir), "--regimes", "video_only", "--baselines", "none",
                 "--max-batches", "1", "--no-ablation", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["regimes"]["video_only"]["model"]["response/n_elements"] > 0


def test_default_output_is_keyed_by_split_so_the_test_results_stay(workdir):
    """Without --out, the test split writes eval.json (what sweeps collect) and any other split eval_<split>.json."""
    from omnimouse_jax.cli import main

    sentinel = '{"kept": true}'
    (workdir / "eval.json").write_text(sentinel)
    assert main(["evaluate", "--workdir", str(workdir), "--split", "train", "--regimes", "video_only",
                 "--baselines", "none", "--max-batches", "1", "--no-ablation"]) == 0
    assert (workdir / "eval.json").read_text() == sentinel
    assert json.loads((workdir / "eval_train.json").read_text())["split"] == "train"
    assert (workdir / "eval_train.md").exists()


def test_digital_mice_report_the_planted_parameters_of_the_evaluated_checkpoint(result, workdir, mice_store):
    from omnimouse_jax.evaluate.planted import PARAMETERS, planted_recovery
    from omnimouse_jax.train.restore import load_trained

    res, out = result
    trained = load_trained(workdir, step=res["step"])
    expected = planted_recovery(np.asarray(trained.model.identity.neuron_table[...]), trained.layout,
                                mice_store / "ground_truth")
    assert set(res["planted_r2"]) == set(trained.layout.names)
    for session, r2 in res["planted_r2"].items():
        assert list(r2) == list(PARAMETERS)
        np.testing.assert_allclose([r2[k] for k in PARAMETERS], [expected[session][k] for k in PARAMETERS])
        assert all(v <= 1.0 for v in r2.values())
    assert "## Planted neuron parameters" in (out / "eval.md").read_text()


def test_table_gaze_and_fractions_follow_the_regime_metrics(result):
    res, _ = result
    for column, (preset, key) in R.PAPER_COLUMNS.items():
        entry = res["regimes"].get(preset)
        if entry is not None:
            assert res["table"][column]["model"] == entry["model"].get(key)
            assert res["table"][column]["mean"] == entry["baselines"]["mean"].get(key)
    behavior = res["regimes"]["all_response_only"]["model"]
    assert behavior[R.GAZE_KEY] == pytest.approx(
        (behavior["behavior/pupil_x/correlation"] + behavior["behavior/pupil_y/correlation"]) / 2, abs=1e-12)
    entry = res["regimes"]["video_behavior"]
    corr = R.PAPER_COLUMNS["Neural prediction"][1]
    assert entry["fraction_of_ceiling"][corr] == pytest.approx(entry["model"][corr] / entry["ceiling"][corr])
    assert res["fraction_table"]["Neural prediction"]["model"] == pytest.approx(entry["fraction_of_ceiling"][corr])
    # The twin is the same checkpoint loaded again: its scores are the model's.
    for preset, entry in res["regimes"].items():
        for key, value in entry["model"].items():
            assert entry["baselines"]["twin"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (preset, key)


def test_ceiling_beats_the_mean_baseline(result):
    res, _ = result
    scored = [p for p, e in res["regimes"].items() if "response/correlation" in e["ceiling"]]
    assert len(scored) == len(res["regimes"]) - 2  # all but the two behavior-decoding regimes
    for preset in scored:
        truth, mean = res["regimes"][preset]["ceiling"], res["regimes"][preset]["baselines"]["mean"]
        assert mean["response/correlation"] == 0.0  # a constant per neuron correlates with nothing
        assert truth["response/correlation"] > 0.2
        assert truth["response/poisson_nll"] < mean["response/poisson_nll"]


def _pearson_by_group(groups, x, y):
    """Per group, Pearson's r (0 for a constant x; None for a constant y), as np.corrcoef computes it."""
    out = {}
    for g in np.unique(groups):
        xs, ys = x[groups == g].astype(np.float64), y[groups == g].astype(np.float64)
        if len(ys) < 2 or np.ptp(ys) == 0:
            out[int(g)] = None
        else:
            out[int(g)] = 0.0 if np.ptp(xs) == 0 else np.corrcoef(xs, ys)[0, 1]
    return out


def test_metrics_recomputed_from_saved_predictions(result, mice_store):
    res, out = result
    saved = np.load(out / "predictions" / "causal_response_25.npz")
    model = res["regimes"]["causal_response_25"]["model"]
    # Windows step by 30: every sample after the first 30 of each test trial is scored exactly once, per neuron.
    keys = np.stack([saved["response_row"], saved["response_trial"], saved["response_position"]], axis=1)
    assert len(np.unique(keys, axis=0)) == len(keys) == model["response/n_elements"]
    layout = SessionLayout.from_store(open_store(mice_store))
    assert len(keys) == sum(layout.n_neurons) * 2 * (TRIAL - 30)
    assert saved["response_position"].min() == 30 and saved["response_position"].max() == TRIAL - 1
    corr = [c for c in _pearson_by_group(saved["response_row"], saved["rate"], saved["response"]).values()
            if c is not None]
    assert np.mean(corr) == pytest.approx(model["response/correlation"], abs=1e-6)
    # Every neuron scored equally often: each session's pooled value is its neurons' mean (an undefined one as 0),
    # and weighting the sessions by their neurons makes it the sum over all neurons over their number.
    assert np.sum(corr) / sum(layout.n_neurons) == pytest.approx(model["response/correlation_pooled"], abs=1e-6)
    late = saved["response_position"] >= 50
    corr = [c for c in _pearson_by_group(saved["response_row"][late], saved["rate"][late],
                                         saved["response"][late]).values() if c is not None]
    assert np.mean(corr) == pytest.approx(model["sensorium/correlation"], abs=1e-6)
    rates = np.maximum(saved["rate"].astype(np.float64), 1e-8)
    nll = -np.mean(saved["response"] * np.log(rates) - saved["rate"])
    assert nll == pytest.approx(model["response/poisson_nll"], abs=1e-6)

    saved = np.load(out / "predictions" / "all_response_only.npz")
    model = res["regimes"]["all_response_only"]["model"]
    for c, name in enumerate(saved["behavior_channels"]):
        pick = saved["behavior_channel"] == c
        per_session = _pearson_by_group(saved["behavior_session"][pick], saved["behavior_predicted"][pick],
                                        saved["behavior_actual"][pick])
        defined = {k: v for k, v in per_session.items() if v is not None}
        # Sessions weighted by their number of neurons, as the official overall metric weighs them.
        weights = [layout.n_neurons[k] for k in defined]
        assert np.average(list(defined.values()), weights=weights) == pytest.approx(
            model[f"behavior/{name}/correlation"], abs=1e-6)


def _floored_std(session):
    """Each neuron's train-tier std, floored at RESPONSE_STD_FLOOR times the session's mean std: what the pipeline
    divides responses by."""
    std = session.stats["responses"]["std"].astype(np.float64)
    return np.maximum(std, pipeline.RESPONSE_STD_FLOOR * std.mean())


def test_sensorium_submission_layout_and_values(result, mice_store):
    import pyarrow.parquet as pq

    res, out = result
    table = pq.read_table(out / "submission.parquet")
    assert table.column_names == ["mouse", "trial_indices", "prediction", "neuron_ids"]
    data = table.to_pylist()
    assert res["sensorium_submission"]["trials"] == len(data) == 4  # 2 mice x 2 test trials
    s = open_store(mice_store)
    layout = SessionLayout.from_store(s)
    saved = np.load(out / "predictions" / "video_behavior.npz")
    for row in data:
        session = s.session(row["mouse"])
        trials = session.trials
        assert trials["tier"][trials["source_index"] == row["trial_indices"]][0] == "final_test_main"
        prediction = np.asarray(row["prediction"])
        assert prediction.shape == (session.n_neurons, TRIAL - 50)  # neurons x frames after the first 50
        assert row["neuron_ids"] == session.neurons["unit_ids"].tolist()
        # The same predictions, saved in the batch's units, times each neuron's train-tier std (floored as the
        # pipeline floors it), in the source's units.
        k = layout.session_index(row["mouse"])
        pick = ((saved["response_trial"] == row["trial_indices"]) & (saved["response_position"] >= 50)
                & (saved["response_row"] >= layout.row_offsets[k])
                & (saved["response_row"] < layout.row_offsets[k] + session.n_neurons))
        local = saved["response_row"][pick] - layout.row_offsets[k]
        expected = saved["rate"][pick] * _floored_std(session)[local]
        assert pick.sum() == prediction.size
        np.testing.assert_allclose(prediction[local, saved["response_position"][pick] - 50], expected, rtol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--regimes", "nope"], r"--regimes: \['nope'\] not a regime; expected 'all', 'paper' or names from video_beh"),
    (["--regimes", "population_64_response"], r"do not fit this model .*max_neurons=32"),
    (["--split", "test_bonus"], r"--split 'test_bonus': no trials .*splits with trials: .*test"),
    (["--baselines", "svm"], r"--baselines: \['svm'\] unknown; expected names from mean, persistence, ridge, cnn, ln"),
])
def test_bad_regime_and_split_are_one_line_errors(workdir, argv, message, capsys):
    import re

    from omnimouse_jax.cli import main

    assert main(["evaluate", "--workdir", str(workdir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err


def test_workdir_without_checkpoint_is_a_one_line_error(tmp_path, capsys):
    from omnimouse_jax.cli import main

    assert main(["evaluate", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoints/ directory; train first" in err


def test_where_baselines_apply():
    assert R.Baselines.applicable("cnn", "video_behavior") and R.Baselines.applicable("cnn", "causal_response_25_video")
    assert not R.Baselines.applicable("cnn", "causal_response_25")  # no video to read
    assert not R.Baselines.applicable("cnn", "all_response_video")  # no response targets
    assert R.Baselines.applicable("ridge", "population_64_response")
    assert R.Baselines.applicable("ridge", "all_response_only")
    assert not R.Baselines.applicable("ridge", "video_only")  # no visible responses
    assert R.Baselines.applicable("ln", "video_only") and R.Baselines.applicable("ln", "causal_response_25_video")
    assert not R.Baselines.applicable("ln", "causal_response_25")  # no video to read
    assert not R.Baselines.applicable("ln", "all_response_video")  # no response targets
    assert all(R.Baselines.applicable("mean", p) for p in masking.EVAL_PRESETS)


def test_select_regimes_paper_set_for_the_tiny_budget():
    presets, skipped = R.select_regimes("paper", max_neurons=256, num_samples=T)
    assert presets == ["causal_response_25", "causal_response_25_video", "population_64_response",
                       "population_64_response_video", "all_response_only", "video_behavior"]
    assert skipped == {}
    assert R.eval_stride(presets, T) == 30
    presets, skipped = R.select_regimes("paper", max_neurons=MAX_NEURONS, num_samples=T)
    assert sorted(skipped) == ["population_64_response", "population_64_response_video"]
    assert "population_64_response" not in presets and "video_behavior" in presets


def test_eval_windows_carry_true_rates_scaled_like_responses(mice_store):
    s = open_store(mice_store)
    layout = SessionLayout.from_store(s)
    windows = pipeline.EvalWindows(s, layout, block=T, max_neurons=MAX_NEURONS, global_batch=4, seed=0,
                                   tier="test", stride=30, extra_fields=("true_rates",))
    batch = windows(len(windows) - 1)
    for i in np.flatnonzero(batch["example_mask"]):
        k = int(batch["session_index"][i])
        session = s.session(layout.names[k])
        n = int(batch["neuron_mask"][i].sum())
        local = batch["neuron_index"][i, :n] - layout.row_offsets[k]
        offset = int(batch["trial_offset"][i])
        trial = session.trial(int(batch["trial_index"][i]))
        std = _floored_std(session)[local]
        np.testing.assert_allclose(batch["true_rates"][i, :, :n] * std,
                                   trial["true_rates"][offset:offset + T][:, local], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch["responses"][i, :, :n] * std,
                                   trial["responses"][offset:offset + T][:, local], rtol=1e-5, atol=1e-6)
        assert not batch["true_rates"][i, :, n:].any()
    subset = list(pipeline.eval_dataset(windows, num_threads=1, batches=[2, 0]))
    for got, index in zip(subset, [2, 0], strict=True):
        np.testing.assert_array_equal(got["window_start"], windows(index)["window_start"])
        np.testing.assert_array_equal(got["true_rates"], windows(index)["true_rates"])
    with pytest.raises(UserError, match="no per-neuron extra field 'nope'"):
        pipeline.EvalWindows(s, layout, block=T, max_neurons=MAX_NEURONS, global_batch=4, seed=0, tier="test",
                             extra_fields=("nope",))


def test_progress_line_extrapolates_the_batches_after_the_first():
    # 4 of 10 batches: the 3 after the first took 6 s, so 6 more take 12 s.
    assert R.progress_line(4, 10, elapsed_s=26.0, since_first_s=6.0) == "  4/10 batches, 26 s elapsed, about 12 s left"
    assert R.progress_line(10, 10, elapsed_s=40.0, since_first_s=18.0).endswith("about 0 s left")


def test_evaluation_reports_its_first_and_last_batch(workdir):
    lines = []
    R.evaluate_workdir(workdir, regimes="video_only", baselines=(),
                       options=R.EvalOptions(max_batches=3, ablation=False), log=lines.append)
    from omnimouse_jax.train.checkpoint import Checkpointer

    newest = Checkpointer(workdir / "checkpoints", use_async=False).latest_step()
    assert f"scoring the checkpoint of step {newest} ({workdir / 'checkpoints' / str(newest)})" in lines
    k = int(next(re.search(r" on (\d+) of \d+ batches", line) for line in lines if line.startswith("evaluating"))[1])
    progress = [line for line in lines if re.match(r"  \d+/\d+ batches", line)]
    assert re.fullmatch(rf"  1/{k} batches in \d+ s \(compiling included\)", progress[0])
    assert k > 1, "the fixture's test split must span several batches for this test"
    assert re.fullmatch(rf"  {k}/{k} batches, \d+ s elapsed, about 0 s left", progress[-1])


class _ElementwisePredictor:
    """A stand-in model whose rates are a fixed function of each element's response and position, so that any
    batching of the same samples scores the same: the per-tier scores of one call can be checked against calls that
    evaluate each tier alone."""

    def __init__(self, T):
        self.T = T

    def device_batch(self, host):
        return host

    def dispatch(self, batch, preset):
        return batch, preset

    def fetch(self, result):
        batch, preset = result
        masks = masking.make_masks(masking.strategy_arrays(masking.PRESETS[preset]), batch["neuron_mask"], self.T)
        position = np.asarray(batch["trial_offset"])[:, None, None] + np.arange(self.T)[None, :, None]
        rates = np.asarray(batch["responses"], np.float64) ** 2 + np.sin(position)
        behavior = np.zeros(np.asarray(batch["behavior"]).shape)
        return {"rates": rates, "behavior": behavior}, masking.Masks(*map(np.asarray, masks))


def test_a_split_of_several_tiers_keeps_each_tiers_scores(tmp_path):
    from sensorium_fixtures import make_session

    folder, _ = make_session(tmp_path / "src", tiers=("train", "final_test", "final_test_1", "final_test_2"),
                             lengths=(70, 64, 90, 75), nan_responses=())
    from omnimouse_jax import cli

    assert cli.main(["data", "import-sensorium", str(folder), "--out", str(tmp_path / "store")]) == 0
    store = open_store(tmp_path / "store")
    layout = SessionLayout.from_store(store)
    T = 60

    def score(split):
        windows = pipeline.EvalWindows(store, layout, block=T, max_neurons=16, global_batch=4, seed=0, tier=split)
        fitted = R.Baselines([], store, layout, block=T, max_neurons=16, seed=0, options=R.EvalOptions(),
                             log=lambda m: None)
        return R._score(["video_only"], windows, range(len(windows)), _ElementwisePredictor(T), {}, fitted, False,
                        store, split, R.EvalOptions(), recorders={}, submission=None, output_dir=tmp_path,
                        log=lambda m: None)["video_only"]

    together = score("final_test")
    entry = R._regime_entry(together)
    present = {str(t) for name in layout.names for t in store.session(name).trials["tier"]}
    assert set(entry["model_by_tier"]) == present & set(pipeline.tier_names("final_test"))
    assert len(entry["model_by_tier"]) >= 3
    for tier, scores in entry["model_by_tier"].items():
        if tier == "final_test":  # as a split name it means all four tiers: its share is checked by the sum below
            continue
        alone = score(tier)["model"]
        assert scores["response/correlation"] == pytest.approx(alone["response/correlation"], rel=1e-9)
        assert scores["response/n_elements"] == alone["response/n_elements"] > 0
        assert scores["behavior/r2"] == pytest.approx(alone["behavior/r2"], rel=1e-9)
    assert entry["model"]["response/n_elements"] == sum(s["response/n_elements"]
                                                        for s in entry["model_by_tier"].values())
    from omnimouse_jax.evaluate.report import markdown

    result = {"table": {"Neural prediction": {"model": 0.5}}, "columns": {"Neural prediction": "video_only"},
              "split": "final_test", "step": 1, "workdir": "w", "regimes": {"video_only": entry},
              "presets_skipped": [], "store": "s",
              "evaluation": {"batches": 1, "total_batches": 1, "batch_size": 4, "window_stride": 60,
                             "train_batches": 0}}
    section = markdown(result).split("## The model per tier of split 'final_test'")[1]
    row = next(line for line in section.splitlines() if line.startswith("| video_only |"))
    tiers = sorted(entry["model_by_tier"])
    assert row == "| video_only | response/correlation | " + " | ".join(
        f"{entry['model_by_tier'][t]['response/correlation']:.3f}" for t in tiers) + " |"


def test_planted_names_a_store_that_is_not_there(workdir, tmp_path, capsys):
    from omnimouse_jax.cli import main

    moved = tmp_path / "moved-store"
    assert main(["planted", "--workdir", str(workdir), "--store", str(moved)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"omnimouse: error: {moved}: no session store there (--store); pass the store the run was trained on with "
        "--store"]
