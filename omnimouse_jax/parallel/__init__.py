"""Parallelism: the device mesh and its logical-axis rules (sharding.py), the multi-process runtime
(distributed.py), and the one module that touches private JAX APIs (_jax_compat.py)."""
