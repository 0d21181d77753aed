"""`omnimouse finetune`: its command-line arguments and their checks; omnimouse_jax.train.finetune does the work."""
from __future__ import annotations

from omnimouse_jax.resources import shipped

ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="source", required=True, help="pretrained workdir (its newest checkpoint)")
    parser.add_argument("--data", required=True, help="session store holding the new sessions")
    parser.add_argument("--sessions", required=True, help="comma-separated names of the new sessions in --data")
    parser.add_argument("--workdir", required=True, help="fine-tuning run directory (resumed if it has a checkpoint)")
    parser.add_argument("--config", default=str(shipped("experiments/configs/finetune.py")),
                        help="finetune config file[:arg] with the stage settings (default: the repository's "
                             "experiments/configs/finetune.py)")


def run(args) -> int:
    from omnimouse_jax.config import load_config
    from omnimouse_jax.errors import check_directory_target
    from omnimouse_jax.train import finetune

    check_directory_target(args.workdir, "--workdir")
    settings = load_config(args.config, getattr(args, "config_overrides", []))
    names = [n.strip() for n in args.sessions.split(",") if n.strip()]
    finetune.finetune(args.source, args.data, names, args.workdir, settings)
    return 0
