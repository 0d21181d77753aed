"""OmniMouse model behaviour on the `test` size: airtight masking, neuron permutation, loss, overfitting, bf16,
growing the tables, and sharding by logical axes."""
import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from factor_reference import posterior_factor_means
from omnimouse_jax.model import masking
from omnimouse_jax.model.losses import loss_fn
from omnimouse_jax.model.masking import PRESETS, Masks, make_masks, strategy_arrays
from omnimouse_jax.errors import UserError
from omnimouse_jax.model.omnimouse import OmniMouse, check_model_config
from omnimouse_jax.parallel import sharding

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "omnimouse.py"


def load_config(size: str):
    spec = importlib.util.spec_from_file_location("omnimouse_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(f"size={size}")


CFG = load_config("test").model
T = CFG.num_samples
# One jitted forward shared by the tests, so models of the same structure and batches of the same shape compile once.
forward = nnx.jit(lambda model, batch, masks: model(batch, masks))


def make_batch(cfg, batch=2, neurons=None, seed=0):
    rng = np.random.default_rng(seed)
    n = neurons or cfg.max_neurons
    neuron_mask = np.ones((batch, n), bool)
    neuron_mask[-1, n - 5 :] = False  # padding after the real neurons
    behavior_mask = np.ones((batch, cfg.behavior_channels), bool)
    behavior_mask[-1, 2] = False  # one absent channel
    responses = rng.gamma(1.0, 1.0, (batch, cfg.num_samples, n)).astype(np.float32) * neuron_mask[:, None]
    return dict(
        responses=responses, neuron_mask=neuron_mask,
        neuron_index=np.stack([rng.permutation(cfg.num_neuron_rows)[:n] for _ in range(batch)]).astype(np.int32),
        session_index=np.arange(batch, dtype=np.int32) % cfg.num_sessions,
        animal_index=np.arange(batch, dtype=np.int32) % cfg.num_animals,
        video=rng.integers(0, 256, (batch, cfg.num_samples, *cfg.frame_shape)).astype(np.uint8),
        behavior=rng.normal(size=(batch, cfg.num_samples, cfg.behavior_channels)).astype(np.float32),
        behavior_mask=behavior_mask)


@pytest.fixture(scope="module")
def model():
    return OmniMouse(CFG, rngs=nnx.Rngs(0))


def every_strategy():
    scaled = [dataclasses.replace(PRESETS[n], n_visible_neurons=8, max_reconstructed_neurons=12)
              for n in masking.EVAL_PRESETS if n.startswith("population")]
    mix = [s for s, _ in masking.training_mix(neuron_counts=tuple(load_config("test").masking.neuron_counts))]
    return [PRESETS[n] for n in masking.EVAL_PRESETS] + scaled + mix


def test_masking_is_airtight_for_every_strategy(model):
    """d(target predictions)/d(hidden inputs) is exactly zero; visible inputs do matter."""
    check_airtight(model)


def test_convnext_video_encoder_is_airtight():
    cfg = load_config("test").model
    cfg.video.encoder = "convnext"
    check_airtight(OmniMouse(cfg, rngs=nnx.Rngs(0)))


def test_convnext_depthwise_convolution_matches_xla():
    from omnimouse_jax.model.video import ConvNeXtBlock

    block = ConvNeXtBlock(6, 2.0, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 9, 6)), jnp.float32)
    kernel = block.depthwise[...]  # (7, 7, C)
    reference = jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (1, 1), [(3, 3), (3, 3)],
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
    block.expand.kernel[...] = jnp.zeros_like(block.expand.kernel[...])
    block.expand.bias[...] = jnp.zeros_like(block.expand.bias[...])
    block.contract.bias[...] = jnp.ones_like(block.contract.bias[...])  # the MLP branch is then exactly 1
    np.testing.assert_allclose(np.asarray(block(x)), np.asarray(x) + 1.0, atol=1e-6)
    normed = block.norm(reference + block.depthwise_bias[...])
    block.contract.bias[...] = jnp.zeros_like(block.contract.bias[...])
    block.expand.kernel[...] = jnp.eye(6, 12)
    block.contract.kernel[...] = jnp.eye(12, 6)
    np.testing.assert_allclose(np.asarray(block(x)), np.asarray(x + jax.nn.gelu(normed)), atol=1e-5)


def test_video_skip_readout_is_airtight_and_reads_the_video():
    """The skip readout (decoder video attention straight to the response logits) keeps hidden inputs out, and at
    init it already makes the video_only predictions depend on the frames."""
    cfg = load_config("test").model
    cfg.video_skip_readout = True
    model = OmniMouse(cfg, rngs=nnx.Rngs(0))
    check_airtight(model)
    batch = make_batch(cfg)
    masks = make_masks(strategy_arrays(PRESETS["video_only"]), batch["neuron_mask"], T)
    other = {**batch, "video": batch["video"][::-1]}
    with_skip = np.asarray(forward(model, batch, masks)["rates"]) - np.asarray(forward(model, other, masks)["rates"])
    model.video_head.kernel[...] = jnp.zeros_like(model.video_head.kernel[...])
    without = np.asarray(forward(model, batch, masks)["rates"]) - np.asarray(forward(model, other, masks)["rates"])
    # the skip path adds its own video dependence on top of the decoder's
    assert np.abs(with_skip - without).max() > 1e-3


def test_pool_tokens_matches_a_loop_reference():
    from omnimouse_jax.model.video import pool_tokens

    x = np.random.default_rng(0).normal(size=(2, 4, 6, 8, 3)).astype(np.float32)
    stride = (2, 3, 2)
    got_max = np.asarray(pool_tokens(jnp.asarray(x), stride, "max"))
    got_cat = np.asarray(pool_tokens(jnp.asarray(x), stride, "concat"))
    assert got_max.shape == (2, 2, 2, 4, 3) and got_cat.shape == (2, 2, 2, 4, 12 * 3)
    for t, h, w in np.ndindex(2, 2, 4):
        block = x[:, 2 * t:2 * t + 2, 3 * h:3 * h + 3, 2 * w:2 * w + 2]  # (B, 2, 3, 2, D)
        np.testing.assert_array_equal(got_max[:, t, h, w], block.max(axis=(1, 2, 3)))
        np.testing.assert_array_equal(got_cat[:, t, h, w], block.reshape(2, -1))


