"""One training run's moving parts: mesh, model and optimizer, compiled step, data, checkpoints and logs.

Data flows store -> grain pipeline (per-host numpy) -> global jax arrays sharded over the batch axes -> compiled step.
The step is compiled from abstract inputs (shapes, dtypes, shardings), so `compile_only` can plan a run's per-device
memory and FLOPs for any mesh without allocating a parameter. In a multi-process run every process trains and
checkpoints; only process 0 writes the run-wide files (config.json, metrics.jsonl, TensorBoard).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from omnimouse_jax.data import pipeline
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.store import open_store
from omnimouse_jax.files import write_json_atomic
from omnimouse_jax.errors import UserError
from omnimouse_jax.model import masking
from omnimouse_jax.model.losses import combine, loss_fn, loss_sums, target_counts
from omnimouse_jax.model.omnimouse import (ADDED_OPTIONS, ADDED_VIDEO_OPTIONS, RF_SIZE_MAPPED, OmniMouse,
                                           count_parameters)
from omnimouse_jax.parallel import compile_cache, distributed, sharding
from omnimouse_jax.train import perf
from omnimouse_jax.train.checkpoint import Checkpointer, abstract_like, data_to_keys
from omnimouse_jax.train.logging import MetricsLogger
from omnimouse_jax.train.optim import clipping_norm, make_optimizer

# The batch fields the model reads; the rest (window positions, evaluation masks) stay on the host.
MODEL_FIELDS = ("responses", "neuron_mask", "neuron_index", "session_index", "animal_index", "video", "behavior",
                "behavior_mask")


# config.model keys a resumed run may change: how the same parameters are computed, not which parameters exist.
RESUMABLE_MODEL_KEYS = frozenset({"attention", "remat", "dtype", "dropout"})


def changed_model_keys(saved: dict, current: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for each key of two JSON config.model dicts that differs, options newer than
    the checkpoint taking the values its model was built with (ADDED_OPTIONS)."""
    defaults = ADDED_VIDEO_OPTIONS if prefix == "video." else ADDED_OPTIONS if not prefix else {}
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731 - tuples (ADDED_OPTIONS) as the JSON lists saved
    changed = []
    for key in sorted(set(current) | set(saved)):
        if not prefix and key in RESUMABLE_MODEL_KEYS:
            continue
        old, new = saved.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(changed_model_keys(old, new, f"{prefix}{key}."))
        elif plain(old) != plain(new):
            changed.append((f"{prefix}{key}", old, new))
    return changed


def configure_model(config, layout: SessionLayout, frame_shape) -> None:
    """Fills config.model with what the data decides: table sizes, frame shape, block length, neurons per example."""
    config.model.num_neuron_rows = layout.num_neuron_rows
    config.model.num_sessions = layout.num_sessions
    config.model.num_animals = layout.num_animals
    config.model.frame_shape = tuple(frame_shape)


def training_mix(config) -> tuple[list[masking.MaskingStrategy], np.ndarray]:
    """The strategies trained on and their probabilities. config.masking.mix is "paper" (the multi-task mix, scaled to
    config.masking.neuron_counts) or a comma-separated list of named presets (e.g. "video_behavior" trains a
    specialized single-task model); every strategy must fit the block and the neuron budget.

    config.masking.stimulus_share (paper mix only) is the probability that an example draws one of
    config.masking.stimulus_presets (in equal parts) instead of the paper mix; 0 is the paper's uniform draw over its
    strategies, of which video_only and video_behavior are 2."""
    mix = config.masking.get("mix", "paper")
    share = float(config.masking.get("stimulus_share", 0.0))
    if not 0.0 <= share < 1.0:
        raise UserError(f"config.masking.stimulus_share={share}: expected a probability in [0, 1)")
    if share and mix != "paper":
        raise UserError(f"config.masking.stimulus_share={share} applies to mix='paper' only, not mix={mix!r}; set "
                        f"it to 0 or name the presets in config.masking.mix")
    if mix == "paper":
        pairs = masking.training_mix(tuple(config.masking.neuron_counts), config.masking.max_reconstructed)
        paper_total = sum(w for _, w in pairs)
        pairs = [(s, w * (1.0 - share) / paper_total) for s, w in pairs]
        if share:
            names = _preset_names(config.masking.get("stimulus_presets", "video_behavior"),
                                  "config.masking.stimulus_presets")
            pairs += [(masking.PRESETS[name], share / len(names)) for name in names]
    else:
        pairs = [(masking.PRESETS[n], 1.0) for n in _preset_names(mix, "config.masking.mix", "'paper' or ")]
    strategies, weights = zip(*pairs)
    for s in strategies:
        masking.validate_strategy(s, max_neurons=config.model.max_neurons, num_samples=config.model.num_samples,
                                  name="config.masking")
    weights = np.asarray(weights, np.float64)
    return list(strategies), weights / weights.sum()


