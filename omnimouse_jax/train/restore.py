"""Loading a trained workdir for inference or fine-tuning: config, session layout and model weights from the newest
(or a chosen) checkpoint, placed on a data-parallel mesh over the local devices."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.errors import UserError
from omnimouse_jax.model.omnimouse import ADDED_OPTIONS, ADDED_VIDEO_OPTIONS
from omnimouse_jax.parallel import sharding
from omnimouse_jax.train.checkpoint import Checkpointer, abstract_like, data_to_keys
from omnimouse_jax.train.session import abstract_model


def config_from_json(data: dict) -> ml_collections.ConfigDict:
    """A ConfigDict from the JSON saved with a checkpoint (JSON lists become the tuples the config code uses); model
    options newer than the checkpoint get the values its model was built with."""
    def convert(value):
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(convert(v) for v in value)
        return value

    config = convert(data)
    if "model" in config:
        config["model"] = {**ADDED_OPTIONS, **config["model"]}
        if "video" in config["model"]:
            config["model"]["video"] = {**ADDED_VIDEO_OPTIONS, **config["model"]["video"]}
    return ml_collections.ConfigDict(config)


@dataclasses.dataclass
class TrainedModel:
    model: nnx.Module
    config: ml_collections.ConfigDict
    layout: SessionLayout
    step: int
    workdir: Path
    mesh: jax.sharding.Mesh
    meta: dict


def load_trained(workdir, *, step: int | None = None, mesh_config=None) -> TrainedModel:
    """The model of `workdir` at `step` (default: newest readable checkpoint). UserError if there is none."""
    workdir = Path(workdir)
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"{workdir}: no checkpoints/ directory; train first (omnimouse train --workdir {workdir} ...)")
    checkpointer = Checkpointer(directory, use_async=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise UserError(f"{directory}: no checkpoint; train first (omnimouse train --workdir {workdir} ...)")
        if step is not None and step not in steps:
            raise UserError(f"{directory}: no checkpoint at step {step}; steps are {steps}")
        _, meta = checkpointer.read_meta(step)  # the run's config and layout, the same at every step
        config = config_from_json(meta["config"])
        layout = SessionLayout.from_dict(meta["layout"])
        mesh = sharding.make_mesh(mesh_config or ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
        # Shapes and shardings only (no compile, no allocation); orbax reads the model's weights straight into place
        # and leaves the optimizer's moments (two thirds of the checkpoint) on disk. The saved state is the pair
        # (model, optimizer): the model is its entry 0.
        graphdef, abstract = abstract_model(config, mesh)
        target = {0: nnx.to_pure_dict(abstract)}
        restored_step, restored, meta, _ = checkpointer.restore(abstract_like(target), step=step, read_only=True,
                                                                partial=True)
        state = jax.tree.map(lambda x: x, abstract)
        nnx.replace_by_pure_dict(state, data_to_keys(restored, target)[0])
        model = nnx.merge(graphdef, state)
    finally:
        checkpointer.close()
    return TrainedModel(model, config, layout, restored_step, workdir, mesh, meta)
