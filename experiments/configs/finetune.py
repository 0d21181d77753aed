"""Fine-tuning a pretrained OmniMouse model to new sessions (new mice): the two stages.

    omnimouse finetune --from W --data STORE --sessions NAME[,NAME...] --workdir W2 \\
        [--config experiments/configs/finetune.py] [--config.stage1.steps=500 --config.stage2.steps=0 ...]

stage1: only the new sessions' rows of the per-session tables train (neuron embeddings and biases, session and new
        animal embeddings); the core is frozen. lr_scale multiplies the pretraining recipe's rates (config.optim of
        the pretrained run), so 1.0 trains the tables at its per-session rate.
stage2: everything but the pretrained sessions' rows trains, at lr_scale x the pretraining rates; steps=0 skips it.
Each stage has its own warmup (in optimizer updates, as in pretraining); one optimizer runs both, so steps count on
across stages and the core's moments are already estimated when stage 2 starts.

train / checkpoint / data: values laid over the pretrained run's config (None keeps the pretrained value); the
model, optimizer recipe and masking mix are always the pretrained run's.
"""
from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The default two-stage schedule (see the module docstring for the command that runs it)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stage1 = ml_collections.ConfigDict(dict(steps=500, warmup_steps=50, lr_scale=1.0))
    config.stage2 = ml_collections.ConfigDict(dict(steps=200, warmup_steps=50, lr_scale=0.1))
    # fraction: the first share of each new session's train trials (nested subsets, for data-efficiency curves).
    config.data = ml_collections.ConfigDict(dict(fraction=1.0, num_threads=None))
    config.train = ml_collections.ConfigDict(dict(batch_size=None, log_every_steps=None, eval_every_steps=0,
                                                  tensorboard=None))
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, use_async=None))
    return config