def _preset_names(value, key: str, alternative: str = "") -> list[str]:
    """Preset names from a comma-separated string or a sequence; UserError naming `key` for an unknown or empty one."""
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = [n for n in names if n not in masking.PRESETS]
    if unknown or not names:
        raise UserError(f"{key}={value!r}: {unknown or 'empty'} not a preset; expected {alternative}names from "
                        f"{sorted(masking.PRESETS)}")
    return names


def check_batch_divides_mesh(config, mesh) -> None:
    """UserError unless the global batch splits evenly over the data-parallel devices."""
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.batch_size % batch_devices:
        raise UserError(f"config.train.batch_size={config.train.batch_size}: must be a multiple of the mesh's "
                        f"data x fsdp devices ({batch_devices})")
    microbatches_of(config, mesh)


def create_model(config):
    """The model at its initialization for config.seed; call inside `sharding.use_rules(mesh)` and a jit (or
    eval_shape)."""
    return OmniMouse(config.model, rngs=nnx.Rngs(config.seed))


def create_model_and_optimizer(config, tx):
    """A fresh model (`create_model`) and its optimizer over the model's parameters."""
    model = create_model(config)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def abstract_state(config, tx, mesh):
    """(graphdef, state) of model and optimizer with ShapeDtypeStruct leaves carrying their shardings: the layout of
    the real state, computed without allocating it."""
    return _abstract(lambda: create_model_and_optimizer(config, tx), mesh)


def abstract_model(config, mesh):
    """(graphdef, state) of the model alone, as `abstract_state`: what inference restores from a checkpoint."""
    return _abstract(lambda: create_model(config), mesh)


def _abstract(create_modules, mesh):
    graphdef = None

    def create():
        nonlocal graphdef
        graphdef, state = nnx.split(create_modules())
        return state

    with sharding.use_rules(mesh):
        shapes = jax.eval_shape(create)
        specs = nnx.get_partition_spec(shapes)
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 - optimizer slots of the other param group

    def place(shape, spec):
        if masked(shape):
            return shape
        return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=jax.sharding.NamedSharding(mesh, spec))

    return graphdef, jax.tree.map(place, shapes, specs, is_leaf=masked)


def abstract_batch(config, batch_sharding) -> dict:
    """ShapeDtypeStructs of the model's batch fields (global batch; see omnimouse_jax.data.pipeline for the layout)."""
    b, t, n = config.train.batch_size, config.model.num_samples, config.model.max_neurons
    c, frame = len(BEHAVIOR_CHANNELS), tuple(config.model.frame_shape)
    shapes = {"responses": ((b, t, n), jnp.float32), "neuron_mask": ((b, n), jnp.bool_),
              "neuron_index": ((b, n), jnp.int32), "session_index": ((b,), jnp.int32),
              "animal_index": ((b,), jnp.int32), "video": ((b, t, *frame), jnp.uint8),
              "behavior": ((b, t, c), jnp.float32), "behavior_mask": ((b, c), jnp.bool_)}
    return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=batch_sharding) for k in MODEL_FIELDS}


def abstract_fields(batch_size: int, batch_sharding=None) -> dict:
    """ShapeDtypeStructs of a training batch's masking fields: one int32 per example and field, split like the
    batch."""
    return {k: jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=batch_sharding) for k in masking.FIELDS}


