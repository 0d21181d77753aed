"""The package's layers, and that imports only go down them (issue 21).

    commands/ and cli.py     every command's add_arguments and run; lazy imports of anything below
    demo.py                  the end-to-end demo, built from the scaling and evaluation layers
    scaling/, evaluate/
    train/
    model/, data/
    parallel/                sharding, multi-process runtime, every private JAX use (_jax_compat.py)
    low level                errors, config, faults, interrupts, resources, files, the package root

Every `import` and `from ... import` in every module counts, including those inside functions: a lazy import is still
a dependency. Modules of one layer may import each other, but no two modules may import each other, even through
others (a cycle).

Imports inside functions belong to the commands layer alone, where they keep `omnimouse --help` fast. Library modules
import at module level, so that their dependencies show at the top; the few imports that must wait for a function
are in ALLOWED_LAZY_IMPORTS, each with its reason.
"""
from __future__ import annotations

import ast
import importlib
import textwrap
from pathlib import Path

PACKAGE = "omnimouse_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Highest first. A module belongs to the first layer one of whose prefixes is itself or a package above it.
LAYERS = [
    ("commands", ("omnimouse_jax.commands", "omnimouse_jax.cli")),
    ("demo", ("omnimouse_jax.demo",)),
    ("scaling/evaluate", ("omnimouse_jax.scaling", "omnimouse_jax.evaluate")),
    ("train", ("omnimouse_jax.train",)),
    ("model/data", ("omnimouse_jax.model", "omnimouse_jax.data")),
    ("parallel", ("omnimouse_jax.parallel",)),
    ("low level", ("omnimouse_jax.errors", "omnimouse_jax.config", "omnimouse_jax.faults", "omnimouse_jax.interrupts",
                   "omnimouse_jax.resources", "omnimouse_jax.files")),
]
LOW = len(LAYERS) - 1
# (module, imported module or package) pairs whose import may stay inside a function of a library module; the package
# name covers its submodules. Anything else imported inside a function outside the commands layer fails the test.
ALLOWED_LAZY_IMPORTS = {
    # every `omnimouse --help` imports the data package, so it stays light: open_store loads the store on first use
    ("omnimouse_jax.data", "omnimouse_jax.data.store"),
    # pynwb (with h5py, hdmf and pandas) takes about a second to import, and `omnimouse --help` imports data/nwb.py
    # for the import-nwb command's choices; only reading NWB files needs it
    ("omnimouse_jax.data.nwb", "pynwb"),
    # only drawing needs matplotlib; pyplot adds about half a second and is imported after the Agg backend is chosen
    ("omnimouse_jax.scaling.figures", "matplotlib"),
}
# The only module allowed to reach into JAX's private modules and attributes.
JAX_COMPAT = "omnimouse_jax.parallel._jax_compat"
PRIVATE_JAX_ATTRIBUTES = ("_impl", "global_state")


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, name) of the module's layer, 0 the highest; None for a module no layer names."""
    if module == PACKAGE:
        return LOW, LAYERS[LOW][0]
    for rank, (name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank, name
    return None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.parent / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _from_source(node: ast.ImportFrom, package: str) -> str:
    """The absolute name of the module a `from ... import` reads from, inside `package`."""
    if not node.level:
        return node.module or ""
    # relative: from . import x / from ..a import b
    base = package.split(".")[:len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """(imported package module, line) for every import of this package in the file, wherever it stands."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _from_source(node, package)
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.append((candidate if _is_module(candidate, root) else source, node.lineno))
    return [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def import_graph(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of its first import}, over every module under root."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        edges = graph.setdefault(module, {})
        for target, line in imports_of(path, root):
            if target != module:
                edges.setdefault(target, f"{path.relative_to(root.parent)}:{line}")
    return graph


def upward_imports(graph: dict[str, dict[str, str]]) -> list[str]:
    """One line per import from a lower layer to a higher one, or of or from a module no layer names."""
    problems = []
    for module, edges in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{module}: in no layer; add it to LAYERS in tests/test_layers.py")
            continue
        for target, where in sorted(edges.items()):
            theirs = layer_of(target)
            if theirs is None:
                problems.append(f"{where}: {module} imports {target}, which is in no layer")
            elif theirs[0] < mine[0]:
                problems.append(f"{where}: {module} ({mine[1]}) imports {target} ({theirs[1]}), a higher layer")
    return problems


def import_cycles(graph: dict[str, dict[str, str]]) -> list[str]:
    """One line per group of modules that import each other (a strongly connected component), naming one cycle
    through it with the file and line of each import."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan; the graph is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    problems = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until the path returns to a module on it
            nxt = next(w for w in sorted(graph[path[-1]]) if w in component)
            if nxt in seen:
                path = path[path.index(nxt):] + [nxt]
                break
            path.append(nxt)
            seen.add(nxt)
        hops = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(path, path[1:])]
        problems.append(f"import cycle among {', '.join(sorted(component))}: " + "; ".join(hops))
    return problems


def lazy_imports_in(source: str, module: str, where: str, *, is_package: bool = False) -> list[tuple[str, str, str]]:
    """(module, imported module, "where:line") for every import inside a function (or method, or function nested in
    either) of the module's source, in line order; the imported module is the one after `import`, or the one a
    `from ... import` reads from."""
    package = module if is_package else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import):
                found.extend((module, alias.name, f"{where}:{child.lineno}") for alias in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                found.append((module, _from_source(child, package), f"{where}:{child.lineno}"))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source, filename=where), False)
    return found


