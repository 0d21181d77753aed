"""Installs the `omnimouse_jax` package and the `omnimouse` console script."""
from pathlib import Path

from setuptools import find_packages, setup

# experiments/configs, experiments/sweeps and launch/ go to <prefix>/share/omnimouse-jax/ (omnimouse_jax/resources.py),
# so a non-editable install finds its configs, sweeps and launch scripts.
SHIPPED = ("experiments/configs", "experiments/sweeps", "launch")

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
    data_files=[(f"share/omnimouse-jax/{d}", sorted(str(p) for p in Path(d).iterdir() if p.is_file()))
                for d in SHIPPED],
    entry_points={"console_scripts": ["omnimouse=omnimouse_jax.cli:main"]},
)
