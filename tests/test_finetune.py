"""Fine-tuning: frozen core and pretrained rows in stage 1, trained core in stage 2, a loadable workdir, resume across
the stage boundary, the index map of a sub-layout, and bad inputs."""
import numpy as np
import pytest
from flax import nnx

from mice_runs import QUIET_RUN
from omnimouse_jax.cli import main
from omnimouse_jax.config import load_config, load_config_file
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice
from omnimouse_jax.errors import UserError
from omnimouse_jax.evaluate.finetune_scores import score_sessions
from omnimouse_jax.train.finetune import SubLayout, finetune
from omnimouse_jax.train.restore import load_trained
from omnimouse_jax.train.trainer import train



@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(store with 3 digital mice, workdir of a `test` model pretrained on the first 2, the 3rd mouse's name, the
    first mouse's name)."""
    root = tmp_path_factory.mktemp("finetune")
    store = root / "store"
    names = write_digital_mice(store, DigitalMiceConfig(mice=3, neurons=(24, 40, 32), trials=6, oracle_videos=1,
                                                        oracle_repeats=2, test_trials=2, trial_length=90, seed=3))
    overrides = {"data.root": str(store), "train.steps": 2, "checkpoint.every_steps": 2, **QUIET_RUN}
    config = load_config("experiments/configs/omnimouse.py:size=test", [(k, str(v)) for k, v in overrides.items()])
    with config.ignore_type():
        config.data.sessions = tuple(names[:2])
    train(config, root / "pretrained")
    return store, root / "pretrained", names[2], names[0]


def _settings(stage1=2, stage2=2):
    settings = load_config_file("experiments/configs/finetune.py")
    settings.stage1.update(steps=stage1, warmup_steps=1)
    settings.stage2.update(steps=stage2, warmup_steps=1)
    settings.checkpoint.every_steps = 2  # a checkpoint at the end of each stage
    settings.train.update(log_every_steps=1, tensorboard=False)
    settings.checkpoint.use_async = False
    settings.data.num_threads = 1
    return settings


def _params(trained):
    return nnx.to_pure_dict(nnx.state(trained.model, nnx.Param))


def _core(params):
    return {k: v for k, v in params.items() if k != "identity"}


def _equal(a, b) -> bool:
    import jax

    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    store, source, new, _ = pretrained
    workdir = tmp_path_factory.mktemp("finetuned") / "w2"
    finetune(source, store, [new], workdir, _settings())
    return workdir


def test_stage1_trains_only_the_new_rows_and_stage2_the_core(pretrained, finetuned):
    _, source, new, _ = pretrained
    before = _params(load_trained(source))
    stage1, stage2 = load_trained(finetuned, step=2), load_trained(finetuned)
    assert stage2.step == 4 and stage2.layout.names[2] == new and stage2.layout.num_sessions == 3
    after1, after2 = _params(stage1), _params(stage2)
    assert _equal(_core(after1), _core(before))  # bit-identical core after stage 1
    assert _equal(after1["identity"]["project"], before["identity"]["project"])
    old_rows = 24 + 40
    for params in (after1, after2):
        table = np.asarray(params["identity"]["neuron_table"])
        assert table.shape == (old_rows + 32, 16)
        np.testing.assert_array_equal(table[:old_rows], before["identity"]["neuron_table"])  # pretrained rows kept
        np.testing.assert_array_equal(params["identity"]["session_table"][:2], before["identity"]["session_table"])
    assert not _equal(_core(after2), _core(after1))  # stage 2 moved the core
    assert not _equal(after2["identity"]["project"], after1["identity"]["project"])


def test_new_rows_move_from_their_initial_values(pretrained, finetuned):
    """Stage 1 moved every new row away from its initial value: zero for biases; for embeddings the first draw of
    the fine-tune seed's params stream, which identity.grow spends on the neuron table, with the first 5 columns
    then set to the new mouse's behavior tuning (the `test` size's neuron_embed_init), from its own training
    trials."""
    from omnimouse_jax.data import pipeline
    from omnimouse_jax.data.store import open_store

    store, _, new, _ = pretrained
    stage1 = load_trained(finetuned, step=2)
    bias = np.asarray(stage1.model.identity.neuron_bias[...])
    assert np.all(bias[64:] != 0)
    start = np.array(nnx.initializers.normal(16 ** -0.5)(nnx.Rngs(stage1.config.seed).params(), (32, 16)))
    cfg = stage1.config
    windows = pipeline.TrainWindows(open_store(store), SessionLayout.from_store(open_store(store), [new]),
                                    block=cfg.model.num_samples, max_neurons=cfg.model.max_neurons,
                                    global_batch=cfg.train.batch_size, seed=cfg.seed)
    stats = windows.neuron_statistics(pipeline.TUNING_TRIALS)[new]
    tuning = stats["behavior_tuning"]
    # The population decoder's offsets start at the new neurons' mean responses, two small steps ago.
    offsets = np.asarray(stage1.model.identity.neuron_offset[...])[64:]
    assert np.abs(offsets - stats["mean"]).max() < 0.01 and np.abs(stats["mean"]).min() > 0.05
    c = tuning.shape[1]
    start[:, :c] = tuning / np.sqrt((tuning**2).mean(0))
    table = np.asarray(stage1.model.identity.neuron_table[...])[64:]
    assert np.all(np.any(table != start, axis=1))
    assert np.abs(table - start).max() < 0.01  # by two steps of about the rate 3e-3 from that start


def test_resume_at_the_stage_boundary_matches_an_uninterrupted_run(pretrained, finetuned, tmp_path):
    store, source, new, _ = pretrained
    split = tmp_path / "split"
    finetune(source, store, [new], split, _settings(stage1=2, stage2=0))  # stops after stage 1
    finetune(source, store, [new], split, _settings())  # resumes at step 2 into stage 2
    a, b = load_trained(finetuned), load_trained(split)
    assert a.step == b.step == 4
    import jax

    for x, y in zip(jax.tree.leaves(_params(a)), jax.tree.leaves(_params(b))):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)


