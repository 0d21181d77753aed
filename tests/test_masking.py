"""Masking strategies: presets as data, masks against a literal numpy reading of the rules, one compile for all."""
import dataclasses

import jax
import numpy as np
import pytest

from omnimouse_jax.errors import UserError
from omnimouse_jax.model import masking
from omnimouse_jax.model.masking import PRESETS, MaskingStrategy, make_masks, strategy_arrays, validate_strategy

T = 60


def reference_masks(s: MaskingStrategy, neuron_mask: np.ndarray):
    """The module docstring's rules, element by element, with None meaning 'unbounded'."""
    def within(t, start, length):
        return start <= t and (length is None or t < start + length)

    b_size, n_size = neuron_mask.shape
    visible = np.zeros((b_size, T, n_size), bool)
    target = np.zeros((b_size, T, n_size), bool)
    for b in range(b_size):
        ranks = np.cumsum(neuron_mask[b]) - 1
        for n in range(n_size):
            if not neuron_mask[b, n]:
                continue
            r = ranks[n]
            chosen = s.n_visible_neurons is None or r < s.n_visible_neurons
            candidate = (s.n_visible_neurons is None or s.max_reconstructed_neurons is None
                         or r < s.n_visible_neurons + s.max_reconstructed_neurons)
            for t in range(T):
                v = (within(t, s.prefix_start, s.prefix_len) and within(t, s.context_start, s.context_len)
                     and (chosen or within(t, s.prefix_start, s.full_population_prefix_len)))
                visible[b, t, n] = v
                target[b, t, n] = within(t, s.suffix_start, s.suffix_len) and candidate and not v
    video = np.array([within(t, s.video_start, s.video_len) for t in range(T)])
    return visible, target, video


