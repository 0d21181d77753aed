"""The demo's data verdict: every size's losses must fall with D and the fitted data exponents must exclude 0."""
from types import SimpleNamespace

from omnimouse_jax.demo import data_trend


def _rows(losses_by_size):
    rows = []
    for size, by_d in losses_by_size.items():
        for d, losses in by_d.items():
            for seed, loss in enumerate(losses):
                rows.append({"size": size, "D": d, "N": 1e5, "val_loss": loss, "status": "finished", "seed": seed})
    return rows


def _fit(name, value, low, high, **params):
    return SimpleNamespace(params={name: value, **params}, intervals={name: (low, high)})


FALLING = {"a": {1e4: [0.90, 0.92], 1e5: [0.85, 0.84], 1e6: [0.80, 0.81]}, "b": {1e4: [0.88], 1e5: [0.83], 1e6: [0.79]}}


def test_falling_everywhere_with_positive_exponents():
    fits = SimpleNamespace(joint=_fit("beta", 0.3, 0.1, 0.6, B=5.0), by_size={"a": _fit("alpha", 0.4, 0.05, 0.9)})
    every, evidence = data_trend(_rows(FALLING), fits)
    assert every
    # seeds are averaged: a at 1e4 is (0.90 + 0.92) / 2
    assert "a: 0.9100 > 0.8450 > 0.8050" in evidence and "b: 0.8800 > 0.8300 > 0.7900" in evidence
    assert "beta = 0.3 [0.1, 0.6]" in evidence


def test_one_size_not_falling_fails_the_verdict():
    losses = {**FALLING, "b": {1e4: [0.88], 1e5: [0.89], 1e6: [0.79]}}
    fits = SimpleNamespace(joint=_fit("beta", 0.3, 0.1, 0.6, B=5.0), by_size={})
    every, evidence = data_trend(_rows(losses), fits)
    assert not every and "b: 0.8800 > 0.8900 > 0.7900 (not falling)" in evidence


def test_exponent_interval_touching_zero_fails_the_verdict():
    joint_uncertain = SimpleNamespace(joint=_fit("beta", 0.3, -0.01, 0.6, B=5.0), by_size={})
    assert not data_trend(_rows(FALLING), joint_uncertain)[0]
    size_uncertain = SimpleNamespace(joint=_fit("beta", 0.3, 0.1, 0.6, B=5.0),
                                     by_size={"a": _fit("alpha", 0.4, -0.2, 0.9)})
    assert not data_trend(_rows(FALLING), size_uncertain)[0]
    no_joint = SimpleNamespace(joint=None, by_size={})
    assert not data_trend(_rows(FALLING), no_joint)[0]
