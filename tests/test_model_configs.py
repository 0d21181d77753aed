"""Model sizes: every size traces with parameter counts; inconsistent settings fail naming the field."""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from omnimouse_jax.errors import UserError
from omnimouse_jax.model.masking import Masks
from omnimouse_jax.model.omnimouse import OmniMouse, count_parameters
from omnimouse_jax.model.video import video_geometry

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "omnimouse.py"
spec = importlib.util.spec_from_file_location("omnimouse_config", CONFIG_FILE)
configs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(configs)


def abstract_inputs(cfg, batch=1):
    b, t, n, c = batch, cfg.num_samples, cfg.max_neurons, cfg.behavior_channels
    s = jax.ShapeDtypeStruct
    data = dict(responses=s((b, t, n), np.float32), neuron_mask=s((b, n), bool), neuron_index=s((b, n), np.int32),
                session_index=s((b,), np.int32), animal_index=s((b,), np.int32),
                video=s((b, t, *cfg.frame_shape), np.uint8), behavior=s((b, t, c), np.float32),
                behavior_mask=s((b, c), bool))
    masks = Masks(s((b, t, n), bool), s((b, t, n), bool), s((b, t), bool), s((b,), bool), s((b,), bool))
    return data, masks


def backbone_closed_form(cfg):
    """Per layer: q, k, v, o (4 d^2), gated FFN (3 d h), two RMSNorms (2 d), two QK-norms (2 d / heads)."""
    d = cfg.d_model
    hidden = 16 * int(np.ceil(cfg.ffn_mult * d / 16))
    return cfg.num_layers * (4 * d * d + 3 * d * hidden + 2 * d + 2 * (d // cfg.num_heads))


@pytest.mark.parametrize("size", configs.SIZES)
def test_every_size_traces_and_counts(size):
    cfg = configs.get_config(f"size={size}").model
    model = nnx.eval_shape(lambda: OmniMouse(cfg, rngs=nnx.Rngs(0)))
    counts = count_parameters(model)
    assert counts["total"] == counts["core"] + counts["embedding"]
    # embedding, readout bias, decoder offset, receptive field (centre, size, lag, duration), the factorized video
    # readout's maps (every stage's token cells), channel weights (every stage's width) and lag, and the population
    # decoder's own weights per behavior channel
    stage_widths = [cfg.video.embed_dim * 2**i for i in range(len(cfg.video.stages))]
    grid_cells = [g[1] * g[2] for g in video_geometry(cfg.video, cfg.num_samples, cfg.frame_shape).grids]
    per_row = cfg.d_neuron_embed + 1 + int(cfg.population_decoder or cfg.population_readout) \
        + 5 * (cfg.video_readout_prior == "gaussian") \
        + (sum(grid_cells) + sum(stage_widths) + 1) * cfg.video_factorized_readout \
        + cfg.behavior_channels * cfg.population_decoder_neurons
    tables = cfg.num_neuron_rows * per_row + (cfg.num_sessions + cfg.num_animals) * cfg.d_neuron_embed
    assert counts["embedding"] == tables
    assert counts["per_neuron"] == per_row
    assert counts["backbone"] == backbone_closed_form(cfg)
    if size in configs.PAPER_SIZES and size != "1M":  # 1M is documented as the exception (1.57M)
        assert abs(counts["backbone"] / (float(size[:-1]) * 1e6) - 1) < 0.25
    gd, state = nnx.split(model)
    data, masks = abstract_inputs(cfg)
    out = jax.eval_shape(lambda state, data, masks: nnx.merge(gd, state)(data, masks), state, data, masks)
    assert out["rates"].shape == (1, cfg.num_samples, cfg.max_neurons)
    assert out["behavior"].shape == (1, cfg.num_samples, cfg.behavior_channels)


def test_config_holds_the_keys_scripts_rely_on():
    config = configs.get_config("size=test")
    for key in ("seed", "data.root", "train.steps", "train.batch_size", "mesh.data", "mesh.fsdp",
                "checkpoint.every_steps", "optim.lr", "optim.b1", "optim.b2", "optim.eps", "optim.weight_decay",
                "optim.session_lr", "optim.session_weight_decay", "optim.warmup_steps", "optim.clip_norm"):
        node = config
        for part in key.split("."):
            node = node[part]
    assert configs.get_config("size=80M").model.d_model == 768
    assert configs.get_config().size == "tiny"
    assert (configs.get_config("size=300M").optim.lr, configs.get_config("size=300M").optim.b2) == (7e-4, 0.98)


@pytest.mark.parametrize("arg, match", [("size=2M", "size='2M'"), ("depth=3", "expected size=S")])
def test_bad_config_arguments(arg, match):
    with pytest.raises(UserError, match=match):
        configs.get_config(arg)


@pytest.mark.parametrize("changes, match", [
    (dict(d_model=30, num_heads=4), r"config\.model\.d_model=30 is not divisible by num_heads=4"),
    (dict(local_window_bins=3), r"config\.model\.local_window_bins=3 spans 70 samples, longer than the block"),
    (dict(latent_window=7), r"config\.model\.latent_window=7 must divide num_samples=60"),
    (dict(response_window=61), r"config\.model\.response_window=61 must be within the block"),
    (dict(dtype="float16"), r"config\.model\.dtype='float16'"),
    (dict(local_global_ratio=(1, 0)), r"config\.model\.local_global_ratio=\(1, 0\)"),
    (dict(behavior_readout="per_sample"), r"config\.model\.behavior_readout='per_sample': expected one of"),
    (dict(neuron_embed_init="pca"), r"config\.model\.neuron_embed_init='pca': expected one of"),
    (dict(d_neuron_embed=4), r"config\.model\.neuron_embed_init='behavior_tuning' writes 5 tunings .* "
                             r"d_neuron_embed=4 must be at least behavior_channels=5"),
    (dict(video_skip_readout=True, decoder_video_attention="joint"),
     r"config\.model\.video_skip_readout=True .* needs decoder_video_attention='separate'"),
    (dict(factor_readout=0, factor_behavior=True), r"config\.model\.factor_behavior=True .* needs factor_readout > 0"),
    (dict(population_decoder=False), r"config\.model\.population_decoder_lags=4 must be >= 0, and > 0 only with "
                                     r"population_decoder=True"),
    (dict(population_decoder_lags=-1), r"config\.model\.population_decoder_lags=-1 must be >= 0"),
    (dict(population_decoder=False, population_decoder_lags=0, population_decoder_neurons=True),
     r"config\.model\.population_decoder_neurons=True .* needs population_decoder=True"),
    (dict(population_decoder_lags=60), r"config\.model\.population_decoder_lags=60 must be below num_samples=60"),
    (dict(history_lags=5), r"config\.model\.history_lags=5 must be >= 0, and > 0 only with history_readout=True"),
    (dict(history_readout=True, history_lags=60), r"config\.model\.history_lags=60 must be below num_samples=60"),
    (dict(video=dict(encoder="vit")), r"config\.model\.video\.encoder='vit': expected one of \['hiera', 'convnext'\]"),
])
def test_inconsistent_model_settings_fail_at_config_time(changes, match):
    cfg = configs.get_config("size=test").model
    cfg.update(changes)
    with pytest.raises(UserError, match=match):
        OmniMouse(cfg, rngs=nnx.Rngs(0))


def test_video_geometry_errors_name_the_field():
    cfg = configs.get_config("size=tiny").model
    cfg.video.mask_unit = (1, 3, 3)
    with pytest.raises(UserError, match=r"config\.model\.video\.mask_unit \(1, 3, 3\) does not tile"):
        OmniMouse(cfg, rngs=nnx.Rngs(0))


def test_batch_shape_errors_name_the_key():
    cfg = configs.get_config("size=test").model
    model = nnx.eval_shape(lambda: OmniMouse(cfg, rngs=nnx.Rngs(0)))
    data, masks = abstract_inputs(cfg)
    data["video"] = jax.ShapeDtypeStruct((1, cfg.num_samples, 18, 32), np.uint8)
    with pytest.raises(UserError, match=r"batch\['video'\] has shape \(1, 60, 18, 32\), expected \(1, 60, 36, 64\)"):
        jax.eval_shape(lambda d, m: model(d, m), data, masks)


def test_tiny_runs_forward_on_cpu():
    from omnimouse_jax.model.masking import PRESETS, make_masks, strategy_arrays

    cfg = configs.get_config("size=tiny").model
    rng = np.random.default_rng(0)
    b, t, n = 1, cfg.num_samples, 64
    data = dict(responses=rng.gamma(1.0, 1.0, (b, t, n)).astype(np.float32), neuron_mask=np.ones((b, n), bool),
                neuron_index=rng.permutation(cfg.num_neuron_rows)[None, :n].astype(np.int32),
                session_index=np.zeros(b, np.int32), animal_index=np.zeros(b, np.int32),
                video=rng.integers(0, 256, (b, t, *cfg.frame_shape)).astype(np.uint8),
                behavior=rng.normal(size=(b, t, 5)).astype(np.float32), behavior_mask=np.ones((b, 5), bool))
    masks = make_masks(strategy_arrays(PRESETS["population_64_response_video"]), data["neuron_mask"], t)
    out = jax.device_get(nnx.jit(lambda m: m(data, masks))(OmniMouse(cfg, rngs=nnx.Rngs(0))))
    assert np.isfinite(out["rates"]).all() and (out["rates"] >= 0).all()
    assert np.isfinite(out["behavior"]).all()


def test_saved_config_without_newer_model_options_rebuilds_the_old_model():
    """A checkpoint's config written before behavior_readout / response_gain / neuron_embed_init /
    population_decoder existed loads with the values its model had (the paper code's readout, no gains, random
    embeddings, no population decoder or offsets); present values are kept."""
    from omnimouse_jax.train.restore import config_from_json

    old = configs.get_config("size=test").to_dict()
    for key in ("behavior_readout", "response_gain", "neuron_embed_init", "population_decoder",
                "video_factorized_readout", "population_readout", "factor_readout", "factor_dynamics",
                "factor_behavior", "population_decoder_lags"):
        del old["model"][key]
    for key in ("patch_impl", "encoder"):
        del old["model"]["video"][key]
    loaded = config_from_json(old).model
    assert (loaded.video.patch_impl, loaded.video.encoder) == ("auto", "hiera")
    assert (loaded.behavior_readout, loaded.response_gain, loaded.neuron_embed_init, loaded.population_decoder) == (
        "per_channel", False, "random", False)
    assert loaded.frame_shape == tuple(old["model"]["frame_shape"])
    current = config_from_json(configs.get_config("size=test").to_dict()).model
    assert (current.behavior_readout, current.response_gain, current.population_decoder) == ("per_step", True, True)
    assert (loaded.population_decoder_lags, current.population_decoder_lags) == (0, 4)
    model = OmniMouse(loaded, rngs=nnx.Rngs(0))
    assert model.behavior_head.shape[-1] == loaded.num_samples and model.response_gain is None
    assert model.population_decoder is None and model.identity.neuron_offset is None
    assert model.population_readout is None and model.identity.neuron_video_map is None
    assert model.factor_loadings is None and model.factor_log_timescale is None
