"""A small session written straight through SessionWriter, for store-level tests."""
import numpy as np

from omnimouse_jax.data.store import SessionWriter


def write_session(root, name, *, n_neurons=6, lengths=(90, 70, 80), tiers=("train", "train", "oracle"), seed=0):
    """Writes one session of integral uint8 video and float32 data; returns the list of trial dicts written."""
    rng = np.random.default_rng(seed)
    trials = []
    with SessionWriter(root, name, animal=name.split("-")[0], n_neurons=n_neurons, frame_shape=(4, 6),
                       behavior_channels=["pupil_dilation", "running_speed"]) as writer:
        for t, tier in zip(lengths, tiers):
            trial = {"responses": rng.gamma(2.0, 1.0, (t, n_neurons)).astype(np.float32),
                     "video": rng.integers(0, 256, (t, 4, 6), dtype=np.uint8),
                     "behavior": rng.normal(0, 1, (t, 2)).astype(np.float32),
                     "pupil_center": rng.normal(0, 1, (t, 2)).astype(np.float32), "tier": tier}
            writer.add_trial(**trial)
            trials.append(trial)
    return trials
