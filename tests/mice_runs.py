"""The digital mice and the `test`-size run settings that most training, evaluation, fault and multi-process tests
start from (conftest.py builds the store and the run once per test session)."""
from pathlib import Path

TRIAL_LENGTH = 90  # samples per trial of write_mice's store
RUN_CONFIG = "experiments/configs/omnimouse.py:size=test"
# Quiet runs: a log line per step, no periodic validation or tensorboard, synchronous saves, one reader thread.
QUIET_RUN = {"train.log_every_steps": "1", "train.eval_every_steps": "0", "train.tensorboard": "False",
             "checkpoint.use_async": "False", "data.num_threads": "1"}


def write_mice(root: Path) -> Path:
    """2 digital mice (24 and 40 neurons): 6 train trials of TRIAL_LENGTH samples each, one oracle video shown twice
    and 2 test trials."""
    from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice

    write_digital_mice(root, DigitalMiceConfig(mice=2, neurons=(24, 40), trials=6, oracle_videos=1, oracle_repeats=2,
                                               test_trials=2, trial_length=TRIAL_LENGTH, seed=5), layout="store")
    return root


def six_step_config(store, **overrides):
    """6 steps with a checkpoint every 3, quiet, on `store`; then `overrides` (config key -> value)."""
    from omnimouse_jax.config import load_config

    values = {"data.root": str(store), "train.steps": "6", "checkpoint.every_steps": "3", **QUIET_RUN}
    values.update({k: str(v) for k, v in overrides.items()})
    return load_config(RUN_CONFIG, list(values.items()))
