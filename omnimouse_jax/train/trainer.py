"""`omnimouse train`: pretrain an OmniMouse model from a config, sharded over a device mesh, resuming from the workdir.

    omnimouse train --config experiments/configs/omnimouse.py:size=tiny --workdir W [--config.train.steps=500 ...]

Each step samples a masking strategy from the training mix (a pure function of seed and step), so one compiled step
serves every strategy. The next step is dispatched before the previous step's metrics are fetched. Checkpoints hold the
model, optimizer, data-iterator position, device-hours and the session layout; a workdir that has one resumes from it.
SIGTERM/SIGINT save a checkpoint and exit cleanly; a non-finite loss stops the run before anything is saved past the
last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

ACCEPTS_CONFIG_OVERRIDES = True


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="config file[:arg], e.g. experiments/configs/omnimouse.py:size=tiny")
    parser.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics.jsonl, tensorboard/")


def run(args) -> int:
    from omnimouse_jax.config import load_config

    config = load_config(args.config, getattr(args, "config_overrides", []))
    train(config, args.workdir)
    return 0


@dataclasses.dataclass
class _Stop:
    """Set by SIGTERM/SIGINT: finish the current step, save, exit 0."""

    requested: bool = False

    def __call__(self, signum, frame):
        self.requested = True


def train(config, workdir) -> dict:
    """Trains to config.train.steps (or until signalled) and returns the last logged training metrics."""
    from omnimouse_jax.train.session import TrainingSession

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    session = TrainingSession(config, workdir)
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return session.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        session.close()
