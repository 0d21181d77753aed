"""The evaluation's budget knobs, free of JAX so that `omnimouse evaluate`'s parser can state their defaults."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Budget knobs. max_batches: evaluate at most this many evaluation batches, spread evenly over the split (None:
    all). train_batches: training batches the classical baselines are fit on. cnn_steps/cnn_block: the CNN's training
    steps and window length. batch_size: global evaluation batch (None: the model's training batch size).
    ablation: also score the model with its video and behavior inputs shuffled (evaluate.regimes' docstring)."""

    max_batches: int | None = None
    # Baselines given data and steps comparable to the model they are compared with (docs/evaluation.md, "The
    # baselines given their data").
    train_batches: int = 400
    cnn_steps: int = 1000
    cnn_block: int = 20
    batch_size: int | None = None
    num_threads: int = 2
    ablation: bool = True
