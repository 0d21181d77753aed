"""`omnimouse evaluate`: its command-line arguments and their checks; omnimouse_jax.evaluate.report does the work."""
from __future__ import annotations

import sys
from pathlib import Path

from omnimouse_jax.errors import UserError, check_writable_file_target
from omnimouse_jax.evaluate import report
from omnimouse_jax.evaluate.options import EvalOptions


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="trained run directory (its newest checkpoint is evaluated)")
    parser.add_argument("--step", type=int, default=None, help="evaluate the checkpoint of this step instead")
    parser.add_argument("--regimes", default="all",
                        help="'all' (every preset the model's neuron budget allows), 'paper' (those of the paper's "
                             "table) or comma-separated preset names")
    parser.add_argument("--split", default="test",
                        help="test (default: tiers test, final_test_main, live_test_main), validation (validation, "
                             "oracle), oracle, train, test_bonus (final_test_bonus, live_test_bonus), final_test "
                             "(final_test, final_test_1..3), or a tier name")
    parser.add_argument("--out", default=None,
                        help="eval.json path (default: WORKDIR/eval.json for the test split, which sweeps collect, "
                             "else WORKDIR/eval_<split>.json); eval.md beside it")
    parser.add_argument("--store", default=None, help="session store (default: the one the model was trained on)")
    parser.add_argument("--baselines", default="mean,persistence,ridge,cnn,ln",
                        help="comma-separated from mean, persistence, ridge, cnn, ln; or 'none'")
    parser.add_argument("--baseline-workdirs", default="",
                        help="specialized models as NAME=WORKDIR,... (trained with --config.masking.mix=PRESET)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="evaluate at most this many batches, spread over the split (default: all)")
    parser.add_argument("--train-batches", type=int, default=EvalOptions.train_batches,
                        help="training batches the classical baselines are fit on (default: %(default)s)")
    parser.add_argument("--cnn-steps", type=int, default=EvalOptions.cnn_steps,
                        help="training steps of the CNN baseline (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluation batch (default: the training batch)")
    parser.add_argument("--save-predictions", default="",
                        help="comma-separated regimes whose scored predictions go to OUT_DIR/predictions/REGIME.npz")
    parser.add_argument("--sensorium-submission", default=None, metavar="FILE.parquet",
                        help="also write Sensorium 2023 predictions for the split's trials (frames after the first 50)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false",
                        help="skip the input ablation (the model rescored with its video and behavior shuffled "
                             "across windows: one extra forward per batch, regime and input)")


def _pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--baseline-workdirs: {item!r}: expected NAME=WORKDIR")
        pairs[name] = path
    return pairs


def run(args) -> int:
    from omnimouse_jax.evaluate.regimes import evaluate_workdir, regime_names

    for flag in ("max_batches", "train_batches", "cnn_steps", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value}: expected a positive number")
    baselines = [] if args.baselines.strip() == "none" else regime_names(args.baselines)
    options = EvalOptions(max_batches=args.max_batches, train_batches=args.train_batches, cnn_steps=args.cnn_steps,
                          batch_size=args.batch_size, ablation=args.ablation)
    out = Path(args.out) if args.out else Path(args.workdir) / report.default_out_name(args.split)
    check_writable_file_target(out, "--out")
    result = evaluate_workdir(
        args.workdir, regimes=args.regimes, split=args.split, baselines=baselines, out=out, step=args.step,
        store=args.store, baseline_workdirs=_pairs(args.baseline_workdirs), options=options,
        save_predictions=regime_names(args.save_predictions), sensorium_submission=args.sensorium_submission,
        log=lambda message: print(message, file=sys.stderr, flush=True))
    print(report.paper_markdown(result))
    for line in report.ablation_warnings(result):
        print(line)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0
