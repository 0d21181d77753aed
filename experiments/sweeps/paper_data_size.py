"""The paper's data-size x model-size sweep, for a cluster: nested shares of the data at each model size.

    omnimouse sweep --config experiments/sweeps/paper_data_size.py --workdir S --config.data.root=STORE \\
        --launcher slurm            # or tpu; then run S/launch/submit_slurm.sh
    omnimouse figures --sweep S --out S/figures

Argument (all optional): `sizes=1M+5M+20M,fractions=0.125+0.25+0.5+1.0,steps=200000,split=final_test`. `split`: the
tier set each run is scored on (final_test: the OmniMouse corpus's four held-out tiers; `split=test` for Sensorium
2023 stores). A share is the first part of every session's train trials (config.data.fraction), so each smaller data
set is contained in the larger ones.
"""
from pathlib import Path

from omnimouse_jax.scaling.sweep import parse_sweep_arg

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "omnimouse.py")


def get_sweep(arg: str = "") -> dict:
    opts = parse_sweep_arg(arg, sizes=("1M", "5M", "20M"), fractions=(0.125, 0.25, 0.5, 1.0), steps=200_000,
                           split="final_test")
    runs = [{"name": f"{size}-f{fraction:g}", "size": size, "config": f"{CONFIG}:size={size}",
             "overrides": {"data.fraction": fraction}}
            for size in opts["sizes"] for fraction in opts["fractions"]]
    return {
        "name": "paper_data_size",
        "evaluate": True,
        "evaluate_split": opts["split"],
        "overrides": {"data.root": "data/store", "train.steps": opts["steps"],
                      "train.eval_every_steps": opts["steps"] // 20},
        "runs": runs,
    }
