"""The paper's model-size sweep: 1M, 5M, 20M, 80M and 300M parameters on the full data, for a cluster.

    omnimouse sweep --config experiments/sweeps/paper_model_size.py --workdir S --config.data.root=STORE \\
        --launcher slurm            # or tpu; then run S/launch/submit_slurm.sh
    omnimouse figures --sweep S --out S/figures

Argument (all optional): `sizes=1M+5M+20M+80M+300M,steps=200000,seeds=1,split=final_test`. `split`: the tier set
each run is scored on (final_test: the OmniMouse corpus's four held-out tiers; `split=test` for Sensorium 2023
stores). The paper trains up to 1M steps; the default budget here is 200k steps per size (see docs/reproducing.md
for the device-hours).
"""
from pathlib import Path

from omnimouse_jax.scaling.sweep import parse_sweep_arg

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "omnimouse.py")


def get_sweep(arg: str = "") -> dict:
    opts = parse_sweep_arg(arg, sizes=("1M", "5M", "20M", "80M", "300M"), steps=200_000, seeds=1,
                           split="final_test")
    runs = [{"name": f"{size}-s{seed}", "size": size, "config": f"{CONFIG}:size={size}", "overrides": {"seed": seed}}
            for size in opts["sizes"] for seed in range(opts["seeds"])]
    return {
        "name": "paper_model_size",
        "evaluate": True,
        "evaluate_split": opts["split"],
        "overrides": {"data.root": "data/store", "train.steps": opts["steps"],
                      "train.eval_every_steps": opts["steps"] // 20},
        "runs": runs,
    }
