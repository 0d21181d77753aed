"""`omnimouse finetune`: adapt a pretrained model to new sessions (new mice) in two stages.

    omnimouse finetune --from W --data STORE --sessions NAME[,NAME...] --workdir W2
        [--config experiments/configs/finetune.py] [--config.stage1.steps=500 --config.stage2.steps=0 ...]

The model of W (its newest checkpoint) gets rows for the new sessions appended to its per-session tables (neuron
embeddings and biases, session embeddings, and animal embeddings for new animals); every pretrained value is kept.
Training then samples the new sessions only, at their rows of the extended layout.

  stage 1  only the new rows train; the core, the shared projection of the tables and the pretrained sessions' rows
           are frozen (bit-identical), at stage1.lr_scale x the pretraining recipe's rates.
  stage 2  (stage2.steps > 0) the core trains too, at stage2.lr_scale x the pretraining rates (0.1 by default);
           the pretrained sessions' rows stay frozen, since no fine-tuning data reaches them.

One optimizer runs both stages: the stage is a function of its update count (stage 1 is steps [0, S1), stage 2 is
[S1, S1 + S2), config.train.steps = S1 + S2), and freezing is a learning rate of exactly 0. So a fine-tune is one
ordinary training run: one compiled step, checkpoints in W2/checkpoints with the pretraining recipe's optimizer
state (W2 is a normal workdir for `omnimouse evaluate` and `load_trained`), and a rerun resumes from W2's newest
checkpoint wherever it falls, stage boundary included.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from omnimouse_jax.config import load_config_file
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.store import open_store
from omnimouse_jax.errors import UserError
from omnimouse_jax.model.tokenizers import NeuronIdentity
from omnimouse_jax.resources import shipped
from omnimouse_jax.train.checkpoint import saved_record
from omnimouse_jax.train.optim import make_optimizer, schedule
from omnimouse_jax.train.restore import config_from_json, load_trained
from omnimouse_jax.train.session import RunSpec, TrainingSession
from omnimouse_jax.train.trainer import run_until_done_or_signalled

DEFAULT_CONFIG = shipped("experiments/configs/finetune.py")
SECTIONS = ("train", "checkpoint", "data")  # finetune-config sections laid over the pretrained run's config


# --- layouts --------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SubLayout:
    """Some sessions of a layout as a layout of their own (`sub`, what the pipeline reads), and the map from its
    batches' indices to the rows of the full layout (what the model reads)."""

    full: SessionLayout
    sub: SessionLayout

    @classmethod
    def of(cls, full: SessionLayout, names) -> "SubLayout":
        missing = [n for n in names if n not in full.names]
        if missing:
            raise UserError(f"sessions {missing}: not in the model's layout {list(full.names)}")
        k = [full.session_index(n) for n in names]
        return cls(full, SessionLayout(tuple(names), tuple(full.animals[i] for i in k),
                                       tuple(full.n_neurons[i] for i in k)))

    def apply(self, batch: dict) -> dict:
        """The batch with neuron, session and animal indices of the full layout (padding neurons keep row 0)."""
        full, sub = self.full, self.sub
        session_map = np.array([full.session_index(n) for n in sub.names], np.int32)
        row_shift = np.array([full.row_offsets[full.session_index(n)] - sub.row_offsets[k]
                              for k, n in enumerate(sub.names)], np.int32)
        animal_map = np.array([full.animal_names.index(a) for a in sub.animal_names], np.int32)
        k_B = batch["session_index"]
        return {**batch,
                "neuron_index": np.where(batch["neuron_mask"], batch["neuron_index"] + row_shift[k_B][:, None],
                                         0).astype(np.int32),
                "session_index": session_map[k_B], "animal_index": animal_map[batch["animal_index"]]}


class MappedWindows:
    """Training or evaluation windows over `view.sub` whose batches index the rows of `view.full`."""

    def __init__(self, windows, view: SubLayout):
        self.windows, self.view = windows, view

    @property
    def num_windows(self) -> int:
        return self.windows.num_windows

    def __len__(self) -> int:
        return len(self.windows)

    def neuron_statistics(self, max_trials: int, rf_grid=None) -> dict:
        return self.windows.neuron_statistics(max_trials, rf_grid=rf_grid)

    def __call__(self, batch_index: int) -> dict:
        return self.view.apply(self.windows(batch_index))


# --- the optimizer ----------------------------------------------------------------------------------------------

def first_trainable_row(path: tuple, first_new_row: dict[str, int]) -> int | None:
    """For a per-session table at `path`: the first row fine-tuning may change, `first_new_row[table]` (the table's
    pretrained row count; NeuronIdentity.table_rows). None for every other parameter (the core, and the tables'
    shared projection)."""
    if len(path) > 1 and str(path[0]) == "identity" and str(path[1]) in first_new_row:
        return first_new_row[str(path[1])]
    return None


