"""The paper's data scaling by sessions (its Figure 7: "adding more sessions"), at every model size, for a cluster.

    omnimouse sweep --config experiments/sweeps/paper_data_sessions.py --workdir S --config.data.root=STORE \\
        --launcher slurm            # or tpu; then run S/launch/submit_slurm.sh
    omnimouse figures --sweep S --out S/figures      # metrics_vs_data: every regime's score against D per size

Argument (all optional): `sizes=1M+5M+20M+80M+300M,shares=0.125+0.25+0.5+1.0,steps=200000,split=final_test`.
`split`: the tier set each run is scored on (final_test: the OmniMouse corpus's four held-out tiers; `split=test`
for Sensorium 2023 stores). A share is a share of the store's sessions, every one of their train trials
(config.data.sessions = "share:F": the first sessions of a fixed order by name hash, so each smaller set is part of
the larger ones). Contrast paper_data_size.py, which keeps every session and shortens each.
"""
from pathlib import Path

from omnimouse_jax.scaling.sweep import parse_sweep_arg

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "omnimouse.py")


def get_sweep(arg: str = "") -> dict:
    opts = parse_sweep_arg(arg, sizes=("1M", "5M", "20M", "80M", "300M"), shares=(0.125, 0.25, 0.5, 1.0),
                           steps=200_000, split="final_test")
    runs = [{"name": f"{size}-sessions{share:g}", "size": size, "config": f"{CONFIG}:size={size}",
             "overrides": {"data.sessions": f"share:{share:g}"}}
            for size in opts["sizes"] for share in opts["shares"]]
    return {
        "name": "paper_data_sessions",
        "evaluate": True,
        "evaluate_split": opts["split"],
        "overrides": {"data.root": "data/store", "train.steps": opts["steps"],
                      "train.eval_every_steps": opts["steps"] // 20},
        "runs": runs,
    }
