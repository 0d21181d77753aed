"""Benchmark: each attention implementation's forward and backward pass at one shape, against XLA's dense attention
in float32 (values and gradients), as JSON lines.

    python benchmarks/attention_kernels.py [--batch 8] [--queries 640] [--keys 8193] [--heads 4] [--head-dim 64]

Defaults are one 5M decoder call (640 queries over 8192 tokens and the sink, a third of the keys masked). Kernels
the backend lacks (cudnn off GPU, splash off TPU) are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from omnimouse_jax.model import kernels

IMPLEMENTATIONS = {
    "xla": lambda q, k, v, valid: jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :]),
    "blockwise": lambda q, k, v, valid: kernels.blockwise_attention(q, k, v, valid),
    "cudnn": kernels.cudnn_attention,
    "splash": kernels.splash_attention,
}
BACKEND = {"cudnn": "gpu", "splash": "tpu"}


def inputs(args, dtype):
    rng = np.random.default_rng(0)
    shape = lambda n: (args.batch, n, args.heads, args.head_dim)  # noqa: E731
    q, k, v = (jnp.asarray(rng.normal(size=shape(n)), dtype) for n in (args.queries, args.keys, args.keys))
    valid = rng.random((args.batch, args.keys)) < 2 / 3
    valid[:, -1] = True  # the sink
    return q, k, v, jnp.asarray(valid)


def loss_and_grads(attention):
    def loss(q, k, v, valid, cotangent):
        return (attention(q, k, v, valid).astype(jnp.float32) * cotangent).sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def run(args) -> list[dict]:
    q32, k32, v32, valid = inputs(args, jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q32.shape), jnp.float32)
    _, reference = loss_and_grads(IMPLEMENTATIONS["xla"])(q32, k32, v32, valid, cotangent)
    dtype = jnp.dtype(args.dtype)
    q, k, v = (x.astype(dtype) for x in (q32, k32, v32))
    rows = []
    for name, attention in IMPLEMENTATIONS.items():
        row = {"implementation": name, "backend": jax.default_backend(), "dtype": args.dtype,
               "shape_BxQxSxHxK": [args.batch, args.queries, args.keys, args.heads, args.head_dim]}
        if BACKEND.get(name, jax.default_backend()) != jax.default_backend():
            rows.append({**row, "skipped": f"needs {BACKEND[name]}"})
            continue
        step = loss_and_grads(attention)
        try:
            _, grads = step(q, k, v, valid, cotangent)
            jax.block_until_ready(grads)
        except Exception as error:  # a kernel that refuses these inputs is a result, not a crash of the benchmark
            rows.append({**row, "error": f"{type(error).__name__}: {str(error)[:300]}"})
            continue
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(step(q, k, v, valid, cotangent))
            times.append(time.perf_counter() - start)
        errors = [float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)) / float(jnp.max(jnp.abs(r))))
                  for g, r in zip(grads, reference)]
        rows.append({**row, "fwd_bwd_s_median": round(float(np.median(times)), 6),
                     "max_rel_grad_error_qkv": [round(e, 5) for e in errors]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--queries", type=int, default=640)
    parser.add_argument("--keys", type=int, default=8193)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    for row in run(parser.parse_args()):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