def lazy_imports(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """lazy_imports_in for every module under root except the commands layer's, whose imports may wait for run()."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        if layer_of(module) == (0, "commands"):
            continue
        found += lazy_imports_in(path.read_text(), module, str(path.relative_to(root.parent)),
                                 is_package=path.name == "__init__.py")
    return found


def _allows(entry: tuple[str, str], module: str, imported: str) -> bool:
    allowed_module, allowed_import = entry
    return module == allowed_module and (imported == allowed_import or imported.startswith(allowed_import + "."))


def unallowed_lazy_imports(found: list[tuple[str, str, str]], allowed: set[tuple[str, str]]) -> list[str]:
    """One line per import inside a function that no entry of `allowed` covers."""
    return [f"{where}: {module} imports {imported} inside a function; import it at the top of the module, or add "
            f"({module!r}, {imported!r}) to ALLOWED_LAZY_IMPORTS with the reason it must stay lazy"
            for module, imported, where in found if not any(_allows(entry, module, imported) for entry in allowed)]


def stale_lazy_allowances(found: list[tuple[str, str, str]], allowed: set[tuple[str, str]]) -> list[str]:
    """One line per entry of `allowed` that covers no import inside a function: the import moved or went."""
    return [f"ALLOWED_LAZY_IMPORTS: {entry!r} covers no import inside a function; remove it"
            for entry in sorted(allowed) if not any(_allows(entry, module, imported) for module, imported, _ in found)]


def private_jax_uses(root: Path = ROOT) -> list[str]:
    """Imports of jax._src (or other private jax modules) and private JAX attributes outside _jax_compat.py."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        if module_name(path, root) == JAX_COMPAT:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            if any(n.startswith("jax") and any(part.startswith("_") for part in n.split(".")) for n in names):
                problems.append(f"{path.relative_to(root.parent)}:{node.lineno}: private JAX module import")
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_JAX_ATTRIBUTES:
                problems.append(f"{path.relative_to(root.parent)}:{node.lineno}: private JAX attribute .{node.attr}")
    return problems


def unresolved_package_imports(scripts: list[Path]) -> list[str]:
    """'file:line: name' for every `from omnimouse_jax... import name` in scripts outside the package that names no
    module or attribute of the package as it is now: scripts nothing imports break silently when a module moves."""
    problems = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE):
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as err:
                problems.append(f"{path.name}:{node.lineno}: {node.module} ({err})")
                continue
            for alias in node.names:
                if not (hasattr(module, alias.name) or _is_module(f"{node.module}.{alias.name}", ROOT)):
                    problems.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
    return problems


def test_benchmark_and_experiment_scripts_import_what_the_package_has():
    repository = ROOT.parent
    scripts = sorted([*repository.glob("benchmarks/*.py"), *repository.glob("experiments/*.py")])
    assert len(scripts) >= 8
    assert not unresolved_package_imports(scripts), "\n".join(unresolved_package_imports(scripts))