def neuron_masks(rng, batch=3, n=40):
    mask = np.zeros((batch, n), bool)
    for b, real in enumerate(rng.integers(n // 2, n + 1, batch)):
        mask[b, :real] = True
    return mask


def test_eval_presets_are_the_named_regimes():
    expected = {"video_behavior", "video_only", "all_response_only", "all_response_video"}
    for family in ("population_64_response", "population_1024_response", "causal_response_10", "causal_response_25"):
        expected |= {family + suffix for suffix in ("", "_video", "_behavior", "_video_behavior")}
    assert set(masking.EVAL_PRESETS) == expected
    assert PRESETS["causal_response_25_video"].prefix_len == 25
    assert PRESETS["population_1024_response_behavior"].n_visible_neurons == 1024
    assert PRESETS["video_only"].behavior_reconstructed and not PRESETS["video_only"].behavior_encoded


def test_training_mix_families_and_weights():
    mix = masking.TRAINING_MIX
    assert 80 <= len(mix) <= 150  # the paper samples from about 100 presets
    assert all(w > 0 for _, w in mix)
    strategies = [s for s, _ in mix]
    assert len(set(strategies)) == len(strategies)
    for s in strategies:
        validate_strategy(s, max_neurons=4096, num_samples=T)
    population = [s for s in strategies if s.n_visible_neurons and s.prefix_len is None and not s.full_population_prefix_len]
    causal = [s for s in strategies if s.n_visible_neurons is None and s.prefix_len in (10, 15, 25)]
    inverse = [s for s in strategies if s.full_population_prefix_len > 0]
    assert {s.n_visible_neurons for s in population} == {64, 256, 1024}
    assert {s.prefix_len for s in causal} == {10, 15, 25}
    assert inverse and all(s.n_visible_neurons for s in inverse)
    assert {s.video_len for s in strategies} >= {0, 10, 20, 30, 40, 50}
    assert any(s.behavior_reconstructed for s in strategies) and any(s.behavior_encoded for s in strategies)
    assert all(s.suffix_start == 30 for s in strategies)  # the target window is always the last second


@pytest.mark.parametrize("names", [masking.EVAL_PRESETS])
def test_masks_match_reference_for_every_strategy(names):
    rng = np.random.default_rng(0)
    neuron_mask = neuron_masks(rng)
    scaled = [dataclasses.replace(PRESETS[n], n_visible_neurons=7, max_reconstructed_neurons=9)
              for n in names if n.startswith("population")]
    strategies = [PRESETS[n] for n in names] + scaled + [s for s, _ in masking.training_mix(neuron_counts=(3, 8, 16))]
    build = jax.jit(make_masks, static_argnums=2)
    for s in strategies:
        masks = build(strategy_arrays(s), neuron_mask, T)
        visible, target, video = reference_masks(s, neuron_mask)
        np.testing.assert_array_equal(np.asarray(masks.response_visible), visible, err_msg=str(s))
        np.testing.assert_array_equal(np.asarray(masks.response_target), target, err_msg=str(s))
        np.testing.assert_array_equal(np.asarray(masks.video_visible), np.broadcast_to(video, (3, T)))
        assert np.asarray(masks.behavior_visible).tolist() == [s.behavior_encoded] * 3
        assert np.asarray(masks.behavior_target).tolist() == [s.behavior_reconstructed] * 3
    assert build._cache_size() == 1  # one compiled function serves every strategy


def test_hand_built_case():
    """Population + causal with a full-population prefix on 5 neurons (4 real), worked out by hand."""
    s = MaskingStrategy(n_visible_neurons=1, prefix_start=1, prefix_len=3, full_population_prefix_len=1,
                        max_reconstructed_neurons=2, suffix_start=3, suffix_len=None, video_start=2, video_len=1)
    neuron_mask = np.array([[True, True, True, True, False]])
    masks = make_masks(strategy_arrays(s), neuron_mask, 5)
    vis = np.zeros((5, 5), bool)  # (t, n)
    vis[1, :4] = True  # full-population prefix: every real neuron at t = 1
    vis[2:4, 0] = True  # then only the first neuron, until the prefix ends at t = 4
    tgt = np.zeros((5, 5), bool)
    tgt[3:, 1:3] = True  # suffix t >= 3, the next 2 neurons after the visible one
    tgt[4, 0] = True  # and the visible neuron itself once its prefix has ended (forecasting)
    np.testing.assert_array_equal(np.asarray(masks.response_visible[0]), vis)
    np.testing.assert_array_equal(np.asarray(masks.response_target[0]), tgt)
    np.testing.assert_array_equal(np.asarray(masks.video_visible[0]), [False, False, True, False, False])


def test_per_example_strategies():
    a, b = PRESETS["causal_response_10"], PRESETS["video_behavior"]
    fields = {k: np.stack([strategy_arrays(a)[k], strategy_arrays(b)[k]]) for k in masking.FIELDS}
    neuron_mask = np.ones((2, 6), bool)
    masks = make_masks(fields, neuron_mask, T)
    for i, s in enumerate((a, b)):
        visible, target, _ = reference_masks(s, neuron_mask[i : i + 1])
        np.testing.assert_array_equal(np.asarray(masks.response_visible[i]), visible[0])
        np.testing.assert_array_equal(np.asarray(masks.response_target[i]), target[0])


def test_inconsistent_strategies_fail_naming_the_field():
    with pytest.raises(UserError, match="n_visible_neurons=1024.*max_neurons=256"):
        validate_strategy(PRESETS["population_1024_response"], max_neurons=256, num_samples=T, name="p")
    with pytest.raises(UserError, match="suffix_start=30"):
        validate_strategy(PRESETS["causal_response_10"], max_neurons=256, num_samples=20)
    with pytest.raises(UserError, match="behavior_encoded and behavior_reconstructed"):
        validate_strategy(MaskingStrategy(behavior_encoded=True, behavior_reconstructed=True), max_neurons=8, num_samples=T)
    with pytest.raises(UserError, match="full_population_prefix_len"):
        validate_strategy(MaskingStrategy(prefix_len=5, full_population_prefix_len=6), max_neurons=8, num_samples=T)
    names = masking.presets_for(max_neurons=256, num_samples=T)
    assert "population_64_response" in names and not any("1024" in n for n in names)
