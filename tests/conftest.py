"""Test setup: 8 fake CPU devices, set before jax is imported anywhere; XLA's backend optimizations off, and one
persistent compilation cache that test sessions share (many tests compile the same small model, and most of a
session's compiles are those of the last session): ~/.cache/omnimouse-jax/test-compile-cache (under XDG_CACHE_HOME if
set), or the directory in OMNIMOUSE_TEST_JAX_CACHE (an empty one for a cold run). JAX keys every entry by the
computation, the compile options and its own version, so a changed model compiles anew; docs/testing.md measures
both cases.

Compiling dominates the suite, and most of a compile is LLVM optimizing the generated CPU code, which the tests' tiny
arrays do not need: at --xla_backend_optimization_level=0 the `test` model's training step compiles about 4x faster
(docs/testing.md). Subprocesses started by the tests inherit XLA_FLAGS, and with it this setting."""
import os
import shutil
from pathlib import Path

from device_flags import FAKE_DEVICES_FLAG

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0", FAKE_DEVICES_FLAG]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
# Subprocesses and pytest-xdist's workers inherit the environment, and with it the same cache.
_cache = os.environ.get("OMNIMOUSE_TEST_JAX_CACHE")
if not _cache:
    _home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    _cache = os.environ["OMNIMOUSE_TEST_JAX_CACHE"] = str(_home / "omnimouse-jax" / "test-compile-cache")
# Started afresh once it outgrows this size: JAX's own eviction (jax_compilation_cache_max_size) needs the filelock
# package and the same setting in every subprocess the tests start.
_CACHE_LIMIT_BYTES = 3 * 2**30
if sum(f.stat().st_size for f in Path(_cache).rglob("*") if f.is_file()) > _CACHE_LIMIT_BYTES:
    shutil.rmtree(_cache, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)



import pytest  # noqa: E402

from mice_runs import six_step_config, write_mice  # noqa: E402


@pytest.fixture(scope="session")
def mice_store(tmp_path_factory):
    """mice_runs.write_mice's store, built once per test session; tests read it and never write to it."""
    return write_mice(tmp_path_factory.mktemp("mice_store"))


@pytest.fixture(scope="session")
def six_step_run(mice_store, tmp_path_factory):
    """A workdir of `six_step_config(mice_store)` trained to its end, once per test session (training is mostly
    tracing, paid again by every run): checkpoints 3 and 6. Tests may add files (evaluation outputs) but never train
    it further."""
    from omnimouse_jax.train.trainer import train

    workdir = tmp_path_factory.mktemp("six_step_run")
    train(six_step_config(mice_store), workdir)
    return workdir