def stacked_fields(strategies) -> dict[str, np.ndarray]:
    """The fields of one strategy per example, as (B,) int32 arrays (masking.make_masks reads them per example)."""
    arrays = [masking.strategy_arrays(s) for s in strategies]
    return {k: np.stack([a[k] for a in arrays]).astype(np.int32) for k in masking.FIELDS}


def step_functions(graphdef, model_config, microbatches: int = 1):
    """(train_step, eval_step), pure functions of (state, batch, fields) for jax.jit.

    With microbatches M > 1 (config.train.device_microbatch) the train step runs the batch as M micro-batches in a
    lax.scan, adding their gradients: the same update as one pass over the batch (the losses' means divide by the
    whole batch's target counts) in about 1/M of the activation memory. Micro-batch j holds examples j, M + j,
    2M + j, ..., so that it stays split over the data-parallel devices like the batch."""
    num_samples = model_config.num_samples

    def forward_loss(model, batch, fields, deterministic):
        masks = masking.make_masks(fields, batch["neuron_mask"], num_samples)
        predictions = model(batch, masks, deterministic=deterministic)
        return loss_fn(predictions, batch, masks, model_config)

    def micro_batched_grads(model, batch, fields):
        masks = masking.make_masks(fields, batch["neuron_mask"], num_samples)
        n_resp, n_beh = target_counts(batch, masks)
        split = lambda x: jnp.swapaxes(x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:]), 0, 1)  # noqa
        micro = jax.tree.map(split, (batch, fields))
        graph, params, rest = nnx.split(model, nnx.Param, ...)

        def scaled_loss(params, mb_batch, mb_fields):
            mb_batch = jax.tree.map(lambda x: sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1)), mb_batch)
            mb_masks = masking.make_masks(mb_fields, mb_batch["neuron_mask"], num_samples)
            predictions = nnx.merge(graph, params, rest)(mb_batch, mb_masks, deterministic=False)
            nll_sum, err_sum = loss_sums(predictions, mb_batch, mb_masks, model_config)
            scaled = nll_sum / jnp.maximum(n_resp, 1) + model_config.behavior_weight * err_sum / jnp.maximum(n_beh, 1)
            return scaled, (nll_sum, err_sum)

        def add(carry, mb):
            grads, nll, err = carry
            (_, (nll_mb, err_mb)), grads_mb = jax.value_and_grad(scaled_loss, has_aux=True)(params, *mb)
            return (jax.tree.map(jnp.add, grads, grads_mb), nll + nll_mb, err + err_mb), None

        zero = jnp.zeros((), jnp.float32)
        (grads, nll, err), _ = jax.lax.scan(add, (jax.tree.map(jnp.zeros_like, params), zero, zero), micro)
        loss, parts = combine(nll, err, n_resp, n_beh, model_config)
        return (loss, parts), grads

    def train_step(state, batch, fields):
        model, optimizer = nnx.merge(graphdef, state)
        if microbatches > 1:
            (loss, parts), grads = micro_batched_grads(model, batch, fields)
        else:
            (loss, parts), grads = nnx.value_and_grad(
                lambda m: forward_loss(m, batch, fields, False), has_aux=True)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), {"loss": loss, **parts, "grad_norm": clipping_norm(grads)}

    def eval_step(state, batch, fields):
        model, _ = nnx.merge(graphdef, state)
        return forward_loss(model, batch, fields, True)

    return train_step, eval_step


def microbatches_of(config, mesh) -> int:
    """Passes per step: each device's share of the batch over config.train.device_microbatch (examples per device
    per pass; 0: the whole share in one pass). UserError unless it divides the share."""
    k = config.train.get("device_microbatch", 0)
    share = config.train.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or (k and share % k):
        raise UserError(f"config.train.device_microbatch={k!r}: expected 0 (no split) or a divisor of the "
                        f"{share} examples each device gets of config.train.batch_size={config.train.batch_size}")
    m = share // k if k else 1
    if m > 1 and config.model.get("dropout", 0.0) > 0:
        raise UserError(f"config.train.device_microbatch={k} needs config.model.dropout=0 (got "
                        f"{config.model.dropout}): micro-batches would share one dropout draw")
    return m


