"""The paper's optimizer recipe: AdamW with its own learning rate and weight decay for per-session parameters
(neuron, session and animal tables), linear warmup then constant or cosine, global-norm clipping, optional gradient
accumulation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from omnimouse_jax.errors import UserError
from omnimouse_jax.model.omnimouse import FITTED_ON_TOP

SCHEDULES = ("constant", "cosine")


def is_per_session(path: tuple) -> bool:
    """Parameters owned by sessions rather than the shared core: everything under the model's `identity` tables."""
    return len(path) > 0 and str(path[0]) == "identity"


def is_fitted_on_top(path: tuple) -> bool:
    """Parameters fit to what the rest of the model leaves (the residual history readout, model.omnimouse): their
    gradients stay out of the clipping norm, so that theirs, large while they are young, do not shrink the rest's
    steps (docs/evaluation.md, "The residual history readout")."""
    return len(path) > 0 and str(path[0]) in FITTED_ON_TOP


def _keys(path) -> tuple:
    return tuple(getattr(k, "key", k) for k in path)


def clipping_norm(grads) -> jax.Array:
    """The global norm of every gradient but those fit on top: the norm the clip compares with its limit."""
    return optax.tree.norm(jax.tree_util.tree_map_with_path(
        lambda path, g: None if is_fitted_on_top(_keys(path)) else g, grads))


def clip_by_global_norm_of_the_rest(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm with the norm taken over every parameter but those fit on top, and every gradient
    scaled by the same factor; optax's arithmetic and (empty) state, so a model without such parameters updates bit
    for bit as with optax's, and checkpoints of either restore with the other. optax has no clip over a subset whose
    state is that empty one (optax.masked wraps it)."""
    def update(updates, state, params=None):
        del params
        norm = clipping_norm(updates)
        within = jnp.squeeze(norm < max_norm)
        return jax.tree.map(lambda g: jax.lax.select(within, g, (g / norm.astype(g.dtype)) * max_norm), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def schedule(peak_lr: float, cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `peak_lr` over config.optim.warmup_steps (the first step already takes a 1/warmup share), then
    constant (the paper) or a cosine decay to final_lr_fraction x peak at `total_steps`."""
    warmup = int(cfg.warmup_steps)
    kind = cfg.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise UserError(f"config.optim.schedule={kind!r}: expected one of {SCHEDULES}")
    final_fraction = float(cfg.get("final_lr_fraction", 0.0))
    after = (optax.constant_schedule(peak_lr) if kind == "constant"
             else optax.cosine_decay_schedule(peak_lr, max(total_steps - warmup, 1), alpha=final_fraction))
    if warmup == 0:
        return after
    ramp = (optax.linear_schedule(peak_lr / warmup, peak_lr, warmup - 1) if warmup > 1
            else optax.constant_schedule(peak_lr))
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, dict]:
    """(transformation, {group: schedule}) for `config.optim`; groups are 'core' and 'session'."""
    core_lr, session_lr = schedule(cfg.lr, cfg, total_steps), schedule(cfg.session_lr, cfg, total_steps)

    def adamw(lr, wd):
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "session" if is_per_session(_keys(path)) else "core", params)

    tx = optax.chain(
        clip_by_global_norm_of_the_rest(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
        optax.multi_transform({"core": adamw(core_lr, cfg.weight_decay),
                               "session": adamw(session_lr, cfg.session_weight_decay)}, labels))
    accumulate = int(cfg.get("grad_accum_steps", 1))
    if accumulate < 1:
        raise UserError(f"config.optim.grad_accum_steps={accumulate}: expected >= 1")
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
    skip = int(cfg.get("skip_nonfinite", 0))
    if skip < 0:
        raise UserError(f"config.optim.skip_nonfinite={skip}: expected 0 (stop on a non-finite loss) or the number of "
                        "consecutive non-finite steps to skip")
    if skip:  # outermost, so a non-finite micro-batch never reaches the accumulators or the Adam moments
        tx = optax.apply_if_finite(tx, max_consecutive_errors=skip)
    return tx, {"core": core_lr, "session": session_lr}


def make_nnx_optimizer(model: nnx.Module, cfg: ml_collections.ConfigDict, total_steps: int):
    tx, schedules = make_optimizer(cfg, total_steps)
    return nnx.Optimizer(model, tx, wrt=nnx.Param), schedules