def stage_schedules(optim_cfg, stages, accumulate: int = 1) -> dict:
    """{group: learning rate as a function of the optimizer's update count} over both stages: stage 1 (the first
    stage1.steps / accumulate updates) gives the core rate 0 and the tables stage1.lr_scale x config.optim.session_lr;
    stage 2 gives both groups stage2.lr_scale x their pretraining rates. Each stage has its own warmup (in updates)
    and the pretraining schedule's shape (optim.schedule) over its own length."""
    first, second = stages.stage1, stages.stage2
    boundary = int(first.steps) // accumulate

    def of(stage, peak):
        cfg = copy.deepcopy(optim_cfg)
        with cfg.ignore_type():
            cfg.warmup_steps = int(stage.warmup_steps)
        return schedule(peak * stage.lr_scale, cfg, max(int(stage.steps) // accumulate, 1))

    core2, session1, session2 = of(second, optim_cfg.lr), of(first, optim_cfg.session_lr), of(second,
                                                                                             optim_cfg.session_lr)
    return {"core": lambda count: jnp.where(count < boundary, 0.0, core2(count - boundary)),
            "session": lambda count: jnp.where(count < boundary, session1(count), session2(count - boundary))}


def finetune_optimizer(optim_cfg, stages, first_new_row: dict[str, int]):
    """(transformation, {group: schedule}) of a two-stage fine-tune: the pretraining recipe (config.optim: AdamW
    with per-session groups, clipping, accumulation) at a unit rate, its updates multiplied by a `stage_schedules`
    rate at the current update count (the tables' rows: "session"; every other parameter, the shared projection of
    the tables included: "core"), and zero for the pretrained rows of the tables.

    Freezing is a rate of exactly 0: the updates of frozen values are exact zeros, so they stay bit-identical, and
    the optimizer state keeps the pretraining recipe's structure, so a fine-tuned workdir's checkpoints restore into
    it (load_trained, omnimouse evaluate). The core's moments see its gradients during stage 1, so stage 2 starts
    with them estimated. The schedules are returned as functions of the training step (for the logs)."""
    accumulate = int(optim_cfg.get("grad_accum_steps", 1))
    if int(stages.stage1.steps) % accumulate:
        raise UserError(f"finetune config stage1.steps={stages.stage1.steps}: expected a multiple of the pretrained "
                        f"run's config.optim.grad_accum_steps ({accumulate})")
    unit = copy.deepcopy(optim_cfg)
    with unit.ignore_type():
        unit.update(lr=1.0, session_lr=1.0, warmup_steps=0, schedule="constant")
    inner, _ = make_optimizer(unit, 1)  # AdamW directions including weight decay, at a rate of exactly 1
    rates = stage_schedules(optim_cfg, stages, accumulate)

    def update(updates, state, params=None):
        count = optax.tree.get_all_with_path(state, "count")[0][1]  # updates done so far
        updates, state = inner.update(updates, state, params)

        def scale(path, u):
            first = first_trainable_row(tuple(getattr(k, "key", getattr(k, "name", k)) for k in path), first_new_row)
            u = u * rates["core" if first is None else "session"](count).astype(u.dtype)
            if not first:
                return u
            rows = jax.lax.broadcasted_iota(jnp.int32, u.shape, 0)
            return jnp.where(rows >= first, u, jnp.zeros_like(u))

        return jax.tree_util.tree_map_with_path(scale, updates), state

    by_step = {group: (lambda step, f=f: float(f(step // accumulate))) for group, f in rates.items()}
    return optax.GradientTransformation(inner.init, update), by_step


# --- the run --------------------------------------------------------------------------------------------------------

def _pretrained_meta(source: Path) -> dict:
    """The newest checkpoint's record (config, layout) of a pretrained workdir, without touching the workdir."""
    directory = source / "checkpoints"
    record = saved_record(directory)
    if record is None:
        raise UserError(f"--from {source}: no checkpoint in {directory}; expected a trained workdir "
                        f"(omnimouse train --workdir {source} ...)")
    return record[1]


def run_config(pretrained_config: dict, settings, store_root, names, source):
    """The fine-tuning run's config: the pretrained run's, with the new sessions as its data, the finetune config's
    non-None `train`/`checkpoint`/`data` values laid over it, train.steps = stage1.steps + stage2.steps, and the
    stage settings under config.finetune."""
    config = config_from_json(pretrained_config)
    for section in SECTIONS:
        for key, value in settings.get(section, {}).items():
            if key not in config[section]:
                raise UserError(f"finetune config: {section}.{key} is not a key of the pretrained run's "
                                f"config.{section} ({sorted(config[section].keys())})")
            if value is not None:
                with config[section].ignore_type():
                    config[section][key] = value
    for stage in ("stage1", "stage2"):
        steps, warmup, scale = (settings[stage][k] for k in ("steps", "warmup_steps", "lr_scale"))
        if steps < 0 or warmup < 0 or scale <= 0:
            raise UserError(f"finetune config {stage}: expected steps >= 0, warmup_steps >= 0 and lr_scale > 0, got "
                            f"{steps}, {warmup}, {scale}")
    total = int(settings.stage1.steps) + int(settings.stage2.steps)
    if total == 0:
        raise UserError("finetune config: stage1.steps + stage2.steps = 0; expected at least one step")
    with config.ignore_type():
        config.seed = int(settings.seed)
        config.data.root, config.data.sessions = str(store_root), tuple(names)
        config.train.steps = total
        config.finetune = ml_collections.ConfigDict({
            "source": str(source), "stage1": settings.stage1.to_dict(), "stage2": settings.stage2.to_dict()})
    return config


def finetune(source, store_root, sessions, workdir, settings=None) -> dict:
    """Fine-tunes the model of workdir `source` to `sessions` of the store at `store_root` in `workdir`, resuming
    from workdir's checkpoint if it has one. `settings`: a finetune config (default: experiments/configs/finetune.py).
    Returns the last logged training metrics. UserError for a `source` without a checkpoint, a session already in its
    model or absent from the store, a frame shape other than the model's, or a `workdir` holding another run."""
    source, workdir = Path(source), Path(workdir)
    settings = settings if settings is not None else load_config_file(str(DEFAULT_CONFIG))
    names = list(sessions)
    if not names:
        raise UserError("--sessions: empty; expected the names of the new sessions")
    meta = _pretrained_meta(source)
    pretrained = SessionLayout.from_dict(meta["layout"])
    clash = [n for n in names if n in pretrained.names]
    if clash:
        raise UserError(f"--sessions: {clash} already in the model of {source} "
                        f"(its sessions: {list(pretrained.names)})")
    store = open_store(store_root)
    missing = [n for n in names if n not in store.sessions]
    if missing:
        raise UserError(f"--sessions: {missing} not in store {store_root}; it has {store.sessions}")
    frame = tuple(meta["config"]["model"]["frame_shape"])
    odd = [n for n in names if tuple(store.session(n).frame_shape) != frame]
    if odd:
        raise UserError(f"--sessions: {odd} in {store_root} have frames of another shape than the model's {frame}")
    layout = pretrained.extend(SessionLayout.from_store(store, names))
    config = run_config(meta["config"], settings, store_root, names, source)
    _check_workdir(workdir, layout)

    workdir.mkdir(parents=True, exist_ok=True)
    return run_until_done_or_signalled(
        TrainingSession(config, workdir, finetune_spec(source, pretrained, layout, names)))


def _check_workdir(workdir: Path, layout: SessionLayout) -> None:
    """UserError if workdir's newest checkpoint holds a layout other than `layout` (another run's workdir)."""
    record = saved_record(workdir / "checkpoints")
    saved = None if record is None else SessionLayout.from_dict(record[1]["layout"])
    if saved is not None and saved != layout:
        raise UserError(f"--workdir {workdir}: holds a run with sessions {list(saved.names)}, not the fine-tune of "
                        f"{list(layout.names)} asked for; use a new workdir")


def finetune_spec(source: Path, pretrained: SessionLayout, layout: SessionLayout, sessions) -> RunSpec:
    """The run of a fine-tune: the pretrained model of workdir `source` (layout `pretrained`) grown to `layout`, which
    adds the new `sessions`; windows of the new sessions only, mapped onto their rows; `finetune_optimizer`."""
    view = SubLayout.of(layout, sessions)
    pretrained_rows = NeuronIdentity.table_rows(pretrained.num_neuron_rows, pretrained.num_sessions,
                                                pretrained.num_animals)

    def init(config, tx):
        """The pretrained model with its tables grown by fresh rows for the new sessions (identity.grow), every
        parameter placed by its logical axes, and a fresh optimizer."""
        model = load_trained(source, mesh_config=config.mesh).model
        cfg = config.model

        @nnx.jit
        def grow(model):
            model.identity.grow(cfg.num_neuron_rows, cfg.num_sessions, cfg.num_animals, nnx.Rngs(config.seed))
            state = nnx.state(model)
            nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
            return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

        return grow(model)

    return RunSpec(layout=layout, reads=view.sub, map_windows=functools.partial(MappedWindows, view=view),
                   make_optimizer=lambda config: finetune_optimizer(config.optim, config.finetune, pretrained_rows),
                   init=init)