def model_flops(config, mesh) -> float | None:
    """FLOPs per device of one training step as the model defines it: the step lowered (not compiled) with dense XLA
    attention, no rematerialization and one pass over the batch. The numerator of MFU: XLA's cost analysis counts a
    loop's body once, so the compiled step's own count misses the blockwise kernel's and the micro-batches' loop
    trips, and remat's recomputation is not the model's work. Remembered beside the compilation cache (the count
    traces the model again): it depends on the model, the batch size and the optimizer, not on the run's length."""
    plain = config.copy_and_resolve_references()
    with plain.unlocked():
        plain.model.attention, plain.model.remat, plain.train.device_microbatch = "xla", "none", 0
    key = {"model": plain.model.to_dict(), "batch_size": int(plain.train.batch_size), "optim": plain.optim.to_dict()}
    flops = compile_cache.remembered("train_step_flops", key, lambda: _count_step_flops(plain))
    return None if flops is None else flops / mesh.size


def _count_step_flops(plain) -> float | None:
    # Lowered on one CPU device: the lowered step is the whole (unpartitioned) computation whatever the mesh, and
    # accelerator plugins (PJRT C API) give no cost analysis of a lowered program.
    try:
        count_devices = jax.devices("cpu")[:1]
    except RuntimeError:  # JAX_PLATFORMS excludes the CPU
        count_devices = jax.devices()[:1]
    count_mesh = sharding.make_mesh({axis: 1 for axis in sharding.MESH_AXES}, count_devices)
    tx, _ = make_optimizer(plain.optim, int(plain.train.steps))
    graphdef, state = abstract_state(plain, tx, count_mesh)
    batch_sharding = sharding.batch_sharding(count_mesh)
    train_step, _ = step_functions(graphdef, plain.model)
    with sharding.use_rules(count_mesh):
        lowered = jax.jit(train_step).lower(state, abstract_batch(plain, batch_sharding),
                                            abstract_fields(plain.train.batch_size, batch_sharding))
    return perf.compiled_flops(lowered)


def compile_train_step(graphdef, state, batch, fields, mesh, model_config, microbatches: int = 1):
    """The train step lowered and compiled for these (abstract or concrete) inputs; the state is donated."""
    train_step, _ = step_functions(graphdef, model_config, microbatches)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    with sharding.use_rules(mesh):
        return jax.jit(train_step, donate_argnums=0, out_shardings=(state_sharding, None)).lower(
            state, batch, fields).compile()


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (or arrays): its shard of every leaf."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # held as raw words, e.g. 2 x uint32 each
            raw = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
            per_element = math.prod(raw.shape[len(leaf.shape):]) * raw.dtype.itemsize
        else:
            per_element = leaf.dtype.itemsize
        total += math.prod(shard) * per_element
    return total