def check_airtight(model):
    gd, state = nnx.split(model)
    batch = make_batch(CFG, neurons=16)
    batch["video"] = batch["video"].astype(np.float32)  # differentiable frames
    rng = np.random.default_rng(1)
    w_resp = rng.random(batch["responses"].shape).astype(np.float32) + 0.5
    w_beh = rng.random(batch["behavior"].shape).astype(np.float32) + 0.5

    @jax.jit
    def gradients(state, batch, fields):
        masks = make_masks(fields, batch["neuron_mask"], T)

        def predict(responses, video, behavior):
            return nnx.merge(gd, state)({**batch, "responses": responses, "video": video, "behavior": behavior}, masks)

        out, vjp = jax.vjp(predict, batch["responses"], batch["video"], batch["behavior"])
        beh_target = masks.behavior_target[:, None, None] & batch["behavior_mask"][:, None, :]
        zero = jax.tree.map(jnp.zeros_like, out)
        from_rates = vjp({**zero, "rates": w_resp * masks.response_target})
        from_behavior = vjp({**zero, "behavior": w_beh * beh_target})
        return masks, from_rates, from_behavior

    for s in every_strategy():
        masks, *grads = jax.device_get(gradients(state, batch, strategy_arrays(s)))
        hidden_resp = ~masks.response_visible
        hidden_frames = ~masks.video_visible
        hidden_beh = ~(masks.behavior_visible[:, None] & batch["behavior_mask"])  # (B, C)
        for g_resp, g_video, g_beh in grads:
            assert np.all(g_resp[hidden_resp] == 0), s
            assert np.all(g_video[hidden_frames] == 0), s
            assert np.all(g_beh.transpose(0, 2, 1)[hidden_beh] == 0), s
        g_resp, g_video, _ = grads[0]
        if masks.response_target.any() and masks.response_visible.any():
            assert np.abs(g_resp[masks.response_visible]).max() > 0, s
        if masks.response_target.any() and masks.video_visible.any():
            assert np.abs(g_video[masks.video_visible]).max() > 0, s
    assert gradients._cache_size() == 1


