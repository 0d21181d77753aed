"""`omnimouse train`: its command-line arguments and their checks; omnimouse_jax.train.trainer does the work."""
from __future__ import annotations


ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="config file[:arg], e.g. experiments/configs/omnimouse.py:size=tiny")
    parser.add_argument("--workdir", help="run directory: checkpoints, metrics.jsonl, tensorboard/ (required unless "
                                           "--compile-only)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile the train step for the config's mesh and print per-device memory and FLOPs; "
                             "allocates no parameters")
    group = parser.add_argument_group("multi-process runs (SLURM and Cloud TPU are detected without these)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    group.add_argument("--num-processes", type=int, metavar="P", help="number of processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 <= I < P")
    group.add_argument("--init-timeout", type=int, default=300, metavar="S",
                       help="seconds to wait for the coordinator and every process (default 300)")


def run(args) -> int:
    from omnimouse_jax.config import load_config
    from omnimouse_jax.errors import UserError, check_directory_target
    from omnimouse_jax.parallel import distributed
    from omnimouse_jax.train import trainer

    if args.compile_only:
        config = load_config(args.config, getattr(args, "config_overrides", []))
        trainer.print_plan(trainer.plan(config))
        return 0
    if not args.workdir:
        raise UserError("--workdir: required (the run directory), unless --compile-only")
    check_directory_target(args.workdir, "--workdir")
    group = distributed.detect(args.coordinator, args.num_processes, args.process_id)
    distributed.initialize(group, timeout_s=args.init_timeout)  # before anything touches a device
    config = load_config(args.config, getattr(args, "config_overrides", []))
    trainer.check_train_counts(config)
    distributed.check_same_config(config.to_json_best_effort(), timeout_s=args.init_timeout)
    trainer.train(config, args.workdir)
    return 0
