"""Data efficiency of fine-tuning on digital mice: a model pretrained on 3 mice, fine-tuned to a held-out 4th mouse
with 5%, 20% and 100% of its training trials, against the same model size trained from scratch on the same trials.

    python experiments/finetune_efficiency.py --out /tmp/finetune_efficiency [--pretrain-steps 300 ...]

Neural prediction is scored on the held-out mouse's test tier (responses from video and behavior, preset
video_behavior; mean single-trial correlation over its neurons), with the ground-truth rates' correlation as the
ceiling. Writes OUT/results.json, OUT/finetuning.md (the table) and OUT/finetuning.png (the figure); every run's
workdir stays under OUT. Budgets are in steps; the wall time of each phase is recorded in results.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FRACTIONS = (0.05, 0.2, 1.0)
QUIET = {"train.tensorboard": False, "train.eval_every_steps": 0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", default="tiny", help="model size (experiments/configs/omnimouse.py)")
    parser.add_argument("--neurons", type=int, default=96, help="neurons per digital mouse")
    parser.add_argument("--trials", type=int, default=40, help="train trials per mouse (10 s each)")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--stage1-steps", type=int, default=100)
    parser.add_argument("--stage2-steps", type=int, default=100)
    parser.add_argument("--scratch-steps", type=int, default=200,
                        help="steps of each from-scratch run (default: as many as both fine-tuning stages together)")
    parser.add_argument("--warmup-steps", type=int, default=30, help="warmup of pretraining and scratch runs")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax

    from omnimouse_jax.config import load_config, load_config_file
    from omnimouse_jax.files import write_json_atomic
    from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice
    from omnimouse_jax.evaluate.finetune_scores import score_sessions
    from omnimouse_jax.train.finetune import finetune
    from omnimouse_jax.train.trainer import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(out / "compile_cache"))  # runs of one shape compile once
    repo = Path(__file__).resolve().parents[1]
    store = out / "store"
    names = write_digital_mice(store, DigitalMiceConfig(mice=4, neurons=args.neurons, trials=args.trials, seed=11))
    pretrain_names, held_out = names[:3], names[3]
    timings, rows = {}, []

    def model_config(workdir_steps, sessions, fraction):
        config = load_config(f"{repo}/experiments/configs/omnimouse.py:size={args.size}", [
            (k, str(v)) for k, v in {**QUIET, "data.root": str(store), "train.steps": workdir_steps,
                                     "data.fraction": fraction, "optim.warmup_steps": args.warmup_steps,
                                     "checkpoint.every_steps": workdir_steps}.items()])
        with config.ignore_type():
            config.data.sessions = tuple(sessions)
        return config

    def timed(name, fn):
        start = time.monotonic()
        result = fn()
        timings[name] = round(time.monotonic() - start, 1)
        print(f"[{name}] {timings[name]} s", flush=True)
        return result

    pretrained = out / "pretrained"
    timed("pretrain", lambda: train(model_config(args.pretrain_steps, pretrain_names, 1.0), pretrained))
    settings = load_config_file(f"{repo}/experiments/configs/finetune.py")
    settings.stage1.update(steps=args.stage1_steps, warmup_steps=10)
    settings.stage2.update(steps=args.stage2_steps, warmup_steps=10)
    settings.checkpoint.every_steps = args.stage1_steps + args.stage2_steps
    settings.train.tensorboard = False

    for fraction in FRACTIONS:
        settings.data.fraction = fraction
        tuned, scratch = out / f"finetune_{fraction:g}", out / f"scratch_{fraction:g}"
        timed(f"finetune_{fraction:g}", lambda: finetune(pretrained, store, [held_out], tuned, settings))
        timed(f"scratch_{fraction:g}",
              lambda: train(model_config(args.scratch_steps, [held_out], fraction), scratch))
        a = timed(f"score_finetune_{fraction:g}", lambda: score_sessions(tuned, [held_out]))
        b = timed(f"score_scratch_{fraction:g}", lambda: score_sessions(scratch, [held_out]))
        rows.append({"fraction": fraction, "train_trials": max(1, round(fraction * args.trials)),
                     "finetune": a["response/correlation"], "scratch": b["response/correlation"],
                     "ceiling": a["ceiling"]["response/correlation"]})
        print(json.dumps(rows[-1]), flush=True)

    result = {"args": vars(args), "held_out": held_out, "pretrained_on": pretrain_names, "rows": rows,
              "timings_s": timings, "devices": jax.device_count(),
              "backend": jax.default_backend()}
    write_json_atomic(out / "results.json", result)
    (out / "finetuning.md").write_text(table(rows, args))
    figure(rows, out / "finetuning.png")
    print(table(rows, args))


def table(rows, args) -> str:
    lines = ["| share of train trials | trials | fine-tuned | from scratch | ceiling (true rates) |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['fraction']:.0%} | {r['train_trials']} | {r['finetune']:.3f} | {r['scratch']:.3f} | "
                     f"{r['ceiling']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [r["train_trials"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(trials, [r["finetune"] for r in rows], "o-", label="fine-tuned (pretrained on 3 mice)")
    ax.plot(trials, [r["scratch"] for r in rows], "s--", label="from scratch")
    ax.plot(trials, [r["ceiling"] for r in rows], ":", color="gray", label="ceiling (true rates)")
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's minor labels would overprint the trial counts
    ax.set_xticks(trials, [f"{t}\n({r['fraction']:.0%})" for t, r in zip(trials, rows)])
    ax.set_xlabel("training trials of the held-out mouse")
    ax.set_ylabel("neural prediction (test correlation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
