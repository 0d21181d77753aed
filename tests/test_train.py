"""Training: exact resume, logs, sharded runs, divergence and signals."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mice_runs import RUN_CONFIG, six_step_config
from omnimouse_jax.train.trainer import train





def _losses(workdir):
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "split" not in r}


def test_a_relative_store_path_is_saved_absolute_and_another_model_is_refused_before_compiling(
        mice_store, tmp_path, monkeypatch):
    config = six_step_config(mice_store.name, **{"train.steps": 1, "checkpoint.every_steps": 1})
    other = six_step_config(mice_store, **{"train.steps": 2, "model.d_neuron_embed": 8, "model.num_layers": 3,
                              "model.attention": "blockwise"})  # the kernel may change between runs
    monkeypatch.chdir(mice_store.parent)
    train(config, tmp_path / "w")
    saved = json.loads((tmp_path / "w" / "config.json").read_text())["data"]["root"]
    assert saved == str(mice_store.absolute())
    from omnimouse_jax.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path / "w" / "checkpoints", use_async=False)
    _, meta = checkpointer.read_meta()
    checkpointer.close()
    assert meta["config"]["data"]["root"] == str(mice_store.absolute())

    from omnimouse_jax.errors import UserError
    from omnimouse_jax.train import session

    monkeypatch.setattr(session, "compile_train_step", lambda *a, **k: pytest.fail("compiled before the check"))
    with pytest.raises(UserError, match=r"holds a run of another model \(model.d_neuron_embed: checkpoint 16, now 8; "
                                        r"model.num_layers: checkpoint 2, now 3\)"):
        train(other, tmp_path / "w")


def test_resumed_run_matches_an_uninterrupted_one(mice_store, six_step_run, tmp_path):
    whole, split = six_step_run, tmp_path / "split"
    train(six_step_config(mice_store, **{"train.steps": 3}), split)  # stops at the step-3 checkpoint
    train(six_step_config(mice_store), split)  # resumes from it
    a, b = _losses(whole), _losses(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-6)
    records = [json.loads(line) for line in open(whole / "metrics.jsonl")]
    # 64 rows x (16-d embedding + readout bias + decoder offset + 5 receptive-field parameters + the factorized
    # video readout's map over 3 x 4 cells, 16 channel weights and lag), 2 session and 2 animal embeddings
    assert records[0]["step"] == 0 and records[0]["params_core"] > 0
    assert records[0]["params_embedding"] == 64 * (16 + 1 + 1 + 5 + 12 + 16 + 1) + 2 * 16 * 2
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records[1:])
    assert sorted(os.listdir(whole / "checkpoints")) == ["3", "6"]

    from omnimouse_jax.model.omnimouse import count_parameters
    from omnimouse_jax.train.restore import load_trained

    trained = load_trained(whole)
    assert trained.step == 6 and trained.config.train.steps == 6 and len(trained.layout.names) == 2
    assert count_parameters(trained.model)["total"] == records[0]["params_total"]
    first = load_trained(whole, step=3)
    assert not np.allclose(first.model.response_head.kernel[...], trained.model.response_head.kernel[...])


def test_fresh_run_starts_embeddings_at_each_neurons_behavior_tuning(mice_store, tmp_path):
    """neuron_embed_init="behavior_tuning" (the test size's): after one step (lr <= 3e-3), each session's rows start
    at the pipeline's behavior tuning scaled to unit RMS per channel over the session's neurons; the rest of each row
    at the random init."""
    from omnimouse_jax.data import pipeline
    from omnimouse_jax.data.layout import SessionLayout
    from omnimouse_jax.data.store import open_store
    from omnimouse_jax.train.restore import load_trained

    config = six_step_config(mice_store, **{"train.steps": 1, "checkpoint.every_steps": 1})
    train(config, tmp_path / "run")
    trained = load_trained(tmp_path / "run")
    table = np.asarray(trained.model.identity.neuron_table[...])
    layout = SessionLayout.from_store(open_store(mice_store), "all")
    windows = pipeline.TrainWindows(open_store(mice_store), layout, block=config.model.num_samples,
                                    max_neurons=config.model.max_neurons, global_batch=config.train.batch_size,
                                    seed=config.seed)
    c = len(pipeline.BEHAVIOR_CHANNELS)
    for k, (name, stats) in enumerate(windows.neuron_statistics(pipeline.TUNING_TRIALS).items()):
        rows = slice(layout.row_offsets[k], layout.row_offsets[k] + layout.n_neurons[k])
        tuning = stats["behavior_tuning"]
        expected = tuning / np.sqrt((tuning**2).mean(0))
        np.testing.assert_allclose(table[rows, :c], expected, atol=0.01)
        random = table[rows, c:]  # N(0, d_embed^-0.5) as in the paper's code, moved by one step of about 3e-3
        assert abs(random.std() / table.shape[1] ** -0.5 - 1) < 0.2 and abs(random.mean()) < 0.05


def test_training_mix_choices(mice_store):
    from omnimouse_jax.errors import UserError
    from omnimouse_jax.train.session import training_mix

    strategies, probs = training_mix(six_step_config(mice_store, **{"masking.mix": "video_behavior,all_response_only"}))
    assert len(strategies) == 2 and np.allclose(probs, 0.5)
    assert len(training_mix(six_step_config(mice_store))[0]) > 20
    with pytest.raises(UserError, match="config.masking.mix='nope'"):
        training_mix(six_step_config(mice_store, **{"masking.mix": "nope"}))


def test_stimulus_share_moves_that_probability_to_the_stimulus_presets(mice_store):
    """share s over k presets: each gets s / k on top of its paper-mix share, every paper strategy (1 - s) / M, for
    the M strategies of the uniform paper mix."""
    from omnimouse_jax.errors import UserError
    from omnimouse_jax.model import masking
    from omnimouse_jax.train.session import training_mix

    paper, paper_probs = training_mix(six_step_config(mice_store))
    m = len(paper)
    np.testing.assert_allclose(paper_probs, np.full(m, 1 / m))
    for presets, each in (("video_only,video_behavior", 0.2), ("video_behavior", 0.4)):
        strategies, probs = training_mix(six_step_config(
            mice_store, **{"masking.stimulus_share": 0.4, "masking.stimulus_presets": presets}))
        assert strategies[:m] == paper and len(strategies) == m + len(presets.split(","))
        np.testing.assert_allclose(probs[:m], np.full(m, 0.6 / m))
        for name in presets.split(","):
            total = sum(p for s, p in zip(strategies, probs) if s == masking.PRESETS[name])
            np.testing.assert_allclose(total, each + 0.6 / m)
    with pytest.raises(UserError, match=r"stimulus_share=1.0: expected a probability in \[0, 1\)"):
        training_mix(six_step_config(mice_store, **{"masking.stimulus_share": 1.0}))
    with pytest.raises(UserError, match="applies to mix='paper' only"):
        training_mix(six_step_config(mice_store, **{"masking.stimulus_share": 0.2, "masking.mix": "video_only"}))
    with pytest.raises(UserError, match=r"config.masking.stimulus_presets='video': \['video'\] not a preset"):
        training_mix(six_step_config(mice_store, **{"masking.stimulus_share": 0.2, "masking.stimulus_presets": "video"}))


def test_fsdp_and_tensor_parallel_mesh_matches_pure_data_parallel(mice_store, six_step_run, tmp_path):
    """data x fsdp x tensor = 2 x 2 x 2 over the 8 fake devices computes the losses of a pure data-parallel mesh (the
    shared run's: the test config's mesh is data over every device, and its constant learning rate makes the first
    3 steps of a 6-step run those of a 3-step one)."""
    assert json.loads((six_step_run / "config.json").read_text())["mesh"] == {"data": -1, "fsdp": 1, "tensor": 1}
    sharded = {"train.steps": 3, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
    train(six_step_config(mice_store, **sharded), tmp_path / "sharded")
    a, b = _losses(six_step_run), _losses(tmp_path / "sharded")
    np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], rtol=2e-4)


def test_micro_batched_steps_match_one_pass_over_the_batch(mice_store, tmp_path):
    """train.device_microbatch=1 splits each step's 16 examples (2 per device) into 2 passes of 8 (one per device)
    and adds their gradients: the losses, and so the updates they follow from, equal one pass over the batch."""
    overrides = {"train.steps": 3, "train.batch_size": 16, "model.attention": "xla"}
    train(six_step_config(mice_store, **overrides), tmp_path / "one")
    train(six_step_config(mice_store, **{**overrides, "train.device_microbatch": 1, "model.attention": "blockwise",
                            "model.remat": "block"}), tmp_path / "two")
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], rtol=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(mice_store, tmp_path):
    config = six_step_config(mice_store, **{"optim.lr": 1e30, "optim.warmup_steps": 0, "checkpoint.every_steps": 1})
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 2.*last good checkpoint is step 1"):
        train(config, tmp_path / "w")
    assert os.listdir(tmp_path / "w" / "checkpoints") == ["1"]


def test_bad_mesh_and_batch_are_named(mice_store, tmp_path):
    from omnimouse_jax.errors import UserError

    with pytest.raises(UserError, match="config.mesh"):
        train(six_step_config(mice_store, **{"mesh.data": 3}), tmp_path / "a")
    with pytest.raises(UserError, match="config.train.batch_size=4"):
        train(six_step_config(mice_store, **{"train.batch_size": 4, "mesh.data": 8}), tmp_path / "b")
    with pytest.raises(UserError, match=r"config.train.device_microbatch=3: expected 0 \(no split\) or a divisor "
                                        r"of the 2 examples each device gets of config.train.batch_size=16"):
        train(six_step_config(mice_store, **{"train.device_microbatch": 3, "train.batch_size": 16}), tmp_path / "c")


def _train_process(store, workdir, **overrides):
    settings = {"data.root": store, "train.steps": 100000, "checkpoint.every_steps": 100000,
                "train.log_every_steps": 1, "train.tensorboard": False, **overrides}
    cmd = [sys.executable, "-m", "omnimouse_jax.cli", "train", "--config", RUN_CONFIG, "--workdir", str(workdir),
           *[f"--config.{k}={v}" for k, v in settings.items()]]
    import jax

    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}  # reuse this session's
    # SIGINT ignored as a shell ignores it for a background job (and exec keeps it ignored): the command must still
    # honour it. A shell does it rather than preexec_fn, which runs Python in a forked copy of a threaded process.
    return subprocess.Popen(["bash", "-c", "trap '' INT; exec \"$@\"", "bash", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_sigterm_during_training_saves_a_checkpoint_and_exits_143(mice_store, tmp_path):
    workdir = tmp_path / "w"
    proc = _train_process(mice_store, workdir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (workdir / "metrics.jsonl").exists() or len(
            (workdir / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by signal" in err and "interrupted by SIGTERM" in err
    assert "compiling the train step ..." in err and "compiled in" in err
    steps = [int(s) for s in os.listdir(workdir / "checkpoints")]
    assert len(steps) == 1 and steps[0] >= 2 and steps[0] == max(_losses(workdir))


def test_sigint_before_the_first_step_stops_at_once_with_exit_130(mice_store, tmp_path):
    """Ctrl-C while the command imports, opens the store or compiles: no step is run, nothing is saved."""
    workdir = tmp_path / "w"
    proc = _train_process(mice_store, workdir)
    time.sleep(3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 30
    assert "interrupted by SIGINT" in err
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
    assert not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text().strip()
