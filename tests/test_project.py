"""The project as a user meets it: the README's example, the examples, the CLI, and the checks
(ruff, mypy --strict) the code is held to."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import new_mesh_env

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # A mesh of its own, so that no other run on this machine shares it over mDNS.
    env = new_mesh_env()
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def test_the_readme_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "README.md has no python example"
    result = run(sys.executable, "-c", blocks[0], timeout=30)
    assert result.returncode == 0, result.stderr
    assert "order.created {'id': 42, 'items': ['book']}" in result.stdout
    assert "shipping {'id': 42}" in result.stdout


def test_the_readme_blocking_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (block,) = [block for block in blocks if "mesh.blocking.start(" in block]
    result = run(sys.executable, "-c", block, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "{'path': '/'}" in result.stdout
    assert "resizing {'image': 7}" in result.stdout
    assert "audit left: goodbye" in result.stdout


def test_the_two_node_example_runs() -> None:
    result = run(sys.executable, "examples/two_nodes.py", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cli_version_and_help() -> None:
    result = run(sys.executable, "-m", "mesh._cli", "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("mesh-cli ")
    result = run(sys.executable, "-m", "mesh._cli", "bench", "--help")
    assert result.returncode == 0
    assert "example: mesh-cli bench" in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_code_quality(command: tuple[str, ...]) -> None:
    tool = shutil.which(command[0], path=str(Path(sys.executable).parent)) or shutil.which(
        command[0]
    )
    if tool is None:
        pytest.skip(f"{command[0]} is not installed (it comes with the test extra)")
    result = run(tool, *command[1:], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("settings", ["Settings", "DetectorSettings"])
def test_every_settings_field_is_documented(settings: str) -> None:
    # help() shows the class docstring, not comments: each field must have its entry there.
    import dataclasses

    import mesh

    cls = getattr(mesh, settings)
    doc = cls.__doc__ or ""
    _, _, attributes = doc.partition("Attributes:\n")
    documented = set(re.findall(r"^        (\w+): \S", attributes, re.MULTILINE))
    assert documented == {f.name for f in dataclasses.fields(cls)}


# The layering: pure cores do no IO, so importing one must not reach an IO library, through any
# import, including the package `__init__` that Python runs before the module itself.

PURE_CORES = (
    "mesh._wire",
    "mesh._hello",
    "mesh._addresses",
    "mesh._sessions",
    "mesh._values",
    "mesh._limits",
    "mesh._beatkeys",
    "mesh._beatplan",
    "mesh._probes",
    "mesh._routing",
    "mesh._history",
    "mesh._gaps",
    "mesh._batches",
    "mesh._swim",
    "mesh._probing",
    "mesh._names",
    "mesh._detector",
    "mesh._heartbeat",
    "mesh._metrics",
    "mesh._peerlog",
    "mesh._ratelimit",
    "mesh._sim._schedule",
    "discovery._record",
    "discovery._peers",
    "discovery._txt",
)
# Edges that read the machine but must stay importable without the IO stack all the same.
LIGHT_EDGES = ("discovery._interfaces",)
IO_LIBRARIES = frozenset({"trio", "zmq", "zeroconf"})


def repo_modules() -> dict[str, Path]:
    """Every module of `mesh` and `discovery`, by dotted name (a package by its own name)."""
    modules = {}
    for package in ("mesh", "discovery"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = repo_modules()


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_statements(
    node: ast.AST, *, type_checking: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: not those in function bodies
    (they run when called), nor those under `if TYPE_CHECKING:` unless `type_checking`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(child, ast.If) and is_type_checking(child.test) and not type_checking:
            for statement in child.orelse:
                yield from import_statements(ast.Module([statement], []))
        else:
            yield from import_statements(child, type_checking=type_checking)


def parse(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), str(MODULES[name]))


def source_of(name: str, statement: ast.ImportFrom) -> str:
    """The absolute name of the module a `from ... import` statement in module `name` reads."""
    if not statement.level:
        assert statement.module is not None
        return statement.module
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    parts = package.split(".")[: len(package.split(".")) - statement.level + 1]
    return ".".join([*parts, *([statement.module] if statement.module else [])])


def declared_source(package: str, attribute: str) -> str | None:
    """Where a package's `__init__` takes `attribute` from: the module its import of that name
    (eager, or under `if TYPE_CHECKING:` for one it loads lazily) reads."""
    if MODULES.get(package, Path()).name != "__init__.py":
        return None
    for statement in import_statements(parse(package), type_checking=True):
        if isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                if (alias.asname or alias.name) == attribute:
                    return source_of(package, statement)
    return None


def imports_of(name: str) -> list[tuple[str, bool]]:
    """What importing module `name` imports, each as (module, whether a non-module attribute of
    it is read at once). `from package import X` also imports the module the package's
    `__init__` declares X from, as its lazy `__getattr__` would."""
    found: list[tuple[str, bool]] = []

    def from_import(source: str, attribute: str, seen: frozenset[str]) -> None:
        if f"{source}.{attribute}" in MODULES:
            found.append((source, False))
            found.append((f"{source}.{attribute}", False))
            return
        found.append((source, True))
        origin = declared_source(source, attribute)
        if origin is not None and origin not in seen:
            from_import(origin, attribute, seen | {origin})

    for statement in import_statements(parse(name)):
        if isinstance(statement, ast.Import):
            found.extend((alias.name, False) for alias in statement.names)
        else:
            source = source_of(name, statement)
            for alias in statement.names:
                if alias.name == "*":
                    found.append((source, True))
                else:
                    from_import(source, alias.name, frozenset({source}))
    return found


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reachable(start: str) -> dict[str, str | None]:
    """Every module importing `start` imports, in the repo or not (an outside one by its full
    name, not followed), each mapped to the module that imports it first (breadth first)."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        module = queue.pop(0)
        if module not in MODULES:
            continue
        # Importing a module runs every parent package's __init__ first.
        for target in [*ancestors(module)[-1:], *(t for t, _ in imports_of(module))]:
            for step in [*ancestors(target), target]:
                if step not in parent:
                    parent[step] = module
                    queue.append(step)
    return parent


