"""The command surface: help works, bad usage exits 2, errors are one line with the contract's exit codes."""
import argparse
import os
import re
import subprocess
import sys
import types
from pathlib import Path

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


def test_version_matches_the_package_metadata(capsys):
    setup_py = (Path(__file__).parents[1] / "setup.py").read_text()
    declared = re.search(r'version="([^"]+)"', setup_py).group(1)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.split() == ["omnimouse-jax", declared]


def test_debug_is_honoured_after_the_command(tmp_path, capsys):
    missing = str(tmp_path / "no-store")
    assert cli.main(["data", "info", missing]) == 2
    assert "no-store" in capsys.readouterr().err
    with pytest.raises(UserError, match="no-store"):  # --debug: the exception propagates with its traceback
        cli.main(["data", "info", missing, "--debug"])


@pytest.mark.parametrize("override", ["--config.train.steps=0", "--config.train.steps=-5",
                                      "--config.train.batch_size=0"])
def test_train_refuses_non_positive_counts_before_touching_the_workdir(tmp_path, capsys, override):
    workdir = tmp_path / "run"
    config = str(Path(__file__).parents[1] / "experiments/configs/omnimouse.py") + ":size=test"
    assert cli.main(["train", "--config", config, "--workdir", str(workdir), override]) == 2
    key = override.removeprefix("--").partition("=")[0]
    assert capsys.readouterr().err.splitlines() == [
        f"omnimouse: error: {key}={int(override.partition('=')[2])}: expected a positive integer"]
    assert not workdir.exists()


REPO = Path(__file__).parents[1]


@pytest.mark.parametrize("command, flag", [
    (["train", "--config", f"{REPO}/experiments/configs/omnimouse.py:size=test", "--workdir", "{file}"], "--workdir"),
    (["sweep", "--config", f"{REPO}/experiments/sweeps/scaling_demo.py", "--workdir", "{file}", "--launcher",
      "print"], "--workdir"),
    (["figures", "--sweep", "{tmp}", "--out", "{file}"], "--out"),
    (["data", "import-sensorium", "{tmp}", "--out", "{file}"], "--out"),
    (["evaluate", "--workdir", "{tmp}", "--out", "{file}/eval.json"], "--out"),
    (["data", "import-experanto", "{tmp}", "--out", "{file}"], "--out"),
    (["data", "import-nwb", "{tmp}", "--out", "{file}"], "--out"),
    (["demo", "--out", "{file}"], "--out"),
    (["finetune", "--from", "{tmp}", "--data", "{tmp}", "--sessions", "a", "--workdir", "{file}"], "--workdir"),
])
def test_a_file_where_a_directory_is_expected_is_exit_2_and_one_line(tmp_path, capsys, command, flag):
    file = tmp_path / "taken"
    file.write_text("not a directory\n")
    argv = [arg.format(file=file, tmp=tmp_path) for arg in command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"omnimouse: error: {flag} ") and f"{file} is a file" in err[0]
    assert file.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", [
    ["data", "info", "{missing}"],
    ["data", "check", "{missing}"],
    ["data", "import-sensorium", "{missing}", "--out", "{tmp}/out"],
    ["data", "import-experanto", "{missing}", "--out", "{tmp}/out"],
    ["data", "import-nwb", "{missing}", "--out", "{tmp}/out"],
    ["train", "--config", "{missing}.py", "--workdir", "{tmp}/out"],
    ["evaluate", "--workdir", "{missing}"],
    ["planted", "--workdir", "{missing}"],
    ["sweep", "--config", "{missing}.py", "--workdir", "{tmp}/out", "--launcher", "print"],
    ["finetune", "--from", "{missing}", "--data", "{missing}", "--sessions", "a", "--workdir", "{tmp}/out"],
    ["fit", "--csv", "{missing}.csv", "--form", "power", "--x", "N", "--y", "val_loss"],
    ["figures", "--sweep", "{missing}", "--out", "{tmp}/out"],
], ids=lambda command: " ".join(command[:2]))
def test_a_missing_input_is_exit_2_and_one_line_naming_it_and_writes_nothing(tmp_path, capsys, command):
    missing = tmp_path / "missing"
    assert cli.main([arg.format(missing=missing, tmp=tmp_path) for arg in command]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("omnimouse: error: ") and str(missing) in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, flag", [
    (["train", "--config", f"{REPO}/experiments/configs/omnimouse.py:size=test", "--workdir", "{locked}/run"],
     "--workdir"),
    (["sweep", "--config", f"{REPO}/experiments/sweeps/scaling_demo.py", "--workdir", "{locked}/s", "--launcher",
      "print"], "--workdir"),
    (["figures", "--sweep", "{tmp}", "--out", "{locked}/fig"], "--out"),
    (["data", "import-sensorium", "{tmp}", "--out", "{locked}/store"], "--out"),
    (["data", "import-experanto", "{tmp}", "--out", "{locked}/store"], "--out"),
    (["data", "import-nwb", "{tmp}", "--out", "{locked}/store"], "--out"),
    (["demo", "--out", "{locked}/demo"], "--out"),
    (["finetune", "--from", "{tmp}", "--data", "{tmp}", "--sessions", "a", "--workdir", "{locked}/ft"], "--workdir"),
    (["evaluate", "--workdir", "{tmp}", "--out", "{locked}/eval.json"], "--out"),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else v)
def test_an_unwritable_output_is_exit_2_and_one_line_before_any_work(tmp_path, capsys, monkeypatch, command, flag):
    """The output's nearest existing folder is read-only (os.access says so: the tests may run as root, for whom
    permission bits do not bind)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    argv = [arg.format(locked=locked, tmp=tmp_path) for arg in command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"omnimouse: error: {flag} ") and f"{locked} is not writable" in err[0]
    assert list(locked.iterdir()) == []


def test_evaluate_refuses_an_unwritable_out_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert cli.main(["evaluate", "--workdir", str(tmp_path / "no-run"), "--out", str(locked / "eval.json")]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"omnimouse: error: --out {locked / 'eval.json'}: {locked} is not writable"]
    finally:
        locked.chmod(0o700)


def test_cli_reference_is_the_parsers_help():
    """docs/cli.md is generated; a parser changed without regenerating it fails here."""
    committed = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert cli.help_markdown() == committed, "stale: run python -m omnimouse_jax.cli --markdown > docs/cli.md"
    for group, name in cli.COMMANDS:
        assert f"## `omnimouse {group + ' ' if group else ''}{name}`" in committed
    proc = subprocess.run([sys.executable, "-m", "omnimouse_jax.cli", "--markdown"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "37"})  # the terminal's width must not matter
    assert proc.returncode == 0 and proc.stdout == committed


def test_cli_reference_changes_with_a_parser(monkeypatch):
    from omnimouse_jax.commands import fit as fit_command

    before = cli.help_markdown()
    original = fit_command.add_arguments

    def with_one_more(parser):
        original(parser)
        parser.add_argument("--new-flag", help="a flag added without regenerating docs/cli.md")

    monkeypatch.setattr(fit_command, "add_arguments", with_one_more)
    after = cli.help_markdown()
    assert after != before and "--new-flag" in after and "--new-flag" not in before
