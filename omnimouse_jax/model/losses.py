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
    nll_sum, err_sum = loss_sums(predictions, batch, masks, config)
    n_resp, n_beh = target_counts(batch, masks)
    return combine(nll_sum, err_sum, n_resp, n_beh, config)


def target_counts(batch: dict, masks: Masks) -> tuple[jax.Array, jax.Array]:
    """(response targets, behavior targets) of a batch: what loss_fn's means divide by."""
    return _response_targets(batch, masks).sum(), _behavior_targets(batch, masks).sum()


def loss_sums(predictions: dict, batch: dict, masks: Masks, config) -> tuple[jax.Array, jax.Array]:
    """The sums behind loss_fn's two means: clamped Poisson NLL over response targets and clamped squared error over
    behavior targets. Sums over micro-batches add up to the batch's sums (train.session's micro-batched step)."""
    y = jnp.asarray(batch["responses"], jnp.float32)
    targets = _response_targets(batch, masks)

    def nll_sum(rates):
        nll = jnp.minimum(rates - y * jnp.log(rates + config.poisson_eps), config.poisson_clamp)
        return jnp.where(targets, nll, 0.0).sum()

    response_sum = nll_sum(predictions["rates"].astype(jnp.float32))
    if "rates_without_history" in predictions:
        # The value stays the NLL of the model's rates; the gradient adds that of the rates without the history
        # readout, which train everything but the readout (model.omnimouse, history_residual).
        base_sum = nll_sum(predictions["rates_without_history"].astype(jnp.float32))
        response_sum = response_sum + base_sum - jax.lax.stop_gradient(base_sum)
    err = jnp.minimum((predictions["behavior"].astype(jnp.float32) - jnp.asarray(batch["behavior"], jnp.float32)) ** 2,
                      config.behavior_clamp)
    return response_sum, jnp.where(_behavior_targets(batch, masks), err, 0.0).sum()


def combine(nll_sum, err_sum, n_resp, n_beh, config) -> tuple[jax.Array, dict[str, jax.Array]]:
    """loss_fn's loss and parts from the sums and the counts."""
    poisson = nll_sum / jnp.maximum(n_resp, 1)
    behavior_mse = err_sum / jnp.maximum(n_beh, 1)
    loss = poisson + config.behavior_weight * behavior_mse
    return loss, {"poisson": poisson, "behavior_mse": behavior_mse, "n_targets": n_resp, "n_behavior_targets": n_beh}


def _response_targets(batch: dict, masks: Masks) -> jax.Array:
    return masks.response_target & jnp.asarray(batch["neuron_mask"], bool)[:, None, :]


def _behavior_targets(batch: dict, masks: Masks) -> jax.Array:
    targets = masks.behavior_target[:, None, None] & jnp.asarray(batch["behavior_mask"], bool)[:, None, :]
    return jnp.broadcast_to(targets, batch["behavior"].shape)