def test_permuting_neurons_permutes_predictions(model):
    batch = make_batch(CFG, seed=3)
    masks = make_masks(strategy_arrays(masking.training_mix(neuron_counts=(8,))[3][0]), batch["neuron_mask"], T)
    rng = np.random.default_rng(4)
    perm = np.stack([rng.permutation(CFG.max_neurons) for _ in range(2)])  # a different order per example
    take = lambda a, axis: np.take_along_axis(np.asarray(a), np.expand_dims(perm, 1) if axis == 2 else perm, axis)  # noqa: E731
    batch_p = {**batch, "responses": take(batch["responses"], 2), "neuron_mask": take(batch["neuron_mask"], 1),
               "neuron_index": take(batch["neuron_index"], 1)}
    masks_p = masks._replace(response_visible=take(masks.response_visible, 2),
                             response_target=take(masks.response_target, 2))
    out = jax.device_get(forward(model, batch, masks))
    out_p = jax.device_get(forward(model, batch_p, masks_p))
    np.testing.assert_allclose(out_p["rates"], take(out["rates"], 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_p["behavior"], out["behavior"], rtol=1e-5, atol=1e-5)
    assert np.abs(out["rates"][:, :, 0] - out["rates"][:, :, 1]).max() > 1e-4  # neurons are told apart


def test_loss_matches_numpy_reference():
    rng = np.random.default_rng(5)
    b, t, n, c = 2, 4, 3, 2
    rates = rng.gamma(2.0, 1.0, (b, t, n)).astype(np.float32)
    rates[0, 3, 1] = 1e-30  # far from its target: the clamp at poisson_clamp applies
    y = rng.poisson(2.0, (b, t, n)).astype(np.float32)
    y[0, 3, 1] = 30.0
    beh_pred = rng.normal(size=(b, t, c)).astype(np.float32)
    beh_pred[1, 0, 0] = 50.0  # squared error above behavior_clamp
    beh = rng.normal(size=(b, t, c)).astype(np.float32)
    neuron_mask = np.array([[True, True, True], [True, True, False]])
    target = rng.random((b, t, n)) > 0.4
    target[0, 3, 1] = target[1, :, 2] = True  # includes a padding neuron, which must not count
    masks = Masks(response_visible=~target, response_target=target, video_visible=np.ones((b, t), bool),
                  behavior_visible=np.array([False, False]), behavior_target=np.array([True, True]))
    batch = dict(responses=y, neuron_mask=neuron_mask, behavior=beh, behavior_mask=np.array([[True, True], [True, False]]))
    cfg = CFG
    loss, parts = loss_fn({"rates": rates, "behavior": beh_pred}, batch, masks, cfg)

    counted = target & neuron_mask[:, None, :]
    nll = np.minimum(rates.astype(np.float64) - y * np.log(rates.astype(np.float64) + 1e-5), 100.0)
    poisson = nll[counted].mean()
    beh_counted = np.broadcast_to(batch["behavior_mask"][:, None, :], (b, t, c))
    mse = np.minimum((beh_pred.astype(np.float64) - beh) ** 2, 10.0)[beh_counted].mean()
    assert nll[0, 3, 1] == 100.0 and mse.max() <= 10.0
    np.testing.assert_allclose(float(parts["poisson"]), poisson, rtol=1e-5)
    np.testing.assert_allclose(float(parts["behavior_mse"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(loss), poisson + 0.1 * mse, rtol=1e-5)
    assert int(parts["n_targets"]) == counted.sum() and int(parts["n_behavior_targets"]) == beh_counted.sum()

    # No behavior targets: that part is zero, not NaN.
    masks0 = masks._replace(behavior_target=np.array([False, False]))
    loss0, parts0 = loss_fn({"rates": rates, "behavior": beh_pred}, batch, masks0, cfg)
    assert float(parts0["behavior_mse"]) == 0.0
    np.testing.assert_allclose(float(loss0), poisson, rtol=1e-5)


def test_test_size_overfits_one_batch():
    """Loss above its floor (the loss at rate = target, behavior = target) falls by at least 90%."""
    model = OmniMouse(CFG, rngs=nnx.Rngs(1))
    batch = make_batch(CFG, batch=2, neurons=16, seed=6)
    strategy = dataclasses.replace(masking.training_mix(neuron_counts=(8,))[0][0], behavior_encoded=False,
                                   behavior_reconstructed=True)
    masks = make_masks(strategy_arrays(strategy), batch["neuron_mask"], T)
    target = np.asarray(masks.response_target) & batch["neuron_mask"][:, None, :]
    y = batch["responses"][target].astype(np.float64)
    floor = np.mean(y - y * np.log(y + CFG.poisson_eps))

    gd, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        def objective(params):
            return loss_fn(nnx.merge(gd, params, rest)(batch, masks), batch, masks, CFG)[0]
        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(200):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    first, last = losses[0] - floor, min(losses[-10:]) - floor
    assert last < 0.1 * first, (first, last)


def test_bfloat16_compute_keeps_fp32_parameters():
    cfg16 = load_config("test").model
    cfg16.dtype = "bfloat16"
    m32, m16 = OmniMouse(CFG, rngs=nnx.Rngs(2)), OmniMouse(cfg16, rngs=nnx.Rngs(2))
    assert m16.layers[0].ffn.gate.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(m16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    batch = make_batch(CFG, seed=7)
    masks = make_masks(strategy_arrays(PRESETS["causal_response_25_video_behavior"]), batch["neuron_mask"], T)
    r32, r16 = (jax.device_get(forward(m, batch, masks))["rates"] for m in (m32, m16))
    assert r16.dtype == np.float32 and np.isfinite(r16).all()
    assert np.abs(r16 - r32).mean() < 0.05 * np.abs(r32).mean()


def test_growing_tables_keeps_existing_predictions(model):
    batch = make_batch(CFG, seed=8)
    masks = make_masks(strategy_arrays(PRESETS["causal_response_10"]), batch["neuron_mask"], T)
    grown = nnx.clone(model)
    grown.identity.grow(CFG.num_neuron_rows + 10, CFG.num_sessions + 1, CFG.num_animals + 1, nnx.Rngs(9))
    assert grown.identity.neuron_table.shape == (CFG.num_neuron_rows + 10, CFG.d_neuron_embed)
    assert grown.identity.session_table.shape[0] == CFG.num_sessions + 1
    run = lambda m, b: jax.device_get(forward(m, b, masks)["rates"])  # noqa: E731
    np.testing.assert_allclose(run(grown, batch), run(model, batch), rtol=1e-6)
    new_rows = {**batch, "neuron_index": batch["neuron_index"] % 10 + CFG.num_neuron_rows}
    assert np.isfinite(run(grown, new_rows)).all()


def test_parameters_shard_by_logical_axes(model):
    mesh = jax.make_mesh((1, 2, 2), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    batch = make_batch(CFG, seed=10)
    masks = make_masks(strategy_arrays(PRESETS["video_behavior"]), batch["neuron_mask"], T)
    reference = jax.device_get(forward(model, batch, masks)["rates"])
    with sharding.use_rules(mesh):
        sharded = OmniMouse(CFG, rngs=nnx.Rngs(0))  # the fixture's seed: the same values, now sharded
        table = sharded.identity.neuron_table[...]
        assert table.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
        assert table.addressable_shards[0].data.shape == (CFG.num_neuron_rows // 2, CFG.d_neuron_embed)
        gate = sharded.layers[0].ffn.gate.kernel[...]
        assert gate.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # FSDP over embed
        rates = jax.device_get(forward(sharded, batch, masks)["rates"])
    np.testing.assert_allclose(rates, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, padding", [((6, 7, 7), (6, 4, 4), (0, 1, 3)),   # tiny
                                                     ((6, 7, 7), (2, 2, 2), (2, 1, 3)),   # the paper's sizes
                                                     ((10, 12, 16), (10, 12, 16), (0, 0, 0))])  # test
def test_matmul_patch_embedding_equals_xla_convolution(kernel, stride, padding):
    from omnimouse_jax.model.video import patch_embed

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 20, 36, 64, 2)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=kernel + (2, 5)).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(5,)).astype(np.float32))
    ref = jax.lax.conv_general_dilated(x, w, stride, [(p, p) for p in padding],
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + b
    out = patch_embed(x, w, b, stride, padding, "matmul")
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    grads = [jax.grad(lambda w_: (patch_embed(x, w_, b, stride, padding, impl) ** 2).mean())(w)
             for impl in ("matmul", "conv")]
    # fp32 sums over ~50k products in two orders: differences of ~2e-5 on gradients of order 1 are rounding
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="video.patch_impl 'fft'"):
        patch_embed(x, w, b, stride, padding, "fft")


def test_response_gain_scales_each_neurons_tokens_by_its_embedding():
    """With the response gain on, a neuron whose embedding maps to a gain of -1 (1 + gain = 0) contributes no
    response tokens: its responses cannot change any prediction, while another neuron's still do."""
    cfg = load_config("test").model
    cfg.response_gain = True
    model = OmniMouse(cfg, rngs=nnx.Rngs(11))
    batch = make_batch(cfg, seed=12)
    masks = make_masks(strategy_arrays(PRESETS["all_response_only"]), batch["neuron_mask"], T)
    # Zero session/animal embeddings; row r of the silenced neuron is the first unit vector, which the gain maps to -1.
    for name in ("session_table", "animal_table"):
        getattr(model.identity, name).set_value(jnp.zeros_like(getattr(model.identity, name)[...]))
    row = int(batch["neuron_index"][0, 0])
    table = np.asarray(model.identity.neuron_table[...]).copy()
    table[row] = np.eye(cfg.d_neuron_embed)[0]
    table[np.arange(len(table)) != row, 0] = 0.0  # other rows get no gain
    model.identity.neuron_table.set_value(jnp.asarray(table))
    kernel = np.zeros((cfg.d_neuron_embed, cfg.d_model), np.float32)
    kernel[0] = -1.0
    model.response_gain.kernel.set_value(jnp.asarray(kernel))

    def behavior_after(responses):
        return np.asarray(jax.device_get(forward(model, {**batch, "responses": responses}, masks))["behavior"])

    base = behavior_after(batch["responses"])
    silenced, other = batch["responses"].copy(), batch["responses"].copy()
    silenced[0, :, 0] += 5.0
    other[0, :, 1] += 5.0
    np.testing.assert_allclose(behavior_after(silenced), base, rtol=1e-6, atol=1e-6)
    assert np.abs(behavior_after(other) - base).max() > 1e-3


def _behavior_term_checked(edited, zeroed, batch, masks, visible, expected):
    """Asserts that `edited`'s behavior exceeds `zeroed`'s (the same model with one term zeroed) by `expected` and that
    a hidden response changes none of it; returns both models' gradients of the behavior's sum for the identity
    tables."""
    def behavior(m, responses):
        return np.asarray(jax.device_get(forward(m, {**batch, "responses": responses}, masks))["behavior"])

    np.testing.assert_allclose(behavior(edited, batch["responses"]) - behavior(zeroed, batch["responses"]), expected,
                               rtol=1e-4, atol=1e-4)
    changed = _with_a_hidden_response_changed(batch, visible)
    np.testing.assert_array_equal(behavior(edited, changed), behavior(edited, batch["responses"]))

    def identity_grads(m):
        return nnx.grad(lambda m: forward(m, batch, masks)["behavior"].sum())(m)["identity"]

    return identity_grads(edited), identity_grads(zeroed)


def test_population_decoder_is_a_linear_decoder_over_the_visible_neurons(model):
    """The population decoder adds, at each sample t, the sum over lags l in -L..L of p_{t+l} times the kernel's
    tap l (p = 0 outside the block) to the behavior, where p_t = sqrt(max_neurons) x the mean over visible neurons
    of (response - offset) x embedding (numpy reference); a hidden response changes nothing, so no regime can read
    what it must predict, and the decoder's gradient does not reach the embeddings or offsets it reads."""
    lags = CFG.population_decoder_lags
    assert lags > 0 and model.population_decoder.kernel.shape == (2 * lags + 1, CFG.d_neuron_embed,
                                                                  CFG.behavior_channels)
    batch = make_batch(CFG, seed=21)
    strategy = dataclasses.replace(PRESETS["population_64_response"], n_visible_neurons=8, max_reconstructed_neurons=12)
    masks = make_masks(strategy_arrays(strategy), batch["neuron_mask"], T)
    edited = nnx.clone(model)
    rng = np.random.default_rng(22)
    offsets = rng.normal(size=edited.identity.neuron_offset.shape).astype(np.float32)
    edited.identity.neuron_offset.set_value(jnp.asarray(offsets))
    kernel = rng.normal(size=edited.population_decoder.kernel.shape).astype(np.float32)
    edited.population_decoder.kernel.set_value(jnp.asarray(kernel))
    zeroed = nnx.clone(edited)
    zeroed.population_decoder.kernel.set_value(jnp.zeros_like(zeroed.population_decoder.kernel[...]))

    identity = edited.identity
    emb = _embeddings(identity, batch)
    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    assert visible.any() and not visible.all()
    deviation = np.where(visible, batch["responses"] - offsets[batch["neuron_index"]][:, None], 0.0)
    pooled = np.einsum("btn,bne->bte", deviation, emb) / np.maximum(visible.sum(-1, keepdims=True), 1)
    padded = np.pad(pooled * np.sqrt(CFG.max_neurons), ((0, 0), (lags, lags), (0, 0)))
    expected = sum(padded[:, lags + lag: lags + lag + T] @ kernel[lags + lag] for lag in range(-lags, lags + 1))

    # The behavior loss trains the decoder's kernel only: the behavior's gradient with respect to the tables the
    # pooled state is made of (embeddings, offsets) is the same with the decoder as without it.
    with_decoder, without = _behavior_term_checked(edited, zeroed, batch, masks, visible, expected)
    for name in ("neuron_table", "neuron_offset"):
        np.testing.assert_allclose(with_decoder[name][...], without[name][...], rtol=0, atol=1e-6)
    assert np.abs(with_decoder["neuron_table"][...]).max() > 0  # the behavior queries' embeddings do reach it


def test_population_decoder_neurons_weigh_each_visible_neuron_by_its_own_row():
    """population_decoder_neurons adds, at each sample, sqrt(max_neurons) x the mean over visible neurons of
    (response - offset) x the neuron's own row of weights to the behavior (numpy reference); a hidden response
    changes nothing, and the behavior's gradient reaches the rows but not the offsets."""
    cfg = CFG.copy_and_resolve_references()
    cfg.population_decoder_neurons = True
    model = OmniMouse(cfg, rngs=nnx.Rngs(23))
    batch = make_batch(cfg, seed=24)
    strategy = dataclasses.replace(PRESETS["population_64_response"], n_visible_neurons=8, max_reconstructed_neurons=12)
    masks = make_masks(strategy_arrays(strategy), batch["neuron_mask"], T)
    rng = np.random.default_rng(25)
    offsets = rng.normal(size=model.identity.neuron_offset.shape).astype(np.float32)
    model.identity.neuron_offset.set_value(jnp.asarray(offsets))
    weights = rng.normal(size=model.identity.neuron_decoder.shape).astype(np.float32)
    edited, zeroed = nnx.clone(model), nnx.clone(model)
    edited.identity.neuron_decoder.set_value(jnp.asarray(weights))

    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    assert visible.any() and not visible.all()
    deviation = np.where(visible, batch["responses"] - offsets[batch["neuron_index"]][:, None], 0.0)
    expected = (np.einsum("btn,bnc->btc", deviation, weights[batch["neuron_index"]])
                / np.maximum(visible.sum(-1, keepdims=True), 1) * np.sqrt(cfg.max_neurons))

    with_rows, without = _behavior_term_checked(edited, zeroed, batch, masks, visible, expected)
    np.testing.assert_allclose(with_rows["neuron_offset"][...], without["neuron_offset"][...], rtol=0, atol=1e-6)
    seen_rows = np.unique(batch["neuron_index"][visible.any(1)])
    assert np.abs(np.asarray(with_rows["neuron_decoder"][...])[seen_rows]).min() > 0


def test_behavior_readout_is_time_resolved(model):
    """`per_step` (the test size's readout) decodes behavior with one query per (channel, readout step) and maps each
    step's output to that step's samples, so changing one step's query changes that step's behavior and no other;
    `per_channel` (the paper's) reads each channel's whole trace from one query, which knows no steps."""
    batch = make_batch(CFG, seed=13)
    masks = make_masks(strategy_arrays(PRESETS["all_response_only"]), batch["neuron_mask"], T)
    k = CFG.readout_step
    per_channel_cfg = load_config("test").model
    per_channel_cfg.behavior_readout = "per_channel"
    for base, per_step in ((model, True), (OmniMouse(per_channel_cfg, rngs=nnx.Rngs(14)), False)):
        edited = nnx.clone(base)
        queries = np.asarray(edited.step_queries[...]).copy()
        queries[0] += 1.0  # the first step's query (shared with the neuron queries of that step)
        edited.step_queries.set_value(jnp.asarray(queries))
        before = np.asarray(jax.device_get(forward(base, batch, masks))["behavior"])
        after = np.asarray(jax.device_get(forward(edited, batch, masks))["behavior"])
        np.testing.assert_allclose(after[:, k:], before[:, k:], rtol=1e-6, atol=1e-6)
        assert (np.abs(after[:, :k] - before[:, :k]).max() > 1e-3) == per_step


def test_one_strategy_per_example_predicts_as_each_strategy_alone(model):
    """A batch whose examples follow different strategies (training draws one per example) predicts, example by
    example, what a batch following each strategy alone predicts."""
    from omnimouse_jax.train.session import stacked_fields

    names = ["video_only", "causal_response_25_video"]
    batch = make_batch(CFG, neurons=16)
    mixed_fields = stacked_fields([PRESETS[n] for n in names])
    assert mixed_fields["video_len"].shape == (2,)
    mixed = jax.device_get(forward(model, batch, make_masks(mixed_fields, batch["neuron_mask"], T)))
    for i, name in enumerate(names):
        alone = jax.device_get(forward(model, batch, make_masks(strategy_arrays(PRESETS[name]), batch["neuron_mask"], T)))
        np.testing.assert_allclose(mixed["rates"][i], alone["rates"][i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mixed["behavior"][i], alone["behavior"][i], rtol=1e-5, atol=1e-6)
    # The two strategies do differ for the same example (the video_only example sees no responses).
    other = jax.device_get(forward(model, batch, make_masks(strategy_arrays(PRESETS[names[1]]), batch["neuron_mask"], T)))
    assert np.abs(other["rates"][0] - mixed["rates"][0]).max() > 1e-4



@pytest.mark.parametrize("size", ["test", "tiny"])  # one video stage, two
def test_factorized_video_readout_matches_a_loop_reference(size):
    """Each neuron's drive at sample t is, summed over the video stages, sum_j tent_j(t - lag) sum_p map[p]
    sum_c weight[c] tokens[j, p, c], the tent interpolating linearly between the stage's time-step centres (held
    beyond the first and last)."""
    cfg = load_config(size).model
    readout = OmniMouse(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(4)
    geometry = readout.video.geometry
    stages = [rng.normal(size=(2, grid[0], grid[1] * grid[2], cfg.video.embed_dim * 2**i)).astype(np.float32)
              for i, grid in enumerate(geometry.grids)]
    rows = cfg.num_neuron_rows
    index = np.array([[3, 7, 11], [0, 5, rows - 1]], np.int32)
    identity = readout.identity
    identity.neuron_video_map[...] = jnp.asarray(rng.normal(size=identity.neuron_video_map.shape), jnp.float32)
    raw_lag = rng.uniform(-0.05, 0.05, rows).astype(np.float32)
    identity.neuron_video_lag[...] = jnp.asarray(raw_lag)
    got = np.asarray(readout._video_readout([jnp.asarray(x) for x in stages], jnp.asarray(index)))
    maps = np.asarray(identity.neuron_video_map[...])
    weights = np.asarray(identity.neuron_video_features[...])
    want = np.zeros_like(got)
    cell0 = channel0 = 0
    for tokens, centres in zip(stages, geometry.stage_frame_centres):
        cells, channels = tokens.shape[2], tokens.shape[3]
        seconds = centres / cfg.sampling_rate_hz
        for b in range(2):
            for k, row in enumerate(index[b]):
                per_step = [maps[row, cell0:cell0 + cells] @ tokens[b, j] @ weights[row, channel0:channel0 + channels]
                            for j in range(len(centres))]
                lag = 0.1 + 5.0 * raw_lag[row]
                want[b, k] += np.interp(np.arange(cfg.num_samples) / cfg.sampling_rate_hz - lag, seconds, per_step)
        cell0, channel0 = cell0 + cells, channel0 + channels
    assert cell0 == maps.shape[1] and channel0 == weights.shape[1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_receptive_field_init_starts_the_video_map_at_a_bump_on_the_mapped_cell(model):
    readout = nnx.clone(model)
    centres = np.array([[-0.6, 0.2], [0.5, -0.1]], np.float32)
    readout.set_receptive_fields(centres, 0.2, start_row=4)
    grid_h, grid_w = model.video.geometry.grids[0][1:]
    maps = np.asarray(readout.identity.neuron_video_map[...])[4:6, :grid_h * grid_w]  # the first stage's cells
    np.testing.assert_allclose(maps.sum(1), 1.0, rtol=1e-5)
    cell_x = (np.arange(grid_w) + 0.5) / grid_w * 2 - 1
    cell_y = ((np.arange(grid_h) + 0.5) / grid_h * 2 - 1) * CFG.frame_shape[0] / CFG.frame_shape[1]
    for bump, (x, y) in zip(maps, centres):
        peak_row, peak_col = np.unravel_index(bump.argmax(), (grid_h, grid_w))
        assert peak_col == np.abs(cell_x - x).argmin() and peak_row == np.abs(cell_y - y).argmin()


def _embeddings(identity, batch) -> np.ndarray:
    """(B, N, E) each neuron's embedding as the model sums it: its row plus its session's and its animal's."""
    return (np.asarray(identity.neuron_table[...])[batch["neuron_index"]]
            + np.asarray(identity.session_table[...])[batch["session_index"]][:, None]
            + np.asarray(identity.animal_table[...])[batch["animal_index"]][:, None])


def _population_task_with_offsets(seed: int, strategy=None, **options):
    """(cfg, model, batch, masks, rng): the `test` model with `options`, a batch and `strategy`'s masks (default:
    population completion, 8 visible and 12 reconstructed neurons), and random neuron offsets drawn from rng (seeded
    seed + 1)."""
    cfg = load_config("test").model
    cfg.update(options)
    model = OmniMouse(cfg, rngs=nnx.Rngs(0))
    batch = make_batch(cfg, seed=seed)
    strategy = strategy or dataclasses.replace(PRESETS["population_64_response"], n_visible_neurons=8,
                                               max_reconstructed_neurons=12)
    masks = make_masks(strategy_arrays(strategy), batch["neuron_mask"], T)
    rng = np.random.default_rng(seed + 1)
    model.identity.neuron_offset[...] = jnp.asarray(rng.normal(size=model.identity.neuron_offset.shape), jnp.float32)
    return cfg, model, batch, masks, rng


def _reference_factors(model, batch, masks, persistence_K):
    """(visible (B, T, N), loadings (B, N, K), factors (B, T, K)): the AR(1) factors' posterior mean given the visible
    deviations from the offsets, by dense Gaussian conditioning (tests/factor_reference.py)."""
    loadings = _embeddings(model.identity, batch).astype(np.float64) @ np.asarray(model.factor_loadings.kernel[...])
    offsets = np.asarray(model.identity.neuron_offset[...])[batch["neuron_index"]]
    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    factors = np.stack([posterior_factor_means(loadings[b], batch["responses"][b] - offsets[b], visible[b],
                                               persistence_K) for b in range(visible.shape[0])])
    return visible, loadings, factors


def _with_a_hidden_response_changed(batch, visible) -> np.ndarray:
    """The batch's responses with one hidden response of a real neuron moved by 5."""
    b, t, n = np.argwhere(~visible & batch["neuron_mask"][:, None, :])[0]
    changed = batch["responses"].copy()
    changed[b, t, n] += 5.0
    return changed


def _assert_readout_adds(cfg, model, readout_model, batch, masks, visible, logits_BxTxN):
    """readout_model's rates at the targets equal model's with logits_BxTxN added before the Softplus(beta) head, and
    a hidden response changes none of readout_model's rates. Returns (model's rates, the expected rates, targets)."""
    def rates(m, responses):
        return np.asarray(jax.device_get(forward(m, {**batch, "responses": responses}, masks))["rates"], np.float64)

    beta = cfg.softplus_beta
    base = rates(model, batch["responses"])
    inverse = np.log(np.expm1(beta * base)) / beta  # the logits of the model without the readout
    expected = np.logaddexp(0.0, beta * (inverse + logits_BxTxN)) / beta
    target = np.asarray(masks.response_target) & batch["neuron_mask"][:, None, :]
    np.testing.assert_allclose(rates(readout_model, batch["responses"])[target], expected[target], rtol=1e-3,
                               atol=1e-4)
    changed = _with_a_hidden_response_changed(batch, visible)
    np.testing.assert_array_equal(rates(readout_model, changed), rates(readout_model, batch["responses"]))
    return base, expected, target


def test_population_readout_couples_each_target_to_the_visible_population():
    """The population readout adds, at each sample, the pooled population vector (as the population decoder's) times
    a linear map of the neuron's embedding to the response logits (numpy reference through the Softplus(beta)
    head); a hidden response changes no prediction."""
    cfg, model, batch, masks, rng = _population_task_with_offsets(population_readout=True, seed=23)
    kernel = rng.normal(size=model.population_readout.kernel.shape).astype(np.float32) * 0.1
    coupled = nnx.clone(model)
    coupled.population_readout.kernel[...] = jnp.asarray(kernel)

    identity = model.identity
    emb = _embeddings(identity, batch)
    offsets = np.asarray(identity.neuron_offset[...])[batch["neuron_index"]]
    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    deviation = np.where(visible, batch["responses"] - offsets[:, None], 0.0)
    pooled = np.einsum("btn,bne->bte", deviation, emb) / np.maximum(visible.sum(-1, keepdims=True), 1)
    logits_BxTxN = np.einsum("bte,bne->btn", pooled * np.sqrt(cfg.max_neurons), emb @ kernel)
    _assert_readout_adds(cfg, model, coupled, batch, masks, visible, logits_BxTxN)


def test_dynamic_factor_readout_carries_the_visible_populations_state_to_the_forecast():
    """With factor dynamics the readout adds gain x l_n . E[f_t | every visible sample], f AR(1) factors with the
    model's timescales (numpy dense conditioning through the Softplus(beta) head), so forecast targets after the
    visible prefix move with the prefix; a hidden response changes nothing."""
    strategy = dataclasses.replace(PRESETS["causal_response_10"], max_reconstructed_neurons=12)
    cfg, model, batch, masks, rng = _population_task_with_offsets(seed=26, strategy=strategy, factor_readout=3,
                                                                  factor_dynamics=True)
    coupled = nnx.clone(model)
    coupled.factor_gain[...] = jnp.float32(0.7)
    timescales_s = np.array([0.05, 0.4, 2.0])
    coupled.factor_log_timescale[...] = jnp.asarray(np.log(timescales_s), jnp.float32)
    persistence = np.exp(-1.0 / (timescales_s * cfg.sampling_rate_hz))

    visible, loadings, factors_BxTxK = _reference_factors(model, batch, masks, persistence)
    logits_BxTxN = 0.7 * np.einsum("btk,bnk->btn", factors_BxTxK, loadings)
    # model has gain 0: the model without the readout
    base, expected, target = _assert_readout_adds(cfg, model, coupled, batch, masks, visible, logits_BxTxN)
    assert not (target & visible.any(-1, keepdims=True)).any()  # every target sample has no visible neuron
    assert np.abs(expected - base)[target].max() > 1e-3


def test_factor_behavior_decodes_the_smoothed_factors_into_each_channel():
    """With factor_behavior the behavior prediction adds W f_t at every sample, f_t the AR(1) factors' posterior mean
    given the visible responses (numpy dense conditioning); a hidden response changes no behavior prediction."""
    strategy = dataclasses.replace(PRESETS["population_64_response"], n_visible_neurons=8, max_reconstructed_neurons=12,
                                   behavior_encoded=False, behavior_reconstructed=True)
    cfg, model, batch, masks, rng = _population_task_with_offsets(seed=27, strategy=strategy, factor_readout=3,
                                                                  factor_dynamics=True, factor_behavior=True)
    decoding = nnx.clone(model)
    weights_KxC = rng.normal(size=(3, cfg.behavior_channels))
    decoding.factor_behavior.kernel[...] = jnp.asarray(weights_KxC, jnp.float32)
    timescales_s = np.exp(np.asarray(model.factor_log_timescale[...], np.float64))
    persistence = np.exp(-1.0 / (timescales_s * cfg.sampling_rate_hz))

    visible, _, factors_BxTxK = _reference_factors(model, batch, masks, persistence)

    def behavior(m, responses):
        return np.asarray(jax.device_get(forward(m, {**batch, "responses": responses}, masks))["behavior"], np.float64)

    added = behavior(decoding, batch["responses"]) - behavior(model, batch["responses"])  # model has W = 0
    np.testing.assert_allclose(added, factors_BxTxK @ weights_KxC, rtol=1e-3, atol=1e-4)
    assert np.abs(added).max() > 1e-2
    changed = _with_a_hidden_response_changed(batch, visible)
    np.testing.assert_array_equal(behavior(decoding, changed), behavior(decoding, batch["responses"]))


def test_factor_readout_adds_the_ridge_estimate_of_the_visible_populations_factors():
    """The factor readout adds gain x l_n . f_t to the response logits, f_t the ridge estimate of K factors from the
    neurons visible at t (numpy reference through the Softplus(beta) head); a hidden response changes nothing."""
    cfg, model, batch, masks, rng = _population_task_with_offsets(factor_readout=3, factor_dynamics=False, seed=25)
    coupled = nnx.clone(model)
    coupled.factor_gain[...] = jnp.float32(0.7)

    identity = model.identity
    emb = _embeddings(identity, batch).astype(np.float64)
    loadings = emb @ np.asarray(model.factor_loadings.kernel[...], np.float64)  # (B, N, K)
    offsets = np.asarray(identity.neuron_offset[...])[batch["neuron_index"]]
    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    logits_BxTxN = np.zeros(visible.shape)
    for b in range(visible.shape[0]):
        for t in range(visible.shape[1]):
            seen = visible[b, t]
            lv = loadings[b][seen]
            x = batch["responses"][b, t][seen] - offsets[b][seen]
            factors = np.linalg.solve(lv.T @ lv + np.eye(3), lv.T @ x)
            logits_BxTxN[b, t] = 0.7 * loadings[b] @ factors
    # model has gain 0: the model without the readout
    base, expected, target = _assert_readout_adds(cfg, model, coupled, batch, masks, visible, logits_BxTxN)
    assert np.abs(expected - base)[target].max() > 1e-3  # the readout moved the rates it is checked on


def test_history_readout_adds_filtered_own_and_population_history_of_earlier_visible_samples():
    """The history readout against a loop reference: for each neuron and sample t, the exponentially weighted sums
    over visible samples s < t of its own deviation (response - offset) and of the population's mean deviation
    (times sqrt(max_neurons)), at each timescale (weights sqrt(1 - r^2) r^lag), weighted by bias + kernel . embedding, added to the logits (through the Softplus(beta) head);
    a hidden response and a response at or after t change nothing."""
    from omnimouse_jax.model.omnimouse import HISTORY_TIMESCALES_S

    cfg = load_config("test").model
    cfg.history_readout = True
    model = OmniMouse(cfg, rngs=nnx.Rngs(0))
    batch = make_batch(cfg, seed=31)
    masks = make_masks(strategy_arrays(PRESETS["causal_response_25"]), batch["neuron_mask"], T)
    rng = np.random.default_rng(32)
    model.identity.neuron_offset[...] = jnp.asarray(rng.normal(size=model.identity.neuron_offset.shape), jnp.float32)
    filtered = nnx.clone(model)
    kernel = rng.normal(size=model.history_readout.kernel.shape).astype(np.float32) * 0.3
    bias = rng.normal(size=model.history_readout.bias.shape).astype(np.float32) * 0.3
    filtered.history_readout.kernel[...] = jnp.asarray(kernel)
    filtered.history_readout.bias[...] = jnp.asarray(bias)

    identity = model.identity
    emb = _embeddings(identity, batch)
    weights = emb @ kernel + bias  # (B, N, 2K)
    offsets = np.asarray(identity.neuron_offset[...])[batch["neuron_index"]]
    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    deviation = np.where(visible, batch["responses"] - offsets[:, None], 0.0)
    population = deviation.sum(-1) / np.maximum(visible.sum(-1), 1) * np.sqrt(cfg.max_neurons)
    k = len(HISTORY_TIMESCALES_S)
    logits = np.zeros(batch["responses"].shape)
    for j, tau in enumerate(HISTORY_TIMESCALES_S):
        r = np.exp(-1 / (tau * cfg.sampling_rate_hz))
        for t in range(T):
            for s in range(t):
                w = np.sqrt(1 - r * r) * r ** (t - s - 1)
                logits[:, t] += w * (deviation[:, s] * weights[:, :, j] + population[:, s, None] * weights[:, :, k + j])

    _, _, target = _assert_readout_adds(cfg, model, filtered, batch, masks, visible, logits)
    assert np.abs(logits[target]).mean() > 0.05  # the history reaches the targets


def test_history_lags_weigh_the_last_visible_samples_by_their_gap_to_the_target():
    """history_lags=L: at sample t each neuron adds table[gap, 0, j] x its own deviation j samples before its last
    visible sample s < t (gap = t - s), and table[gap', 1, j] x the population mean's likewise (a loop reference
    over a mask where held-out neurons are seen only over a prefix); a hidden response changes nothing."""
    cfg = load_config("test").model
    cfg.history_readout, cfg.history_lags = True, 3
    model = OmniMouse(cfg, rngs=nnx.Rngs(0))
    batch = make_batch(cfg, seed=33)
    strategy = masking.MaskingStrategy(n_visible_neurons=8, prefix_start=15, full_population_prefix_len=10,
                                       max_reconstructed_neurons=16, context_start=15, context_len=T - 15)
    masks = make_masks(strategy_arrays(strategy), batch["neuron_mask"], T)
    rng = np.random.default_rng(34)
    model.identity.neuron_offset[...] = jnp.asarray(rng.normal(size=model.identity.neuron_offset.shape), jnp.float32)
    lagged = nnx.clone(model)
    table = rng.normal(size=model.history_lags.shape).astype(np.float32) * 0.3
    lagged.history_lags[...] = jnp.asarray(table)

    offsets = np.asarray(model.identity.neuron_offset[...])[batch["neuron_index"]]
    visible = np.asarray(masks.response_visible) & batch["neuron_mask"][:, None, :]
    deviation = np.where(visible, batch["responses"] - offsets[:, None], 0.0)
    population = deviation.sum(-1) / np.maximum(visible.sum(-1), 1) * np.sqrt(cfg.max_neurons)

    def lag_term(series_T, seen_T, t, which):
        seen = np.flatnonzero(seen_T[:t])
        if not len(seen):
            return 0.0
        s = seen[-1]
        return sum(table[t - s, which, j] * series_T[s - j] for j in range(cfg.history_lags) if s - j >= 0)

    logits = np.zeros(batch["responses"].shape)
    for b in range(logits.shape[0]):
        for t in range(T):
            pop = lag_term(population[b], visible[b].any(-1), t, 1)
            for n in range(logits.shape[2]):
                logits[b, t, n] = pop + lag_term(deviation[b, :, n], visible[b, :, n], t, 0)

    _, _, target = _assert_readout_adds(cfg, model, lagged, batch, masks, visible, logits)
    own_gaps = {t - 24 for t in np.flatnonzero(target.any((0, 2)))}
    assert min(own_gaps) == 6 and max(own_gaps) == T - 25  # held-out neurons: seen up to sample 24
    assert np.abs(logits[target]).mean() > 0.05


def test_residual_history_readout_trains_on_top_of_the_rest_of_the_model():
    """history_residual=True: the training loss's value is the NLL of the rates with the history readout; every other
    parameter gets the gradient of the same model without the readout, and the readout the gradient it gets in the
    joint model (history_residual=False) with the same parameters."""
    batch = make_batch(CFG, seed=41)
    masks = make_masks(strategy_arrays(PRESETS["causal_response_25"]), batch["neuron_mask"], T)
    rng = np.random.default_rng(42)

    def build(readout: bool, residual: bool):
        cfg = CFG.copy_and_resolve_references()
        cfg.history_readout, cfg.history_residual = readout, residual
        return cfg, OmniMouse(cfg, rngs=nnx.Rngs(0))

    cfg_res, residual = build(True, True)
    residual.history_readout.kernel[...] = jnp.asarray(
        rng.normal(size=residual.history_readout.kernel.shape).astype(np.float32) * 0.3)
    cfg_joint, joint = build(True, False)
    nnx.update(joint, nnx.state(residual))
    cfg_none, without = build(False, False)
    shared = nnx.state(residual, nnx.All(nnx.Param, lambda path, _: path[0] != "history_readout"))
    nnx.update(without, shared)

    def loss_and_grads(cfg, model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            out = nnx.merge(graphdef, params, rest)(batch, masks, deterministic=False)
            return loss_fn(out, batch, masks, cfg)[0]

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return float(value), nnx.to_flat_state(grads)

    value_res, grads_res = loss_and_grads(cfg_res, residual)
    value_joint, grads_joint = loss_and_grads(cfg_joint, joint)
    _, grads_without = loss_and_grads(cfg_none, without)
    np.testing.assert_allclose(value_res, value_joint, rtol=1e-6)
    grads_joint, grads_without = dict(grads_joint), dict(grads_without)
    history = [path for path, _ in grads_res if path[0] == "history_readout"]
    assert len(history) == 2
    for path, grad in grads_res:
        want = grads_joint[path] if path[0] == "history_readout" else grads_without[path]
        scale = float(np.abs(want[...]).max()) + 1e-12
        np.testing.assert_allclose(grad[...], want[...], rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))
    assert all(float(np.abs(grads_joint[path][...]).max()) > 1e-4 for path in history)
    # The joint model's other parameters do feel the readout: the residual mode is what removes it.
    assert any(not np.allclose(grads_joint[path][...], grads_without[path][...], rtol=1e-3, atol=1e-6)
               for path in grads_without)


def test_attention_kernels_and_remat_give_the_same_loss_and_gradients():
    """xla, blockwise, and blockwise with each remat policy: one model (the `test` size, whose decoder reads video
    keys with the Gaussian prior, so a bias goes through every kernel), one batch, equal loss and gradients."""
    batch = make_batch(CFG, batch=2)
    masks = make_masks(strategy_arrays(PRESETS["causal_response_25_video"]), batch["neuron_mask"], T)

    def loss_and_grads(attention, remat):
        cfg = CFG.copy_and_resolve_references()
        cfg.attention, cfg.remat = attention, remat
        graphdef, params, rest = nnx.split(OmniMouse(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

        def loss(params):
            out = nnx.merge(graphdef, params, rest)(batch, masks)
            return (out["rates"] ** 2).mean() + (out["behavior"] ** 2).mean()

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return float(value), jax.tree.leaves(grads)

    want_loss, want_grads = loss_and_grads("xla", "none")
    for attention, remat in (("blockwise", "none"), ("blockwise", "attention"), ("blockwise", "block")):
        got_loss, got_grads = loss_and_grads(attention, remat)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
        scale = max(float(np.abs(g).max()) for g in want_grads)
        for got, want in zip(got_grads, want_grads):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * scale, err_msg=f"{attention}/{remat}")


def test_backend_only_attention_and_remat_with_dropout_are_refused_by_name():
    for field, value, words in (("attention", "cudnn", "runs only on GPU"), ("attention", "splash", "only on TPU"),
                                ("remat", "block", "needs dropout=0")):
        cfg = CFG.copy_and_resolve_references()
        cfg[field] = value
        cfg.dropout = 0.1
        with pytest.raises(UserError, match=f"config.model.{field}=.*{words}"):
            check_model_config(cfg)
