"""Configs as code: `FILE[:ARG]` names a Python file whose `get_config(ARG)` returns an ml_collections ConfigDict;
`--config.a.b=v` overrides follow. An override of a key that does not exist fails, naming the closest keys."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path

import ml_collections

from omnimouse_jax.errors import UserError


def load_python_file(path: Path):
    """Executes a config or sweep file as a module; UserError naming it if it fails to load."""
    spec = importlib.util.spec_from_file_location(f"_omnimouse_file_{abs(hash(path.resolve()))}", path)
    if spec is None or spec.loader is None:  # not a .py file: importlib has no loader for it
        raise UserError(f"--config {path}: not a Python file; expected path/to/config.py[:arg] with get_config(arg)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"--config {path}: failed to load ({type(err).__name__}: {err})") from None
    return module


def call_file_function(spec: str, function: str, kind: str):
    """(path, result) of calling `function(arg)` (or `function()` without an arg) in the file of `spec` =
    'path/to/file.py[:arg]'; UserError naming the file if it is missing or lacks the function. `kind` names the file
    in the error ("config", "sweep")."""
    text, _, arg = spec.partition(":")
    path = Path(text)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file; expected a Python {kind} file with {function}(arg)")
    module = load_python_file(path)
    if not hasattr(module, function):
        raise UserError(f"--config {path}: defines no {function}(arg)")
    return path, getattr(module, function)(arg) if arg else getattr(module, function)()


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of the file in `spec` = 'path/to/file.py[:arg]'."""
    path, config = call_file_function(spec, "get_config", "config")
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"--config {path}: get_config returned {type(config).__name__}, expected a ConfigDict")
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys.extend(flat_keys(value, name + ".") if isinstance(value, ml_collections.ConfigDict) else [name])
    return keys


def _parse_value(text: str):
    """Python literals (numbers, tuples, lists, None, True) or JSON; anything else is a string."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


# String fields that also take a list: "all" or [name, name, ...] (quotes around the names optional).
NAME_LIST_FIELDS = ("data.sessions",)


def _name_list(text: str) -> tuple[str, ...] | None:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    return tuple(item.strip().strip("'\"") for item in text[1:-1].split(",") if item.strip())


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets config[key] (dotted) from the command-line text `text`, keeping the field's type."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"--config.{key}: no such config key{hint}")
    current, value = node[leaf], _parse_value(text)
    if isinstance(current, bool) and isinstance(value, str):
        raise UserError(f"--config.{key}={text}: expected true/false (True/False)")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    names = _name_list(text) if key in NAME_LIST_FIELDS else None
    if names is not None:
        value = current = names
    elif isinstance(current, str) and not isinstance(value, str):
        value = text
    if current is not None and isinstance(value, (int, float, str, tuple, list, bool)) and not isinstance(
            value, type(current)) and not (isinstance(current, (list, tuple)) and isinstance(value, (list, tuple))):
        raise UserError(f"--config.{key}={text}: expected a {type(current).__name__} like {current!r}")
    with node.ignore_type():
        node[leaf] = value


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise UserError(f"{arg}: expected a value (--config.{key}=VALUE)")
                value, i = argv[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config(spec: str, overrides: list[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    config = load_config_file(spec)
    for key, value in overrides:
        apply_override(config, key, value)
    return config
