"""Every use of a private JAX API in omnimouse_jax, behind small named functions.

JAX gives no public way to ask these questions; keeping them here means a JAX upgrade that moves one breaks one
file, and the pinned JAX version (requirements) is the one they were checked against. Importing these modules creates
no backend: that happens only on first use of a device.
"""
from __future__ import annotations

import jax
from jax._src import cloud_tpu_init, distributed as jax_distributed, xla_bridge
from jax._src.lib import xla_client


def backends_are_initialized() -> bool:
    """True once any JAX backend (device client) has been created in this process."""
    # No public API says whether a backend exists yet; jax.devices() would create one, which is what we must avoid
    # before jax.distributed.initialize or before setting jax_num_cpu_devices.
    return xla_bridge.backends_are_initialized()


def running_in_cloud_tpu_vm() -> bool:
    """True when jax was imported on a Cloud TPU VM (so jax.distributed can find the pod's hosts itself)."""
    # JAX sets this flag while importing on a TPU VM and exposes it nowhere publicly.
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def distributed_client():
    """The coordinator's key-value client of the joined process group, or None in a single process."""
    # jax.distributed has no public accessor for its client, whose key-value store lets processes compare configs.
    return jax_distributed.global_state.client


def topology_fingerprint(devices) -> str:
    """What JAX's persistent compilation cache puts in every key for these devices: their topology's fingerprint, or
    where the backend has none, their device kinds."""
    # The cache key's device part (jax._src.cache_key._hash_accelerator_config) has no public accessor; on the CPU
    # backend the fingerprint differs between the processes of one run, on others it should not.
    try:
        return str(xla_client.get_topology_for_devices(list(devices)).fingerprint())
    except jax.errors.JaxRuntimeError:  # a backend without topologies: the error and fallback JAX's key uses
        return ",".join(d.device_kind for d in devices)


def key_impl_of_dtype(dtype):
    """The PRNG implementation a typed-key dtype carries (of a ShapeDtypeStruct, which has no key_impl())."""
    # jax.random.key_impl takes only arrays; an abstract key's implementation is reachable only through its dtype.
    return dtype._impl
