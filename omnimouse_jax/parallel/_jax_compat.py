"""Every use of a private JAX API in omnimouse_jax, behind small named functions.

JAX gives no public way to ask these questions; keeping them here means a JAX upgrade that moves one breaks one
file, and the pinned JAX version (requirements) is the one they were checked against. Imports are inside the
functions so importing this module does not import jax.
"""
from __future__ import annotations


def backends_are_initialized() -> bool:
    """True once any JAX backend (device client) has been created in this process."""
    # No public API says whether a backend exists yet; jax.devices() would create one, which is what we must avoid
    # before jax.distributed.initialize or before setting jax_num_cpu_devices.
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def running_in_cloud_tpu_vm() -> bool:
    """True when jax was imported on a Cloud TPU VM (so jax.distributed can find the pod's hosts itself)."""
    # JAX sets this flag while importing on a TPU VM and exposes it nowhere publicly.
    from jax._src import cloud_tpu_init

    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def distributed_client():
    """The coordinator's key-value client of the joined process group, or None in a single process."""
    # jax.distributed has no public accessor for its client, whose key-value store lets processes compare configs.
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def key_impl_of_dtype(dtype):
    """The PRNG implementation a typed-key dtype carries (of a ShapeDtypeStruct, which has no key_impl())."""
    # jax.random.key_impl takes only arrays; an abstract key's implementation is reachable only through its dtype.
    return dtype._impl