def test_the_script_check_reports_a_moved_module(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("from omnimouse_jax.train import perf, sharding\nfrom omnimouse_jax.parallel import sharding\n")
    assert unresolved_package_imports([script]) == ["old.py:1: omnimouse_jax.train.sharding"]


def test_every_module_is_in_a_layer_and_imports_only_downward():
    problems = upward_imports(import_graph())
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    problems = import_cycles(import_graph())
    assert not problems, "\n".join(problems)


def test_private_jax_only_in_jax_compat():
    problems = private_jax_uses()
    assert not problems, "\n".join(problems)


def test_library_modules_import_at_module_level():
    problems = unallowed_lazy_imports(lazy_imports(), ALLOWED_LAZY_IMPORTS)
    assert not problems, "\n".join(problems)


def test_every_allowed_lazy_import_is_still_lazy():
    problems = stale_lazy_allowances(lazy_imports(), ALLOWED_LAZY_IMPORTS)
    assert not problems, "\n".join(problems)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert graph, "no modules found under " + str(ROOT)
    # commands/train.py imports the distributed runtime inside run(), not at module level
    assert "omnimouse_jax.parallel.distributed" in graph["omnimouse_jax.commands.train"]


def test_the_checks_report_an_upward_import_and_a_cycle():
    graph = {
        "omnimouse_jax.parallel.sharding": {"omnimouse_jax.train.session": "omnimouse_jax/parallel/sharding.py:3"},
        "omnimouse_jax.train.session": {"omnimouse_jax.errors": "omnimouse_jax/train/session.py:1"},
        "omnimouse_jax.errors": {},
    }
    (problem,) = upward_imports(graph)
    assert problem == ("omnimouse_jax/parallel/sharding.py:3: omnimouse_jax.parallel.sharding (parallel) imports "
                       "omnimouse_jax.train.session (train), a higher layer")
    assert import_cycles(graph) == []
    graph["omnimouse_jax.errors"]["omnimouse_jax.config"] = "omnimouse_jax/errors.py:5"
    graph["omnimouse_jax.config"] = {"omnimouse_jax.errors": "omnimouse_jax/config.py:7"}
    (cycle,) = import_cycles(graph)
    assert cycle == ("import cycle among omnimouse_jax.config, omnimouse_jax.errors: omnimouse_jax.config -> "
                     "omnimouse_jax.errors (omnimouse_jax/config.py:7); omnimouse_jax.errors -> omnimouse_jax.config "
                     "(omnimouse_jax/errors.py:5)")
    assert upward_imports({"omnimouse_jax.newthing": {}}) == [
        "omnimouse_jax.newthing: in no layer; add it to LAYERS in tests/test_layers.py"]


def test_the_checks_report_a_function_level_import_and_a_stale_allowance():
    source = textwrap.dedent("""\
        import os


        class Reader:
            import json  # a class body runs with the module: not lazy

            def read(self, path):
                from .store import open_store  # relative: resolved against the package
                from pynwb.image import ImageSeries  # covered by an allowance for the pynwb package

                def decode():
                    import numpy as np  # in a function inside a method
                    return np
                return open_store(path), ImageSeries, decode()
        """)
    found = lazy_imports_in(source, "omnimouse_jax.data.reader", "omnimouse_jax/data/reader.py")
    assert found == [("omnimouse_jax.data.reader", "omnimouse_jax.data.store", "omnimouse_jax/data/reader.py:8"),
                     ("omnimouse_jax.data.reader", "pynwb.image", "omnimouse_jax/data/reader.py:9"),
                     ("omnimouse_jax.data.reader", "numpy", "omnimouse_jax/data/reader.py:12")]
    allowed = {("omnimouse_jax.data.reader", "pynwb"), ("omnimouse_jax.data.reader", "matplotlib")}
    assert unallowed_lazy_imports(found, allowed) == [
        "omnimouse_jax/data/reader.py:8: omnimouse_jax.data.reader imports omnimouse_jax.data.store inside a function; "
        "import it at the top of the module, or add ('omnimouse_jax.data.reader', 'omnimouse_jax.data.store') to "
        "ALLOWED_LAZY_IMPORTS with the reason it must stay lazy",
        "omnimouse_jax/data/reader.py:12: omnimouse_jax.data.reader imports numpy inside a function; import it at the "
        "top of the module, or add ('omnimouse_jax.data.reader', 'numpy') to ALLOWED_LAZY_IMPORTS with the reason it "
        "must stay lazy"]
    assert stale_lazy_allowances(found, allowed) == [
        "ALLOWED_LAZY_IMPORTS: ('omnimouse_jax.data.reader', 'matplotlib') covers no import inside a function; "
        "remove it"]
    # another module's import is not covered by this module's allowance, and the package name is no bare prefix
    assert unallowed_lazy_imports([("omnimouse_jax.data.other", "pynwb", "x.py:1")], allowed) != []
    assert unallowed_lazy_imports([("omnimouse_jax.data.reader", "pynwbx", "x.py:1")], allowed) != []