def compile_only(config) -> dict:
    """Plans a training run without allocating it: compiles the train step for config.mesh on abstract inputs and
    returns per-device bytes (parameters, optimizer state, batch, XLA's argument/output/temp sizes) and FLOPs.

    Table sizes and the frame shape come from the store at config.data.root when it exists (only its catalog and
    manifests are read), otherwise from config.model as given."""
    root = Path(config.data.root) if config.data.root else None
    if root is not None and root.exists():
        store = open_store(root)
        layout = SessionLayout.from_store(store, config.data.get("sessions", "all"))
        configure_model(config, layout, store.session(layout.names[0]).frame_shape)
        source = f"store {root}"
    else:
        source = f"config.model (no store at config.data.root={config.data.root!r})"
    mesh = sharding.make_mesh(config.mesh)
    check_batch_divides_mesh(config, mesh)
    tx, _ = make_optimizer(config.optim, int(config.train.steps))
    graphdef, state = abstract_state(config, tx, mesh)
    training_mix(config)  # validates the mix against the block and the neuron budget
    batch = abstract_batch(config, sharding.batch_sharding(mesh))
    compiled = compile_train_step(graphdef, state, batch,
                                  abstract_fields(config.train.batch_size, sharding.batch_sharding(mesh)), mesh,
                                  config.model, microbatches_of(config, mesh))
    memory = compiled.memory_analysis()
    params = nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)
    flops = model_flops(config, mesh)
    return {
        "source": source, "devices": mesh.size, "mesh": dict(mesh.shape),
        "num_neuron_rows": int(config.model.num_neuron_rows), "global_batch": int(config.train.batch_size),
        "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "param_bytes": per_device_bytes(params),
        "optimizer_bytes": per_device_bytes(state[1]),
        "other_state_bytes": per_device_bytes(state[0]) - per_device_bytes(params),
        "batch_bytes": per_device_bytes(batch),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "aliased_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "peak_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                          - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
        "flops_per_device": flops or 0.0,
        "flops_per_step": (flops or 0.0) * mesh.size,
    }


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run trains beyond its config. The defaults train a new model over config.data.sessions of the store, or
    resume the workdir's run over its checkpoint's sessions; a fine-tune (train/finetune.py) sets every field.

    layout          the model's sessions (None: the checkpoint's, else config.data.sessions of the store)
    reads           the sessions whose windows the run trains and validates on (None: `layout`)
    map_windows     maps windows over `reads` onto the model's layout (None: they are already on it)
    make_optimizer  config -> (optax transform, {name: schedule}) (None: train/optim.py's recipe)
    init            (config, tx) -> (model, nnx.Optimizer), called under the mesh's sharding rules (None: a fresh
                    model, every parameter born sharded in one compile); a resumed run's checkpoint then replaces it
    """
    layout: SessionLayout | None = None
    reads: SessionLayout | None = None
    map_windows: Callable[[Any], Any] | None = None
    make_optimizer: Callable | None = None
    init: Callable | None = None


class TrainingSession:
    def __init__(self, config, workdir: Path, spec: RunSpec = RunSpec()):
        if config.data.root:  # saved absolute, so evaluate, planted and finetune work from any directory
            config.data.root = str(Path(config.data.root).expanduser().absolute())
        self.config, self.workdir, self.spec = config, workdir, spec
        self.total_steps = int(config.train.steps)
        self.nonfinite = {"run": 0, "total": 0}  # consecutive and total steps skipped for a non-finite loss
        if config.train.get("compile_cache", True):
            compile_cache.use_workdir_cache(workdir)
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.mesh = sharding.make_mesh(config.mesh)
        self.checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.get("keep", 3),
                                         use_async=config.checkpoint.get("use_async", True))
        self._build_data_and_model()
        self.start_step, self.device_hours = self._restore()
        if distributed.is_main_process():
            write_json_atomic(workdir / "config.json", json.loads(config.to_json_best_effort()))
            self.logger = MetricsLogger(workdir, total_steps=self.total_steps, resume_step=self.start_step,
                                        tensorboard=config.train.get("tensorboard", True))
        else:
            self.logger = _Silent()
        self.peak_flops = perf.measure_matmul_peak(jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32)

    # --- construction -------------------------------------------------------------------------------------------
    def _build_data_and_model(self) -> None:
        config = self.config
        if not config.data.root:
            raise UserError("config.data.root: empty; expected the path of a session store")
        store = open_store(config.data.root)
        self.layout = self.spec.layout if self.spec.layout is not None else self._saved_layout()
        if self.layout is None:
            self.layout = SessionLayout.from_store(store, config.data.get("sessions", "all"))
        reads = self.spec.reads if self.spec.reads is not None else self.layout
        configure_model(config, self.layout, store.session(reads.names[0]).frame_shape)
        self._check_resumable()
        check_batch_divides_mesh(config, self.mesh)
        self.windows = self._on_layout(pipeline.TrainWindows(
            store, reads, block=config.model.num_samples, max_neurons=config.model.max_neurons,
            global_batch=config.train.batch_size, seed=config.seed, fraction=config.data.get("fraction", 1.0),
            weighting=config.data.get("weighting", "balanced"), process_index=self.process_index,
            process_count=self.process_count))
        self.data_iter = iter(pipeline.train_dataset(self.windows, num_threads=config.data.get("num_threads", 4),
                                                     prefetch=config.data.get("prefetch", 8)))
        self.validation = self._validation_windows(store, reads)
        self.strategies, self.strategy_probs = training_mix(config)
        self.tx, self.schedules = (self.spec.make_optimizer(config) if self.spec.make_optimizer
                                   else make_optimizer(config.optim, self.total_steps))
        with sharding.use_rules(self.mesh):
            if self.spec.init:
                model, optimizer = self.spec.init(config, self.tx)
            else:  # created inside one jit, so every parameter is born sharded in a single compile
                model, optimizer = nnx.jit(lambda: create_model_and_optimizer(config, self.tx))()
        self._init_from_data(model)
        self.param_counts = count_parameters(model)
        self.graphdef, self.state = nnx.split((model, optimizer))
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self._compile()

    def _init_from_data(self, model) -> None:
        """A fresh run starts each trained session's neurons at their mean rate; with neuron_embed_init =
        "behavior_tuning", their embeddings' first dimensions at their behavior tuning, each channel scaled to unit
        RMS over the session's neurons; with neuron_rf_init = "mapped" (and the gaussian prior or the factorized video
        readout), their receptive fields at their reverse-correlation maps (a resumed run restores all three)."""
        if self.checkpointer.latest_step() is not None:
            return
        cfg = self.config.model
        tuning_init = cfg.neuron_embed_init == "behavior_tuning"
        rf_init = cfg.neuron_rf_init == "mapped" and (cfg.video_readout_prior == "gaussian"
                                                      or cfg.video_factorized_readout)
        trials = pipeline.TUNING_TRIALS if tuning_init or rf_init else pipeline.MEAN_TRIALS
        grid = tuple(model.video.geometry.grids[0][1:]) if rf_init else None  # the finest token grid
        for name, stats in self.windows.neuron_statistics(max_trials=trials, rf_grid=grid).items():
            start = self.layout.row_offsets[self.layout.session_index(name)]
            model.identity.set_mean_rates(stats["mean"], cfg.softplus_beta, start_row=start)
            if rf_init:
                model.set_receptive_fields(stats["rf_centre"], RF_SIZE_MAPPED, start_row=start)
            if tuning_init:
                tuning = stats["behavior_tuning"]
                rms = np.sqrt(np.mean(tuning**2, axis=0))
                model.identity.set_leading_dims(tuning / np.where(rms > 0, rms, 1.0), start_row=start)

    def _check_resumable(self) -> None:
        """UserError naming the config.model keys whose values differ from the workdir's checkpoint, before anything
        compiles (the saved weights fit only the model they were saved from)."""
        if self.checkpointer.latest_step() is None:
            return
        _, meta = self.checkpointer.read_meta()
        current = json.loads(self.config.to_json_best_effort())["model"]  # as the checkpoint saved its own
        changed = changed_model_keys(meta["config"]["model"], current)
        if changed:
            shown = "; ".join(f"model.{key}: checkpoint {old!r}, now {new!r}" for key, old, new in changed[:8])
            raise UserError(f"--workdir {self.workdir}: holds a run of another model ({shown}"
                            f"{'; ...' if len(changed) > 8 else ''}); resume it with its own config "
                            f"({self.workdir / 'config.json'}) or use a new workdir")

    def _saved_layout(self) -> SessionLayout | None:
        if self.checkpointer.latest_step() is None:
            return None
        _, meta = self.checkpointer.read_meta()
        return SessionLayout.from_dict(meta["layout"])

    def _validation_windows(self, store, reads: SessionLayout):
        try:
            windows = pipeline.EvalWindows(store, reads, block=self.config.model.num_samples,
                                           max_neurons=self.config.model.max_neurons,
                                           global_batch=self.config.train.batch_size, seed=self.config.seed,
                                           tier="validation", process_index=self.process_index,
                                           process_count=self.process_count)
        except UserError:
            return None  # no validation/oracle trials in the sessions read: no periodic validation loss
        return self._on_layout(windows)

    def _on_layout(self, windows):
        return windows if self.spec.map_windows is None else self.spec.map_windows(windows)

    def _compile(self) -> None:
        start = time.monotonic()
        self._say("compiling the train step ...")
        self.train_step = compile_train_step(
            self.graphdef, self.state, abstract_batch(self.config, self.batch_sharding),
            abstract_fields(self.config.train.batch_size, self.batch_sharding), self.mesh, self.config.model,
            microbatches_of(self.config, self.mesh))
        _, eval_step = step_functions(self.graphdef, self.config.model)
        with sharding.use_rules(self.mesh):
            self.eval_step = jax.jit(eval_step)
        self.step_flops = model_flops(self.config, self.mesh)
        self._say(f"compiled in {time.monotonic() - start:.1f} s")

    @staticmethod
    def _say(text: str) -> None:
        """A progress line before the logger exists (process 0 only)."""
        if distributed.is_main_process():
            print(text, file=sys.stderr, flush=True)

    # --- data -----------------------------------------------------------------------------------------------------
    def _device_batch(self, host_batch: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, host_batch[k]) for k in MODEL_FIELDS}

    def _fields(self, strategies) -> dict:
        """(B,) fields of one strategy per example, or (1,) fields that every example shares."""
        return {k: jnp.asarray(v) for k, v in stacked_fields(strategies).items()}

    def strategies_for(self, step: int) -> list:
        """The masking strategy of each example of `step`'s global batch: a pure function of (seed, step), so a resumed
        run draws the same ones. config.masking.draw "example" (default) draws one per example, so every batch mixes
        tasks; "batch" draws one for the whole batch (the paper's code draws one per device and step)."""
        rng = np.random.default_rng([self.config.seed, step, 0x6D61736B])
        batch = int(self.config.train.batch_size)
        draw = self.config.masking.get("draw", "example")
        picks = rng.choice(len(self.strategies), size=batch if draw == "example" else 1, p=self.strategy_probs)
        return [self.strategies[i] for i in np.resize(picks, batch)]

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def _restore(self) -> tuple[int, float]:
        if self.checkpointer.latest_step() is None:
            return 0, 0.0
        target = nnx.to_pure_dict(self.state)
        step, restored, meta, data_restored = self.checkpointer.restore(abstract_like(target), self.data_iter)
        nnx.replace_by_pure_dict(self.state, data_to_keys(restored, target))
        if not data_restored:  # saved by another process count: batch b is a pure function of b, so position by step
            self.data_iter.set_state({"next_index": step})
        print(f"resumed from {self.checkpointer.directory / str(step)} (step {step})", flush=True)
        return step, float(meta["device_hours"])

    def save(self, step: int) -> None:
        meta = {"step": step, "seed": self.config.seed, "device_hours": self._device_hours_now(),
                "layout": self.layout.to_dict(), "config": json.loads(self.config.to_json_best_effort()),
                "param_counts": self.param_counts}
        self.checkpointer.save(step, nnx.to_pure_dict(self.state), self.data_iter, meta)

    def _device_hours_now(self) -> float:
        return self.device_hours + (time.monotonic() - self.run_start) * jax.device_count() / 3600

    # --- the loop ---------------------------------------------------------------------------------------------------
    def run(self, stop) -> dict:
        cfg = self.config
        self.run_start = time.monotonic()
        if self.start_step == 0:
            self._log_parameter_counts()
        log_every, save_every = cfg.train.log_every_steps, cfg.checkpoint.every_steps
        eval_every = cfg.train.get("eval_every_steps", 0)
        last_logged, pending = {}, None
        window = {"tokens": 0, "time": time.monotonic(), "steps": 0, "sums": {}}
        step = self.start_step
        while step < self.total_steps and not stop.requested:
            host_batch = next(self.data_iter)
            tokens = int(host_batch["neuron_mask"].sum()) * cfg.model.num_samples * self.process_count
            self.state, metrics = self.train_step(self.state, self._device_batch(host_batch),
                                                  self._fields(self.strategies_for(step)))
            if pending is not None:  # fetched only now, with this step already dispatched
                last_logged = self._finish(*pending, window, log_every) or last_logged
            pending, step = (step, metrics, tokens), step + 1
            if step % save_every == 0 or step == self.total_steps or stop.requested:
                last_logged = self._finish(*pending, window, log_every, force=True) or last_logged
                pending = None
                self.save(step)
            if eval_every and step % eval_every == 0:
                self._validate(step)
        if pending is not None:
            last_logged = self._finish(*pending, window, log_every, force=True) or last_logged
        if stop.requested:
            self.logger.message(f"stopped by signal at step {step}; checkpoint saved")
        return last_logged

    def _finish(self, step: int, metrics, tokens: int, window: dict, log_every: int, force: bool = False) -> dict | None:
        """Fetches a dispatched step's metrics, stops on a non-finite loss, and logs every `log_every` steps."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss"]):
            # config.optim.skip_nonfinite > 0: the optimizer (optax.apply_if_finite) left the model untouched; count it
            # and go on, up to that many in a row. 0: stop.
            self.nonfinite["run"] += 1
            self.nonfinite["total"] += 1
            limit = int(self.config.optim.get("skip_nonfinite", 0))
            if limit == 0 or self.nonfinite["run"] >= limit:
                last = self.checkpointer.latest_step()
                raise FloatingPointError(
                    f"non-finite loss ({values['loss']}) at step {step + 1}; stopping. The last good checkpoint is "
                    f"{'step ' + str(last) if last is not None else 'none'} in {self.checkpointer.directory}")
            self.logger.message(f"step {step + 1}: non-finite loss; update skipped "
                                f"({self.nonfinite['total']} skipped so far)")
            return None
        self.nonfinite["run"] = 0
        window["steps"] += 1
        window["tokens"] += tokens
        for key, value in values.items():
            window["sums"][key] = window["sums"].get(key, 0.0) + value
        if not force and (step + 1) % log_every:
            return None
        now = time.monotonic()
        elapsed = max(now - window["time"], 1e-9)
        step_time = elapsed / window["steps"]
        means = {key: total / window["steps"] for key, total in window["sums"].items()}  # over the logging interval
        record = {"step": step + 1, **means, "lr": float(self.schedules["core"](step)),
                  "session_lr": float(self.schedules["session"](step)), "tokens_per_s": window["tokens"] / elapsed,
                  "step_time_s": step_time, "device_hours": self._device_hours_now(),
                  "memory_mb": perf.memory_in_use_mb(), "skipped_nonfinite": self.nonfinite["total"]}
        if self.step_flops:
            record["mfu"] = self.step_flops / step_time / self.peak_flops
        window.update(tokens=0, time=now, steps=0, sums={})
        self.logger.write(record)
        self.logger.progress(step + 1, f"loss {means['loss']:.4f} | {record['tokens_per_s']:,.0f} tok/s")
        return record

    def _validate(self, step: int) -> None:
        if self.validation is None:
            return
        names = masking.presets_for(self.config.model.max_neurons, self.config.model.num_samples)
        total, weight = 0.0, 0.0
        for b in range(min(len(self.validation), self.config.train.get("eval_batches", 8))):
            host = self.validation(b)
            loss, parts = self.eval_step(self.state, self._device_batch(host),
                                         self._fields([masking.PRESETS[names[b % len(names)]]]))
            n = float(parts.get("n_targets", 1.0))
            total, weight = total + float(loss) * n, weight + n
        record = {"step": step, "split": "validation", "loss": total / max(weight, 1e-9)}
        self.logger.write(record)
        self.logger.message(f"step {step}: validation loss {record['loss']:.4f}")

    def _log_parameter_counts(self) -> None:
        counts = self.param_counts
        self.logger.write({"step": 0, **{f"params_{k}": v for k, v in counts.items()},
                           "step_flops": self.step_flops or 0.0, "devices": jax.device_count(),
                           "mesh": dict(self.mesh.shape), "unique_windows": self.windows.num_windows})
        self.logger.message(f"parameters: {counts['total']:,} total, {counts['core']:,} core (non-embedding), "
                            f"{counts['embedding']:,} in per-session tables; mesh {dict(self.mesh.shape)}")

    def close(self) -> None:
        self.checkpointer.close()
        if hasattr(self, "logger"):
            self.logger.close()


class _Silent:
    """The logger of processes other than 0: process 0 alone writes metrics.jsonl and prints progress."""

    def write(self, record: dict) -> None:
        pass

    def progress(self, step: int, text: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
