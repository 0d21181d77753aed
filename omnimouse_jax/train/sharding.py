"""The one place that maps logical axis names to mesh axes.

Model code names the logical axes of every parameter (through `partitioned`) and of its main activations (through
`constrain`); this module owns the mesh axis names and the rules that translate one into the other. Without an
active mesh everything here is a no-op, so the same model code runs on a laptop CPU and on a sharded pod.

A mesh used with these rules must carry every axis in MESH_AXES (size 1 where unused).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import jax
from flax import nnx
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes (None = replicated). Every logical name used by the model must appear here.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
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

_RULES = dict(LOGICAL_RULES)


def _mesh_active() -> bool:
    return not jax.sharding.get_abstract_mesh().empty


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """The PartitionSpec the rules give for a tuple of logical axis names (unknown names are a KeyError)."""
    return PartitionSpec(*(None if name is None else _RULES[name] for name in logical_axes))


def partitioned(init: Callable, *logical_axes: str | None) -> Callable:
    """Wraps a parameter initializer so the parameter carries its logical axis names.

    Inside `use_rules(mesh)` the parameter is created already sharded; outside any mesh it is a plain array with
    the names kept as metadata (read them back with `nnx.get_partition_spec` under `use_rules`).
    """
    for name in logical_axes:
        if name is not None and name not in _RULES:
            raise KeyError(f"logical axis {name!r} has no sharding rule in LOGICAL_RULES")
    return nnx.with_partitioning(init, tuple(logical_axes), eager_sharding=_mesh_active())


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical axis names; returns x unchanged when no mesh is active."""
    if not _mesh_active():
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes))


@contextlib.contextmanager
def use_rules(mesh: jax.sharding.Mesh) -> Iterator[None]:
    """Activates `mesh` and the logical rules: models built and run inside are sharded by their axis names."""
    missing = [axis for axis in MESH_AXES if axis not in mesh.axis_names]
    if missing:
        raise ValueError(f"mesh axes {mesh.axis_names} lack {missing}; meshes must carry all of {MESH_AXES}")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield
