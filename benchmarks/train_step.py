"""Benchmark: one training step of a config size on this machine's devices, as JSON.

    python benchmarks/train_step.py --size tiny [--batch 8] [--neurons 128] [--attention auto] [--remat none]
        [--device-microbatch 0] [--steps 10] [--mesh data=-1,fsdp=1,tensor=1] [--set model.factor_readout=8 ...]

Random inputs of the step's shapes (every neuron real, strategies drawn from the training mix), the real model and
optimizer, allocated and sharded as `omnimouse train` does. Reports the median step time after the first
`--warmup` steps, neural tokens/s (neurons x samples x examples per second), MFU (the model's FLOPs per device,
from the step lowered with dense attention and no remat, over one device's measured matmul peak), XLA's compile-only
peak bytes per device and, where the backend reports it, the device's own peak bytes in use.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnimouse_jax.config import load_config
from omnimouse_jax.parallel import sharding
from omnimouse_jax.train import perf
from omnimouse_jax.train.optim import make_optimizer
from omnimouse_jax.train.session import (abstract_batch, check_batch_divides_mesh,
                                         compile_train_step, create_model_and_optimizer, microbatches_of, model_flops,
                                         stacked_fields, training_mix)

CONFIG = "experiments/configs/omnimouse.py"


def config_for(args):
    overrides = [("data.root", "/nonexistent"), ("model.attention", args.attention), ("model.remat", args.remat),
                 ("train.device_microbatch", str(args.device_microbatch)), ("model.max_neurons", str(args.neurons))]
    if args.batch:
        overrides.append(("train.batch_size", str(args.batch)))
    for item in filter(None, args.mesh.split(",")):
        axis, _, size = item.partition("=")
        overrides.append((f"mesh.{axis}", size))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, a config key as `omnimouse train --config.KEY`")
        overrides.append((key, value))
    if args.neurons < 64:
        raise SystemExit("--neurons: at least 64 (the paper's regimes need 64 visible neurons)")
    config = load_config(f"{CONFIG}:size={args.size}", overrides)
    counts = tuple(int(c) for c in config.masking.neuron_counts if c < args.neurons) or (args.neurons // 2,)
    config.masking.neuron_counts = counts
    config.masking.max_reconstructed = min(int(config.masking.max_reconstructed), args.neurons)
    return config


def random_inputs(config, batch_sharding, seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = abstract_batch(config, batch_sharding)
    rows = int(config.model.num_neuron_rows)
    host = {}
    for name, shape in shapes.items():
        if name == "neuron_index":
            host[name] = rng.integers(0, rows, shape.shape).astype(np.int32)
        elif shape.dtype == jnp.bool_:
            host[name] = np.ones(shape.shape, bool)
        elif shape.dtype == jnp.uint8:
            host[name] = rng.integers(0, 256, shape.shape).astype(np.uint8)
        elif shape.dtype == jnp.int32:
            host[name] = np.zeros(shape.shape, np.int32)
        else:
            host[name] = rng.gamma(1.0, 1.0, shape.shape).astype(np.float32)
    strategies, weights = training_mix(config)
    drawn = rng.choice(len(strategies), size=int(config.train.batch_size), p=weights)
    fields = stacked_fields([strategies[i] for i in drawn])
    put = lambda x: jax.device_put(x, batch_sharding)  # noqa: E731
    return {k: put(v) for k, v in host.items()}, {k: put(v) for k, v in fields.items()}


def run(args) -> dict:
    config = config_for(args)
    mesh = sharding.make_mesh(config.mesh)
    check_batch_divides_mesh(config, mesh)
    tx, _ = make_optimizer(config.optim, int(config.train.steps))
    with sharding.use_rules(mesh):  # born sharded, as TrainingSession creates them
        graphdef, state = nnx.split(nnx.jit(lambda: create_model_and_optimizer(config, tx))())
    batch_sharding = sharding.batch_sharding(mesh)
    batch, fields = random_inputs(config, batch_sharding)
    start = time.perf_counter()
    step = compile_train_step(graphdef, state, batch, fields, mesh, config.model, microbatches_of(config, mesh))
    compile_s = time.perf_counter() - start
    memory = step.memory_analysis()
    flops = model_flops(config, mesh)
    peak = perf.measure_matmul_peak(jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32)
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch, fields)
        losses.append(float(metrics["loss"]))  # waits for the step
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[args.warmup:]))
    tokens = int(config.train.batch_size) * int(config.model.max_neurons) * int(config.model.num_samples)
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "size": args.size, "overrides": args.set, "backend": jax.default_backend(), "devices": mesh.size,
        "mesh": dict(mesh.shape),
        "global_batch": int(config.train.batch_size), "neurons": int(config.model.max_neurons),
        "attention": args.attention, "remat": args.remat,
        "device_microbatch": args.device_microbatch, "passes": microbatches_of(config, mesh),
        "dtype": config.model.dtype, "compile_s": round(compile_s, 2), "steps_timed": args.steps,
        "step_s_median": round(step_s, 4), "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens / step_s, 1),
        "model_flops_per_device": flops, "matmul_peak_flops": peak,
        "mfu": None if flops is None else round(flops / step_s / peak, 4),
        "compile_peak_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                  - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        "host_peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "losses_finite": bool(np.all(np.isfinite(losses))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=0, help="global batch (default: the config's)")
    parser.add_argument("--neurons", type=int, default=128, help="neurons per example")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--device-microbatch", type=int, default=0, help="examples per device per pass (0: all)")
    parser.add_argument("--mesh", default="", help="e.g. data=1,fsdp=8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, repeatable (e.g. model.factor_readout=8)")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
