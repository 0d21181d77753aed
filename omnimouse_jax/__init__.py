"""OmniMouse-JAX: multi-modal, multi-task brain models of mouse visual cortex, and the tools to study how they scale."""

__version__ = "0.1.0"
