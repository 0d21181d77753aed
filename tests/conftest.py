"""Test setup: 8 fake CPU devices, set before jax is imported anywhere, and one compilation cache per test session
(many tests compile the same small model; the cache lives in a temporary directory removed at exit)."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
_cache = tempfile.mkdtemp(prefix="omnimouse-test-jax-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
