"""Fuzzed store metadata: truncated or bit-flipped manifests, catalogs, array metadata and tables give a clear
UserError (or, for a flip that leaves the bytes' meaning intact, the original data), never a hang or wrong data."""
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimouse_jax.data.store import open_store
from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice
from omnimouse_jax.errors import UserError

TARGETS = ("catalog.json", "{s}/manifest.json", "{s}/responses/zarr.json", "{s}/video/zarr.json",
           "{s}/trials.npz", "{s}/stats.npz", "{s}/neurons.npz")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_store")
    write_digital_mice(root, DigitalMiceConfig(mice=1, neurons=8, trials=2, oracle_videos=1, oracle_repeats=2,
                                               test_trials=1, trial_length=40, frame_shape=(8, 8), seed=1))
    store = open_store(root)
    name = store.sessions[0]
    session = store.session(name)
    reference = {i: session.trial(int(i)) for i in session.trials["source_index"]}
    return root, name, reference


def _read_everything(root, name):
    session = open_store(root).session(name)
    return {i: session.trial(int(i)) for i in session.trials["source_index"]}


@settings(max_examples=60, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(TARGETS), mode=st.sampled_from(["truncate", "flip"]), position=st.floats(0, 1),
       bit=st.integers(0, 7))
def test_damaged_metadata_is_an_error_or_harmless(pristine, tmp_path_factory, target, mode, position, bit):
    root, name, reference = pristine
    copy = tmp_path_factory.mktemp("damaged") / "store"
    shutil.copytree(root, copy)
    path = copy / target.format(s=name)
    data = bytearray(path.read_bytes())
    cut = min(int(position * len(data)), len(data) - 1)
    if mode == "truncate":
        data = data[:cut]
    else:
        data[cut] ^= 1 << bit
    path.write_bytes(bytes(data))
    try:
        got = _read_everything(copy, name)
    except UserError as err:
        assert str(err)  # a clear one-line message
        return
    for i, trial in reference.items():  # accepted only if the data read back is exactly the original
        for key in ("responses", "video", "behavior", "pupil_center"):
            np.testing.assert_array_equal(got[i][key], trial[key])
