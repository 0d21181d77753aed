"""Data layer: source files -> session store -> input pipeline."""

__all__ = ["open_store"]


def open_store(path):
    """Opens a session store (see `omnimouse_jax.data.store`); imported on first use, so that importing this package
    stays light."""
    from omnimouse_jax.data.store import open_store as _open_store  # lazy: `omnimouse --help` imports this package

    return _open_store(path)
