"""Installs the `omnimouse_jax` package and the `omnimouse` console script."""
from setuptools import find_packages, setup

setup(
    name="omnimouse-jax",
    version="0.1.0",
    description="Multi-modal, multi-task foundation models of mouse visual cortex in JAX, with scaling-law tooling.",
    python_requires=">=3.11",
    packages=find_packages(include=["omnimouse_jax", "omnimouse_jax.*"]),
    # Exact versions live in requirements.txt; these are the direct dependencies.
    install_requires=[
        "jax", "flax", "optax", "orbax-checkpoint", "grain", "ml-collections", "tensorstore",
        "numpy", "scipy", "matplotlib", "tensorboardX", "pyarrow", "pynwb",
    ],
    entry_points={"console_scripts": ["omnimouse=omnimouse_jax.cli:main"]},
)
