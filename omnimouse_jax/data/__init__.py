"""Data layer: source files -> session store -> input pipeline."""

from omnimouse_jax import open_store

__all__ = ["open_store"]
