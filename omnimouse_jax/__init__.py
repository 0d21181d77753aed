"""OmniMouse-JAX: multi-modal, multi-task brain models of mouse visual cortex, and the tools to study how they scale."""

__version__ = "0.1.0"


def open_store(path):
    """Opens a session store (see `omnimouse_jax.data.store`)."""
    from omnimouse_jax.data.store import open_store as _open_store

    return _open_store(path)
