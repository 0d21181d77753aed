"""Performance accounting: FLOPs of a compiled step, the machine's measured matmul peak, and memory in use."""
from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (or lowered) function, from XLA's cost analysis (None if the backend gives
    none). A loop's body is counted once, whatever its trip count."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement cost analysis
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def measure_matmul_peak(dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square matmuls on one device: the denominator of MFU.

    The size is picked per platform so the measurement takes well under a second on a CPU and saturates a GPU."""
    n = 1024 if jax.default_backend() == "cpu" else 8192
    # Random operands, like real data: constant ones or zeros let a GPU clock higher and overstate its peak.
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def memory_in_use_mb() -> float:
    """Peak bytes in use on device 0 if the backend reports it, else the process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