def test_scores_of_the_new_session(pretrained, finetuned):
    result = score_sessions(finetuned)
    assert result["sessions"] == [pretrained[2]] and result["step"] == 4
    assert result["response/n_neurons"] <= 32 and -1 <= result["response/correlation"] <= 1
    assert 0 < result["ceiling"]["response/correlation"] <= 1


def test_sub_layout_maps_indices_to_the_full_layout():
    full = SessionLayout(("a", "b"), ("m1", "m2"), (3, 5)).extend(SessionLayout(("c", "d"), ("m3", "m1"), (4, 2)))
    view = SubLayout.of(full, ["c", "d"])
    assert view.sub.row_offsets == (0, 4) and view.sub.animal_names == ("m3", "m1")
    batch = {"session_index": np.array([1, 0], np.int32), "animal_index": np.array([1, 0], np.int32),
             "neuron_index": np.array([[5, 4, 0], [3, 0, 2]], np.int32),  # sub rows: c 0-3, d 4-5
             "neuron_mask": np.array([[True, True, False], [True, True, True]])}
    out = view.apply(batch)
    # full rows: a 0-2, b 3-7, c 8-11, d 12-13; sessions a b c d = 0 1 2 3; animals m1 m2 m3 = 0 1 2
    np.testing.assert_array_equal(out["neuron_index"], [[13, 12, 0], [11, 8, 10]])
    np.testing.assert_array_equal(out["session_index"], [3, 2])
    np.testing.assert_array_equal(out["animal_index"], [0, 2])
    with pytest.raises(UserError, match=r"\['e'\]"):
        SubLayout.of(full, ["e"])


def test_bad_inputs_name_what_is_wrong(pretrained, tmp_path, capsys):
    store, source, new, old = pretrained

    def cli(*args):
        code = main(["finetune", "--data", str(store), "--workdir", str(tmp_path / "w"), *args])
        return code, capsys.readouterr().err

    code, err = cli("--from", str(tmp_path / "empty"), "--sessions", new)
    assert code == 2 and f"--from {tmp_path / 'empty'}: no checkpoint" in err
    assert not (tmp_path / "empty").exists()
    code, err = cli("--from", str(source), "--sessions", f"{new},{old}")
    assert code == 2 and f"['{old}'] already in the model" in err
    code, err = cli("--from", str(source), "--sessions", "nosuchmouse")
    assert code == 2 and "['nosuchmouse'] not in store" in err
    code, err = cli("--from", str(source), "--sessions", new, "--config.stage1.steps=0", "--config.stage2.steps=0")
    assert code == 2 and "stage1.steps + stage2.steps = 0" in err
    assert not (tmp_path / "w").exists()
