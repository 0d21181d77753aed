"""The `omnimouse` command: parses arguments and dispatches to the module that owns each command.

Every command module (omnimouse_jax/commands/, one per command) exposes `add_arguments(parser)` and
`run(args) -> int | None`, and keeps heavy imports (jax, flax) inside `run` so that `omnimouse --help` stays fast. A
command whose module is absent is not offered.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import sys

from omnimouse_jax import __version__, interrupts
from omnimouse_jax.errors import UserError

_CMD = "omnimouse_jax.commands."
# (group, name) -> (module, one-line help). Group None means a top-level command.
COMMANDS = {
    (None, "demo"): (_CMD + "demo", "synthesize digital mice, run the scaling demo, write a report"),
    ("data", "synth"): (_CMD + "data_synth", "write ground-truth digital mice (store or Sensorium layout)"),
    ("data", "import-sensorium"): (_CMD + "data_import_sensorium", "import Sensorium 2023 folders or zips"),
    ("data", "import-experanto"): (_CMD + "data_import_experanto", "import OmniMouse (experanto) session folders"),
    ("data", "import-nwb"): (_CMD + "data_import_nwb", "import two-photon NWB files"),
    ("data", "info"): (_CMD + "data_info", "summarize a session store"),
    ("data", "check"): (_CMD + "data_check", "validate a session store; exit 0 only if sound"),
    (None, "train"): (_CMD + "train", "train a model from a config; resumes from the workdir"),
    (None, "evaluate"): (_CMD + "evaluate", "evaluate a trained workdir in every regime"),
    (None, "planted"): (_CMD + "planted", "planted neuron parameters a model learned (digital mice)"),
    (None, "sweep"): (_CMD + "sweep", "run or emit every run of a sweep"),
    (None, "finetune"): (_CMD + "finetune", "adapt a pretrained model to new mice"),
    (None, "fit"): (_CMD + "fit", "fit a scaling law with bootstrap intervals"),
    (None, "figures"): (_CMD + "figures", "scaling figures and tables from a sweep"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnimouse", description="OmniMouse-JAX: brain foundation models and their scaling.")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors (anywhere on the line; or OMNIMOUSE_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"omnimouse-jax {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups = {}
    for (group, name), (module, help_text) in COMMANDS.items():
        if not _available(module):
            continue
        if group is None:
            container = top
        else:
            if group not in groups:
                group_parser = top.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                groups[group].required = True
            container = groups[group]
        sub = container.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


HELP_WIDTH = 100  # docs/cli.md is rendered at this width, not the terminal's, so it is the same on every machine


def help_markdown() -> str:
    """docs/cli.md: every command's --help, in the order `omnimouse --help` lists them. Regenerate it with
    `python -m omnimouse_jax.cli --markdown > docs/cli.md`; tests/test_cli.py fails while it differs."""
    sections = []

    def walk(parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = functools.partial(argparse.HelpFormatter, width=HELP_WIDTH)
        sections.append(f"## `{parser.prog}`\n\n```\n{parser.format_help().rstrip()}\n```")
        for action in parser._actions:  # argparse exposes subcommands only through its private action class
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    head = ("# Command reference\n\nGenerated from the parsers by `python -m omnimouse_jax.cli --markdown > docs/cli.md`; "
            "do not edit by hand (tests/test_cli.py checks that it is current).")
    return "\n\n".join([head, *sections]) + "\n"


def main(argv: list[str] | None = None) -> int:
    # SIGINT and SIGTERM are honoured from here on, through imports and compiling (omnimouse_jax/interrupts.py).
    with interrupts.handled():
        try:
            return _main(argv)
        except KeyboardInterrupt as err:  # a signal while parsing or importing, before dispatch
            return _interrupted(err)


def _interrupted(err: KeyboardInterrupt) -> int:
    print(f"omnimouse: {err or 'interrupted'}", file=sys.stderr)
    return getattr(err, "exit_code", 130)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is honoured wherever users put it (`omnimouse data info X --debug`), not only before the command.
    debug = "--debug" in argv or os.environ.get("OMNIMOUSE_DEBUG") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Commands that take a config accept `--config.a.b=v` overrides; anything else unknown is bad usage.
    if getattr(importlib.import_module(args._module), "ACCEPTS_CONFIG_OVERRIDES", False):
        from omnimouse_jax.config import split_overrides

        try:
            extra, args.config_overrides = split_overrides(extra)
        except UserError as err:
            parser.error(str(err))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return dispatch(args._module, args, debug=debug)


def dispatch(module: str, args: argparse.Namespace, debug: bool = False) -> int:
    """Runs a command module, turning errors into one line on stderr and the contract's exit codes."""
    try:
        code = importlib.import_module(module).run(args)
    except UserError as err:
        if debug:
            raise
        print(f"omnimouse: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # interrupts.Interrupted: exit 130 (SIGINT) or 143 (SIGTERM)
        return _interrupted(err)
    except Exception as err:  # noqa: BLE001 - the CLI promises one line and exit 1 for anything unexpected
        if debug:
            raise
        print(f"omnimouse: error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(help_markdown(), end="")
        sys.exit(0)
    sys.exit(main())
