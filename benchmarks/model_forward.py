"""Benchmark: tiny-size forward time on this machine and parameter counts of every size, as JSON.

    python benchmarks/model_forward.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from omnimouse_jax.model.masking import PRESETS, make_masks, strategy_arrays
from omnimouse_jax.model.omnimouse import OmniMouse, count_parameters

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "omnimouse.py"


def load_configs():
    spec = importlib.util.spec_from_file_location("omnimouse_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_forward_seconds(configs, repeats: int, batch: int = 8, neurons: int = 256) -> dict:
    cfg = configs.get_config("size=tiny").model
    rng = np.random.default_rng(0)
    t = cfg.num_samples
    data = dict(responses=rng.gamma(1.0, 1.0, (batch, t, neurons)).astype(np.float32),
                neuron_mask=np.ones((batch, neurons), bool),
                neuron_index=rng.integers(0, cfg.num_neuron_rows, (batch, neurons)).astype(np.int32),
                session_index=np.zeros(batch, np.int32), animal_index=np.zeros(batch, np.int32),
                video=rng.integers(0, 256, (batch, t, *cfg.frame_shape)).astype(np.uint8),
                behavior=rng.normal(size=(batch, t, cfg.behavior_channels)).astype(np.float32),
                behavior_mask=np.ones((batch, cfg.behavior_channels), bool))
    masks = make_masks(strategy_arrays(PRESETS["causal_response_10_video_behavior"]), data["neuron_mask"], t)
    gd, state = nnx.split(OmniMouse(cfg, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda state, data, masks: nnx.merge(gd, state)(data, masks))
    start = time.perf_counter()
    jax.block_until_ready(forward(state, data, masks))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(state, data, masks))
        times.append(time.perf_counter() - start)
    return {"batch": batch, "num_samples": t, "neurons": neurons, "frame_shape": list(cfg.frame_shape),
            "compile_s": round(compile_s, 3), "forward_s_median": round(float(np.median(times)), 4),
            "backend": jax.default_backend()}


def parameter_counts(configs) -> dict:
    out = {}
    for size in configs.SIZES:
        cfg = configs.get_config(f"size={size}").model
        counts = count_parameters(nnx.eval_shape(lambda: OmniMouse(cfg, rngs=nnx.Rngs(0))))
        if size in configs.PAPER_SIZES:
            nominal = float(size[:-1]) * 1e6
            counts["core_over_name"] = round(counts["core"] / nominal, 3)
            counts["backbone_over_name"] = round(counts["backbone"] / nominal, 3)
        out[size] = counts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    configs = load_configs()
    print(json.dumps({"tiny_forward": tiny_forward_seconds(configs, args.repeats),
                      "parameters": parameter_counts(configs)}, indent=2))


if __name__ == "__main__":
    main()
