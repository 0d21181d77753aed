"""The persistent compilation cache a run keeps in its workdir: a restarted (preempted) training run or a repeated
evaluation reloads its compiled functions instead of compiling them again."""
from pathlib import Path

import jax


def use_workdir_cache(workdir: Path) -> None:
    """Caches compiles that take a second or more under workdir/compile_cache, unless a cache is already set (by the
    user's JAX_COMPILATION_CACHE_DIR, or a test session sharing one cache across its runs)."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(workdir) / "compile_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
