"""The shape of the package, checked from its source with ``ast`` (nothing is imported, so this runs in well under
a second): no import circle between modules, no module over 500 lines, and no module outside ``pipeline/`` reaching
into another package's private names.

An import is any ``import``/``from ... import`` statement anywhere in a module: at module level, inside a function
(the lazy imports that keep start-up light) and under ``if TYPE_CHECKING:`` (a circle a type checker sees is still a
circle for a reader). ``from pkg import name`` imports the module ``pkg.name`` where that is a module, else ``pkg``;
a package's ``__init__`` is the module ``pkg`` itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "deidpipe"
MAX_LINES = 500
#: The batch pipeline may use its stages' internals (issue 18 gives it one public entry later); nothing else may.
PRIVATE_ALLOWED_IN = "deidpipe.pipeline"


@cache
def modules() -> dict[str, Path]:
    """Every module of ``deidpipe`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(modules()[module].read_text(encoding="utf-8"), filename=str(modules()[module]))


def _owner(name: str) -> str | None:
    """The deidpipe module that ``name`` (a dotted module path, maybe with a trailing attribute) lives in."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import reads from, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if modules()[module].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(module: str, parsed: ast.Module | None = None) -> Iterator[tuple[str, str | None, ast.stmt]]:
    """``(imported module, imported name or None, node)`` for each deidpipe module ``module`` imports (its source,
    or ``parsed`` in its place)."""
    for node in ast.walk(parsed or tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owner(alias.name)
                if target:
                    yield target, None, node
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules():
                    yield full, None, node
                elif (target := _owner(base)) is not None:
                    yield target, alias.name, node


def import_graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports_of(m) if t != m} for m in modules()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def unit_of(module: str) -> str:
    """The package a module belongs to for the private-name rule: ``deidpipe.<first part>`` (a top-level module
    such as ``deidpipe.dicomio`` is a unit of its own)."""
    return ".".join(module.split(".")[:2])


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(module: str, parsed: ast.Module | None = None) -> Iterator[str]:
    """``module -> other._name`` for each private name of another package that ``module`` imports by name or
    reads as an attribute of an imported deidpipe module."""
    parsed = parsed or tree(module)
    bound: dict[str, str] = {}  # local name -> the deidpipe module it refers to
    for target, name, node in imports_of(module, parsed):
        if name is not None and _private(name) and unit_of(target) != unit_of(module):
            yield f"{module}:{node.lineno} imports {target}.{name}"
    for node in ast.walk(parsed):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deidpipe"):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or "deidpipe"
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules():
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(parsed):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain: list[str] = []
        inner: ast.expr = node.value
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if not isinstance(inner, ast.Name) or inner.id not in bound:
            continue
        target = bound[inner.id]
        for part in reversed(chain):  # follow sub-modules: deidpipe.pixels.redact._x
            if f"{target}.{part}" not in modules():
                target = ""
                break
            target = f"{target}.{part}"
        if target and unit_of(target) != unit_of(module):
            yield f"{module}:{node.lineno} reads {target}.{node.attr}"


def test_the_checker_sees_every_kind_of_import() -> None:
    """The reader resolves relative, function-level and TYPE_CHECKING imports (a checker that saw none would pass)."""
    graph = import_graph()
    assert len(graph) > 50
    assert "deidpipe.errors" in graph["deidpipe"]  # module level, in a package __init__
    assert "deidpipe.lazy" in graph["deidpipe"]
    assert any(t.startswith("deidpipe.header") for t in graph["deidpipe"])  # TYPE_CHECKING
    assert "deidpipe.header.engine" in graph["deidpipe.header.stage"]  # inside a function
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_sees_private_names() -> None:
    """By name, by attribute of a module bound by ``from``/``import ... as``/plain ``import``; not in one package."""
    code = ("from deidpipe.header.text import _model_spans\nfrom deidpipe.pipeline import executors\n"
            "import deidpipe.pixels.redact as redact\nimport deidpipe.pixels.find\nfrom . import rules\n"
            "def f():\n    return executors._mp_context, redact._displayed, deidpipe.pixels.find._x, rules._y\n")
    found = sorted(use.split(" ", 1)[1] for use in private_uses("deidpipe.scan.headers", ast.parse(code)))
    assert found == ["imports deidpipe.header.text._model_spans", "reads deidpipe.pipeline.executors._mp_context",
                     "reads deidpipe.pixels.find._x", "reads deidpipe.pixels.redact._displayed"]


def test_no_import_circle() -> None:
    circles = strongly_connected(import_graph())
    assert not circles, "import circles between modules of deidpipe/:\n" + "\n".join(
        " <-> ".join(c) for c in circles)


@pytest.mark.parametrize("module", sorted(modules()))
def test_module_is_at_most_500_lines(module: str) -> None:
    lines = len(modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{modules()[module].relative_to(ROOT)} has {lines} lines (split it)"


def test_no_private_name_of_another_package() -> None:
    """Outside ``pipeline/``, a module uses only the public names of other packages of deidpipe."""
    found = [use for m in modules() if not (m + ".").startswith(PRIVATE_ALLOWED_IN + ".")
             for use in private_uses(m)]
    assert not found, "private names used across packages:\n" + "\n".join(found)
