"""The one place that maps logical axis names to mesh axes.

Model code names the logical axes of every parameter (through `partitioned`) and of its main activations (through
`constrain`); this module owns the mesh axis names and the rules that translate one into the other. Without an
active mesh everything here is a no-op, so the same model code runs on a laptop CPU and on a sharded pod.

A mesh used with these rules must carry every axis in MESH_AXES (size 1 where unused).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from omnimouse_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes (None = replicated), as data. Parameters and activations share names but not rules:
# FSDP splits parameters along `embed` over `fsdp`, while activations stay whole along `embed` and are split along
# `batch`. Every logical name used by the model must appear in both.
ACTIVATION_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("neurons", None),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("neuron_rows", "fsdp"),  # millions of neurons: the table is split along its rows
    ("neuron_embed", None),
    ("sessions", None),
    ("animals", None),
    ("latents", None),
    ("channels", None),
    ("samples", None),
)
PARAM_RULES = tuple((name, "fsdp" if name == "embed" else axes) for name, axes in ACTIVATION_RULES)
LOGICAL_RULES = PARAM_RULES  # what nnx.logical_axis_rules sees: it places parameters

_RULES = dict(ACTIVATION_RULES)
_PARAM_RULES = dict(PARAM_RULES)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    """A mesh with axes (data, fsdp, tensor) from config.mesh; one axis may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
    if bad or len(free) > 1:
        raise UserError(f"config.mesh.{(bad or free)[0]}: expected a positive size, or -1 on one axis only")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if len(devices) % fixed:
            raise UserError(f"config.mesh: the fixed axes ({fixed} devices) do not divide the {len(devices)} devices")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise UserError(f"config.mesh: data x fsdp x tensor = {math.prod(sizes.values())} devices, but "
                        f"{len(devices)} are available; set one axis to -1 to take the rest")
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Batches are split along their leading axis over the data-parallel axes (data and fsdp)."""
    return jax.sharding.NamedSharding(mesh, logical_to_spec(("batch",)))


def _mesh_active() -> bool:
    return not jax.sharding.get_abstract_mesh().empty


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """The PartitionSpec of an activation with these logical axis names (unknown names are a KeyError)."""
    return PartitionSpec(*(None if name is None else _RULES[name] for name in logical_axes))


def partitioned(init: Callable, *logical_axes: str | None) -> Callable:
    """Wraps a parameter initializer so the parameter carries its logical axis names.

    Inside `use_rules(mesh)` the parameter is created already sharded; outside any mesh it is a plain array with
    the names kept as metadata (read them back with `nnx.get_partition_spec` under `use_rules`).
    """
    for name in logical_axes:
        if name is not None and name not in _PARAM_RULES:
            raise KeyError(f"logical axis {name!r} has no sharding rule in PARAM_RULES")
    return nnx.with_partitioning(init, tuple(logical_axes), eager_sharding=_mesh_active())


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical axis names; returns x unchanged when no mesh is active."""
    if not _mesh_active():
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes))


def take_rows(table: jax.Array, index: jax.Array, rows_axis: str) -> jax.Array:
    """table[index] (rows along axis 0) for a table split along its rows by the rule of `rows_axis`, moving only the
    rows that `index` names rather than the whole table.

    `index` (B, ...) is split along B like a batch. Each device looks up the indices of its whole row-shard group in
    its own rows (zeros elsewhere) and a reduce-scatter hands every device the complete rows of its batch shard. The
    gradient is scattered into each device's own rows, so it and the optimizer state stay split like the table.
    Without a mesh, or when the table is not split, this is jnp.take."""
    axis, batch = _PARAM_RULES[rows_axis], _RULES["batch"]
    mesh = jax.sharding.get_abstract_mesh()
    if (not _mesh_active() or not isinstance(axis, str) or mesh.shape[axis] == 1 or axis not in batch
            or table.shape[0] % mesh.shape[axis] or index.shape[0] % math.prod(mesh.shape[a] for a in batch)):
        return jnp.take(table, index, axis=0)
    rows_per_shard = table.shape[0] // mesh.shape[axis]
    row_dims = (None,) * (table.ndim - 1)

    def lookup(table_shard, index_shard):
        group_index = jax.lax.all_gather(index_shard, axis, axis=0, tiled=True)  # the row-shard group's batch
        local = group_index - jax.lax.axis_index(axis) * rows_per_shard
        mine = (local >= 0) & (local < rows_per_shard)
        rows = jnp.take(table_shard, jnp.where(mine, local, 0), axis=0)
        rows = jnp.where(mine.reshape(mine.shape + (1,) * len(row_dims)), rows, 0)
        return jax.lax.psum_scatter(rows, axis, scatter_dimension=0, tiled=True)

    index_spec = (batch,) + (None,) * (index.ndim - 1)
    return jax.shard_map(lookup, in_specs=(PartitionSpec(axis, *row_dims), PartitionSpec(*index_spec)),
                         out_specs=PartitionSpec(*index_spec, *row_dims))(table, index)


@contextlib.contextmanager
def use_rules(mesh: jax.sharding.Mesh) -> Iterator[None]:
    """Activates `mesh` and the logical rules: models built and run inside are sharded by their axis names."""
    missing = [axis for axis in MESH_AXES if axis not in mesh.axis_names]
    if missing:
        raise ValueError(f"mesh axes {mesh.axis_names} lack {missing}; meshes must carry all of {MESH_AXES}")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield
