"""`omnimouse data synth`: its command-line arguments and their checks; omnimouse_jax.data.synthetic does the work."""
from __future__ import annotations

import time
from pathlib import Path

from omnimouse_jax.data import synthetic
from omnimouse_jax.errors import UserError


def add_arguments(parser) -> None:
    """`omnimouse data synth OUT ...`"""
    defaults = synthetic.DigitalMiceConfig()
    parser.add_argument("out", metavar="OUT", help="output folder (a session store, or a folder of Sensorium folders)")
    parser.add_argument("--mice", type=int, default=None,
                        help="number of mice (default: as many as --neurons lists, else 3)")
    parser.add_argument("--neurons", default=None,
                        help="neurons per mouse: one int, or a comma list with one per mouse (default: 128, 192, ...)")
    parser.add_argument("--trials", type=int, default=defaults.trials, help="train trials per mouse")
    parser.add_argument("--oracle-videos", type=int, default=defaults.oracle_videos, help="oracle clips per mouse")
    parser.add_argument("--oracle-repeats", type=int, default=defaults.oracle_repeats,
                        help="repeats of each oracle clip")
    parser.add_argument("--test-trials", type=int, default=defaults.test_trials,
                        help="final_test_main trials per mouse")
    parser.add_argument("--trial-length", type=int, default=defaults.trial_length, help="samples per trial (30 Hz)")
    parser.add_argument("--complex-fraction", type=float, default=defaults.complex_fraction,
                        help="share of complex (phase-invariant) cells")
    parser.add_argument("--behavior-gain", type=float, default=defaults.behavior_gain,
                        help="scale of the neurons' behavior gains (0: responses ignore behavior)")
    parser.add_argument("--latent-gain", type=float, default=defaults.latent_gain,
                        help="scale of the shared latent state's loadings")
    parser.add_argument("--events-per-sample", type=float, default=defaults.events_per_sample,
                        help="median events per sample at the mean rate (higher: less Poisson noise)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="everything derives from this seed")
    parser.add_argument("--layout", choices=synthetic.LAYOUTS, default="store",
                        help="a session store, or Sensorium 2023 folders")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty OUT")


def _config_from_args(args) -> synthetic.DigitalMiceConfig:
    neurons = None
    if args.neurons is not None:
        try:
            neurons = tuple(int(part) for part in args.neurons.split(","))
        except ValueError:
            raise UserError(f"--neurons: expected an integer or a comma list of integers, "
                            f"got {args.neurons!r}") from None
    mice = args.mice if args.mice is not None else (len(neurons) if neurons and len(neurons) > 1 else 3)
    checks = {"--mice": (mice, 1), "--trials": (args.trials, 1), "--oracle-videos": (args.oracle_videos, 0),
              "--oracle-repeats": (args.oracle_repeats, 1), "--test-trials": (args.test_trials, 0),
              "--trial-length": (args.trial_length, synthetic.TEMPORAL_KERNEL_FRAMES)}
    for flag, (value, least) in checks.items():
        if value < least:
            raise UserError(f"{flag}: expected an integer >= {least}, got {value}")
    if neurons is not None:
        if min(neurons) < 1:
            raise UserError(f"--neurons: expected positive counts, got {args.neurons!r}")
        if len(neurons) not in (1, mice):
            raise UserError(f"--neurons: expected one count or {mice} (one per mouse), got {len(neurons)}")
        neurons = neurons[0] if len(neurons) == 1 else neurons
    return synthetic.DigitalMiceConfig(mice=mice, neurons=neurons, trials=args.trials, oracle_videos=args.oracle_videos,
                                       oracle_repeats=args.oracle_repeats, test_trials=args.test_trials,
                                       trial_length=args.trial_length, complex_fraction=args.complex_fraction,
                                       behavior_gain=args.behavior_gain, latent_gain=args.latent_gain,
                                       events_per_sample=args.events_per_sample, seed=args.seed)


def run(args) -> int:
    """Writes the digital mice and prints what was written."""
    config = _config_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"OUT {out}: exists and is not empty; pass --overwrite to replace sessions of the same name")
    start = time.perf_counter()
    names = synthetic.write_digital_mice(out, config, layout=args.layout)
    seconds = time.perf_counter() - start
    per_mouse_samples = config.trials_per_mouse() * config.trial_length
    for name, n in zip(names, config.neuron_counts()):
        print(f"{name}: {n} neurons, {config.trials_per_mouse()} trials")
    tokens = per_mouse_samples * sum(config.neuron_counts())
    hours = len(names) * per_mouse_samples / config.sampling_rate / 3600
    print(f"wrote {len(names)} sessions ({args.layout} layout) to {out}: {sum(config.neuron_counts())} neurons, "
          f"{len(names) * config.trials_per_mouse()} trials, {hours:.3f} hours, {tokens:,} neural tokens "
          f"in {seconds:.1f} s")
    return 0
