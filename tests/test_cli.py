"""The command surface: help works, bad usage exits 2, errors are one line with the contract's exit codes."""
import argparse
import subprocess
import sys
import types

import pytest

from omnimouse_jax import cli
from omnimouse_jax.errors import UserError


def _fake_command(monkeypatch, exc):
    module = types.ModuleType("fake_command")

    def run(args):
        raise exc

    module.run = run
    monkeypatch.setitem(sys.modules, "fake_command", module)
    return "fake_command"


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "omnimouse_jax.cli", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    module = _fake_command(monkeypatch, UserError("store/x/manifest.json: missing; expected a session manifest"))
    assert cli.dispatch(module, argparse.Namespace()) == 2
    assert capsys.readouterr().err.splitlines() == ["omnimouse: error: store/x/manifest.json: missing; expected a session manifest"]


def test_unexpected_error_exits_1(monkeypatch, capsys):
    module = _fake_command(monkeypatch, RuntimeError("disk on fire"))
    assert cli.dispatch(module, argparse.Namespace()) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "RuntimeError: disk on fire" in err[0]
