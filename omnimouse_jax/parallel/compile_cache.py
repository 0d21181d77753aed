"""The persistent compilation cache, and values derived from compiling that are worth keeping beside it.

A run keeps the cache in its workdir: a restarted (preempted) training run or a repeated evaluation reloads its
compiled functions instead of compiling them again. Counting a training step's FLOPs (train/session.model_flops)
traces the whole model a second time, which costs as much as tracing the step itself; `remembered` keeps such a
value under the cache directory, keyed by what determines it."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Callable

import jax

from omnimouse_jax.files import write_json_atomic


def use_workdir_cache(workdir: Path) -> None:
    """Caches compiles that take a second or more under workdir/compile_cache, unless a cache is already set (by the
    user's JAX_COMPILATION_CACHE_DIR, or a test session sharing one cache across its runs). A multi-process run whose
    processes compute different cache keys has the cache turned off when it joins (parallel.distributed.initialize)."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(workdir) / "compile_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@functools.cache
def package_fingerprint() -> str:
    """A hash of this package's Python source: a value derived from compiling its code (a FLOP count) is only as
    good as the code it was derived from, and a cache directory outlives code changes."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def remembered(kind: str, key: dict, compute: Callable[[], float | None]) -> float | None:
    """compute(), read back from the compilation cache directory when a value for `key` (JSON-serializable, with
    the JAX version and the package's source fingerprint added) was stored there before; computed and stored
    otherwise. Without a cache directory, or when the stored file is unreadable, it is simply computed."""
    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        return compute()
    text = json.dumps({"key": key, "jax": jax.__version__, "code": package_fingerprint()}, sort_keys=True,
                      default=str)
    path = Path(directory) / "omnimouse" / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    try:
        write_json_atomic(path, {"value": value})
    except OSError:  # a read-only or full cache directory costs a recount next time, nothing else
        pass
    return value
