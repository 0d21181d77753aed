"""The optimizer recipe against closed forms."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from omnimouse_jax.errors import UserError
from omnimouse_jax.train.optim import clip_by_global_norm_of_the_rest, clipping_norm, make_optimizer, schedule


def _cfg(**kw):
    base = dict(lr=1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, session_lr=3e-3, session_weight_decay=1e-3,
                warmup_steps=10, clip_norm=1.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_warmup_then_constant():
    lr = schedule(1e-3, _cfg(), 100)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 4, 9, 10, 99)], [1e-4, 5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)


def test_warmup_then_cosine():
    lr = schedule(1.0, _cfg(schedule="cosine", final_lr_fraction=0.1), 110)
    for s in (10, 35, 60, 110):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 100))
        assert float(lr(s)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(UserError, match="config.optim.schedule"):
        schedule(1.0, _cfg(schedule="linear"), 10)


class _Identity(nnx.Module):
    def __init__(self):
        self.neuron_table = nnx.Param(jnp.full((3,), 2.0))


class _Model(nnx.Module):
    def __init__(self):
        self.identity = _Identity()
        self.core = nnx.Param(jnp.full((3,), 2.0))


def test_session_parameters_get_their_own_rate_and_decay():
    """One AdamW step from zero moments moves each parameter by lr * (sign(g) + wd * p) (bias-corrected Adam)."""
    model = _Model()
    cfg = _cfg(warmup_steps=0, clip_norm=0.0)
    tx, _ = make_optimizer(cfg, 10)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(lambda v: jnp.full_like(v, 0.5), nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    adam = 0.5 / (0.5 + 1e-6)
    np.testing.assert_allclose(model.core[...], 2.0 - 1e-3 * (adam + 0.1 * 2.0), rtol=1e-6)
    np.testing.assert_allclose(model.identity.neuron_table[...], 2.0 - 3e-3 * (adam + 1e-3 * 2.0), rtol=1e-6)


def test_gradient_accumulation_applies_every_k_steps():
    tx, _ = make_optimizer(_cfg(warmup_steps=0, clip_norm=1.0, grad_accum_steps=2), 10)
    params = {"core": jnp.zeros(4)}
    state = tx.init(params)
    updates, state = tx.update({"core": jnp.full(4, 10.0)}, state, params)
    np.testing.assert_array_equal(updates["core"], 0.0)  # first micro-step: accumulate only
    updates, state = tx.update({"core": jnp.full(4, 10.0)}, state, params)
    assert float(optax.tree.norm(updates)) > 0
    with pytest.raises(UserError, match="grad_accum_steps"):
        make_optimizer(_cfg(grad_accum_steps=0), 10)


def test_the_clipping_norm_leaves_out_the_parameters_fit_on_top():
    """Without a history readout the clip is optax's, bit for bit; with one, the norm is the rest's alone (numpy) and
    every gradient, the readout's too, is scaled by max_norm / that norm when it exceeds max_norm."""
    rng = np.random.default_rng(0)
    rest = {"core": jnp.asarray(rng.normal(size=5), jnp.float32), "identity": {"table": jnp.asarray(rng.normal(size=3),
                                                                                                   jnp.float32)}}
    clip = clip_by_global_norm_of_the_rest(1.0)
    for scale in (0.1, 3.0):
        grads = jax.tree.map(lambda g: g * scale, rest)
        got, _ = clip.update(grads, clip.init(grads))
        want, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
    history = {"kernel": jnp.full((4, 2), 50.0, jnp.float32)}  # alone far above the limit
    lags = jnp.full((3, 2, 2), -40.0, jnp.float32)  # the history readout's lag table, likewise
    rest_norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(rest)))
    for scale in (0.5 / rest_norm, 2.0 / rest_norm):  # the rest's norm 0.5 (kept) and 2 (halved)
        grads = {**jax.tree.map(lambda g: g * scale, rest), "history_readout": history, "history_lags": lags}
        np.testing.assert_allclose(clipping_norm(grads), scale * rest_norm, rtol=1e-6)  # what the metrics log
        got, _ = clip.update(grads, clip.init(grads))
        factor = min(1.0, 1.0 / (scale * rest_norm))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, np.asarray(b) * factor, rtol=1e-6)
