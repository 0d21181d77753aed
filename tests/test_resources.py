"""Shipped files (configs, sweeps, launch scripts) are found from a checkout and from a non-editable install."""
from __future__ import annotations

import ast
from pathlib import Path

from omnimouse_jax import resources

REPO = Path(__file__).resolve().parents[1]


def _setup_shipped() -> tuple[str, ...]:
    """setup.py's SHIPPED: the directories installed under <prefix>/share/omnimouse-jax."""
    for node in ast.parse((REPO / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SHIPPED":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no SHIPPED")


def _shipped_calls() -> list[str]:
    """Every literal path the package passes to resources.shipped."""
    found = []
    for path in (REPO / "omnimouse_jax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "shipped" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.append(node.args[0].value)
    return found


def test_every_file_the_package_asks_for_is_installed_and_present():
    calls = _shipped_calls()
    assert {"experiments/sweeps/scaling_demo.py", "experiments/configs/finetune.py", "launch"} <= set(calls)
    directories = _setup_shipped()
    for relative in calls:
        assert (REPO / relative).exists(), relative
        assert any(relative == d or relative.startswith(d + "/")
                   for d in directories), f"{relative} is not under setup.py's SHIPPED {directories}"
    # A sweep finds its config next door, so the installed layout must keep both directories.
    assert {"experiments/configs", "experiments/sweeps"} <= set(directories)


def test_checkout_copy_first_then_the_installed_copy(tmp_path, monkeypatch):
    checkout, installed = tmp_path / "checkout", tmp_path / "prefix" / "share" / "omnimouse-jax"
    (installed / "experiments" / "configs").mkdir(parents=True)
    (installed / "experiments" / "configs" / "finetune.py").write_text("")
    monkeypatch.setattr(resources, "CHECKOUT", checkout)
    monkeypatch.setattr(resources, "INSTALLED", installed)
    assert resources.shipped("experiments/configs/finetune.py") == installed / "experiments/configs/finetune.py"
    (checkout / "experiments" / "configs").mkdir(parents=True)
    (checkout / "experiments" / "configs" / "finetune.py").write_text("")
    assert resources.shipped("experiments/configs/finetune.py") == checkout / "experiments/configs/finetune.py"
    # Missing everywhere: the installed path, which the caller's file-not-found error then names.
    assert resources.shipped("launch") == installed / "launch"
