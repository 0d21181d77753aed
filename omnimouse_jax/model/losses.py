"""Training loss: Poisson NLL for responses plus weighted MSE for behavior, over target elements only."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from omnimouse_jax.model.masking import Masks


def loss_fn(predictions: dict, batch: dict, masks: Masks, config) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and its parts; `config` is the config.model section.

    poisson      mean over response targets of min(rate - y log(rate + eps), poisson_clamp)
    behavior_mse mean over behavior targets (present channels of examples whose behavior is a target, all
                 samples) of min((pred - y)^2, behavior_clamp)
    loss         poisson + behavior_weight * behavior_mse
    Padding neurons and visible inputs are never targets (the masks say so); a part with no targets is 0.
    """
    rates = predictions["rates"].astype(jnp.float32)
    y = jnp.asarray(batch["responses"], jnp.float32)
    resp_target = masks.response_target & jnp.asarray(batch["neuron_mask"], bool)[:, None, :]
    nll = jnp.minimum(rates - y * jnp.log(rates + config.poisson_eps), config.poisson_clamp)
    n_resp = resp_target.sum()
    poisson = jnp.where(resp_target, nll, 0.0).sum() / jnp.maximum(n_resp, 1)

    beh_target = (masks.behavior_target[:, None, None] & jnp.asarray(batch["behavior_mask"], bool)[:, None, :])
    beh_target = jnp.broadcast_to(beh_target, batch["behavior"].shape)
    err = jnp.minimum((predictions["behavior"].astype(jnp.float32) - jnp.asarray(batch["behavior"], jnp.float32)) ** 2,
                      config.behavior_clamp)
    n_beh = beh_target.sum()
    behavior_mse = jnp.where(beh_target, err, 0.0).sum() / jnp.maximum(n_beh, 1)

    loss = poisson + config.behavior_weight * behavior_mse
    return loss, {"poisson": poisson, "behavior_mse": behavior_mse, "n_targets": n_resp, "n_behavior_targets": n_beh}
