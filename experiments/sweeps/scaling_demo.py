"""The CPU scaling demo: 3 model sizes x 3 data sizes on digital mice, 2 seeds at the smallest size (12 runs).

    omnimouse data synth STORE
    omnimouse sweep --config experiments/sweeps/scaling_demo.py --workdir S --config.data.root=STORE --processes 2
    omnimouse figures --sweep S --out S/figures

Argument (all optional): `steps=60,fractions=0.025+0.075+1.0,seeds=2`, e.g. `scaling_demo.py:steps=200`.

Model sizes scale the `tiny` config's width and depth; data sizes are nested shares of every session's train trials
(config.data.fraction: with the demo's 40 train trials per mouse, 1, 3 and 40 trials), so D/N varies across the grid
(the chinchilla form needs that to tell A from B). Every run trains for the same number of steps, so small shares are
repeated for many epochs (about 40 at 1 trial per mouse and 60 steps): that is what makes loss fall with data. The
default of 60 steps is the CPU budget of `omnimouse demo` (the 12 runs took 778 s of the demo's 891 s on a quiet
2-core CPU, as measured in the README); validation runs once, at the last step.
"""
from pathlib import Path

from omnimouse_jax.scaling.sweep import parse_sweep_arg

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "omnimouse.py") + ":size=tiny"
# label: model overrides on top of `tiny`; the largest is `tiny` itself, whose regimes table the demo reports
SIZES = {
    "d16": {"model.d_model": 16, "model.num_layers": 1, "model.num_heads": 2},
    "d32": {"model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2},
    "d64": {"model.d_model": 64, "model.num_layers": 2, "model.num_heads": 4},  # `tiny` itself
}


def get_sweep(arg: str = "") -> dict:
    opts = parse_sweep_arg(arg, steps=60, fractions=(0.025, 0.075, 1.0), seeds=2)
    steps = opts["steps"]
    runs = []
    for k, (size, model) in enumerate(SIZES.items()):
        for fraction in opts["fractions"]:
            for seed in range(opts["seeds"] if k == 0 else 1):
                runs.append({"name": f"{size}-f{fraction:g}-s{seed}", "size": size, "config": CONFIG,
                             "overrides": {**model, "seed": seed, "data.fraction": fraction}})
    return {
        "name": "scaling_demo",
        "evaluate": True,
        # CPU-sized evaluation of the paper's regimes; baselines and the input ablation are run once, for the largest
        # run, by the demo.
        "evaluate_args": ["--regimes", "paper", "--max-batches", "4", "--baselines", "none", "--no-ablation"],
        "overrides": {"data.root": "data/store", "train.steps": steps, "train.eval_every_steps": steps,
                      "checkpoint.every_steps": steps, "train.log_every_steps": max(steps // 10, 1),
                      "optim.warmup_steps": max(steps // 6, 1)},
        "runs": runs,
    }