def chain(parent: dict[str, str | None], module: str) -> str:
    steps = [module]
    while (previous := parent[steps[-1]]) is not None:
        steps.append(previous)
    return " -> ".join(reversed(steps))


def pure_modules_by_docstring() -> set[str]:
    found = set()
    for name in MODULES:
        doc = ast.get_docstring(parse(name)) or ""
        if re.search(r"\bPure\b(:| apart)|\bas pure state\b", doc):
            found.add(name)
    return found


def test_the_pure_cores_are_those_whose_docstrings_say_so() -> None:
    # A module that calls itself pure is held to it: adding one to the list is not optional.
    assert pure_modules_by_docstring() == set(PURE_CORES)


@pytest.mark.parametrize("module", PURE_CORES + LIGHT_EDGES)
def test_a_pure_core_imports_no_io_library(module: str) -> None:
    parent = reachable(module)
    reached = {m for m in parent if m.split(".")[0] in IO_LIBRARIES}
    # One chain per library: the shortest is the one to cut.
    chains = sorted(
        min((chain(parent, m) for m in found), key=lambda c: (c.count(" -> "), c))
        for library in IO_LIBRARIES
        if (found := {m for m in reached if m.split(".")[0] == library})
    )
    assert not chains, "importing it imports IO libraries:\n" + "\n".join(chains)


def test_the_pure_cores_import_no_io_library_when_run() -> None:
    # The same claim as the AST walk, checked by Python itself in a fresh interpreter.
    code = (
        f"import {', '.join(PURE_CORES + LIGHT_EDGES)}; import sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(IO_LIBRARIES)!r}))"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def import_cycle() -> list[str] | None:
    """An import cycle among the modules of `mesh` and `discovery`, or None.

    A -> B when A's import-time code cannot finish before B's has. A module's own parent packages
    have always started by the time it runs, so an import of one of them counts only when it
    reads a name the package's `__init__` binds (`from .. import __version__`)."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges = graph.setdefault(name, set())
        for target, reads_attribute in imports_of(name):
            for step in [*ancestors(target), target]:
                if step not in MODULES or step == name:
                    continue
                if step in ancestors(name) and not (step == target and reads_attribute):
                    continue
                edges.add(step)
    # Depth-first search; a back edge closes a cycle.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = import_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", ["mesh", "discovery"])
def test_the_packages_export_lazily_what_they_declare(package: str) -> None:
    # Each public name is imported under `if TYPE_CHECKING:` (what mypy and IDEs read) and loaded
    # on first use by the package's __getattr__: both must give the same object.
    import importlib
    import pydoc

    module = importlib.import_module(package)
    tree = parse(package)
    eager = {
        alias.asname or alias.name
        for statement in import_statements(tree)
        for alias in statement.names
        if not (isinstance(statement, ast.ImportFrom) and statement.module == "__future__")
    }
    declared = {
        alias.asname or alias.name: source_of(package, statement)
        for statement in import_statements(tree, type_checking=True)
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    assert not eager & set(exported), "imported when the package is, not on first use"
    assert set(exported) <= set(declared), "not declared under `if TYPE_CHECKING:`"
    for name in exported:
        assert getattr(module, name) is getattr(importlib.import_module(declared[name]), name)
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(exported)
    assert set(exported) <= set(dir(module))
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(module, "no_such_name")  # noqa: B009
    assert module.__doc__
    assert module.__doc__.splitlines()[0] in pydoc.render_doc(module, renderer=pydoc.plaintext)


def test_the_version_is_read_without_importing() -> None:
    # setuptools takes `mesh.__version__` from the source when it is a plain string assignment.
    assignments = [
        statement.value.value
        for statement in parse("mesh").body
        if isinstance(statement, ast.Assign)
        and [getattr(target, "id", None) for target in statement.targets] == ["__version__"]
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    ]
    import mesh

    assert assignments == [mesh.__version__]


# -- sizes: one concern a module ----------------------------------------------------------------

#: Limits that keep the node a set of components a newcomer can read one at a time. The command
#: line and the benchmarks (`_cli`, `_bench`) are many small commands and are not held to them.
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 450
MAX_FACADE_LINES = 599  # mesh/_node.py, `Node`: under 600


def test_no_module_or_class_outgrows_one_concern() -> None:
    too_long = []
    for name, path in MODULES.items():
        if name.startswith(("mesh._cli", "mesh._bench")):
            continue
        lines = len(path.read_text().splitlines())
        limit = MAX_FACADE_LINES if name == "mesh._node" else MAX_MODULE_LINES
        if lines > limit:
            too_long.append(f"{name}: {lines} lines (limit {limit})")
        for node in ast.walk(parse(name)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines (limit {MAX_CLASS_LINES})")
    assert not too_long, too_long
