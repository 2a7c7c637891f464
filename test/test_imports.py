"""The import structure of fide, read from the source with ``ast`` (nothing is imported): library code never
imports the command line, the pre-alignment and the optimisation stages do not import each other, and the module
graph has no cycles.

What counts as an edge A → B (A, B modules under fide/):

* every ``import`` / ``from ... import`` in A, at module level and inside functions and classes (a lazy import is
  still a dependency), except under ``if TYPE_CHECKING:`` (never runs);
* B is the module that defines the imported name: ``from fide.x import y`` names the submodule ``fide.x.y`` when
  there is one; otherwise, when ``fide/x/__init__.py`` only re-exports ``y`` from a submodule (a module-level
  ``from .m import y``), that submodule; otherwise ``fide.x`` (its ``__init__``) itself. Relative imports are
  resolved against A's package;
* an edge from a module into the ``__init__`` of a package that contains it (``import fide`` in
  ``fide.align.export`` for ``fide.__version__``) is dropped: Python runs a package's ``__init__`` before any of its
  submodules, so such an edge orders nothing; a name the ``__init__`` re-exports from a sibling already became an
  edge to that sibling above.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fide"


def _module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module under fide/ (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py" or (ROOT.parent / name.replace(".", "/")).is_dir()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a tree, at any depth, leaving out ``if TYPE_CHECKING:`` bodies."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = list(node.orelse)
        stack.extend(children)
    return found


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import reads from (relative levels resolved against ``module``'s package)."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@cache
def _reexports(package: str) -> dict[str, str]:
    """Names a package's ``__init__`` binds by a module-level ``from ... import`` → the module they come from."""
    if package not in MODULES or MODULES[package].name != "__init__.py":
        return {}
    names = {}
    for node in _tree(package).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names[alias.asname or alias.name] = _base(package, node)
    return names


def _defining(base: str, name: str, seen: frozenset[str] = frozenset()) -> str:
    """The module that defines ``name`` as imported ``from base``: a submodule, the source of a re-export, or base."""
    if f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    source = _reexports(base).get(name)
    if source is not None and source.startswith("fide") and source not in seen:
        return _defining(source, name, seen | {base})
    return base


def _targets(module: str) -> list[tuple[str, str, int]]:
    """(named, defining, line) of every fide import in ``module``: the module as written and the one resolved."""
    found = []
    for node in _imports(_tree(module)):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name, node.lineno) for alias in node.names]
            continue
        base = _base(module, node)
        for alias in node.names:
            named = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            found.append((named, _defining(base, alias.name), node.lineno))
    return [(named, defining, line) for named, defining, line in found if named.split(".")[0] == "fide"]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _graph() -> dict[str, set[str]]:
    """Module → the modules it depends on (the edges the module docstring defines)."""
    graph = {}
    for module in MODULES:
        edges = set()
        for _, target, _ in _targets(module):
            while target not in MODULES and "." in target:  # `import fide.x.y.name`-style: the module part
                target = target.rpartition(".")[0]
            ancestor = _is_package(target) and _inside(module, target) and module != target
            if target in MODULES and target != module and not ancestor:
                edges.add(target)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → ... → a) per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # a shortest path back to the start, within the component
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in [n for f in frontier for n in graph[f]]:
            nxt = []
            for node in frontier:
                for succ in sorted(graph[node] & component):
                    if succ not in paths:
                        paths[succ] = paths[node] + [succ]
                        nxt.append(succ)
            frontier = nxt
        last = next(f for f in frontier if start in graph[f])
        cycles.append(paths[last] + [start])
    return cycles


def _violations(sources: str, forbidden: str) -> list[str]:
    """'module:line imports target' for every import from a module inside ``sources`` of one inside ``forbidden``."""
    found = {
        f"{module}:{line} imports {named}"
        for module in MODULES
        if _inside(module, sources) or (sources == "*" and not _inside(module, forbidden))
        for named, defining, line in _targets(module)
        if _inside(named, forbidden) or _inside(defining, forbidden)
    }
    return sorted(found)


def test_the_parser_sees_lazy_relative_and_package_imports():
    """The graph is only as good as the parser: check it on imports it must find and resolve."""
    snippet = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fide.a import Hint\nelse:\n    import fide.b\n"
        "def f():\n    from .c import d\n"
        "class K:\n    def g(self):\n        import fide.e\n"
    )
    found = [
        "." * node.level + (node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name
        for node in _imports(snippet)
    ]
    assert sorted(found) == [".c", "fide.b", "fide.e", "typing"]  # not fide.a: under TYPE_CHECKING
    graph = _graph()
    assert "fide.geometry" in graph["fide.align.source"]  # `from fide import geometry`: the sub-package
    assert "fide.align.registration" in graph["fide.align"]  # `from .registration import ...` in an __init__
    assert "fide.features.select" in graph["fide.align.registration"]  # inside a function
    assert "fide" not in graph["fide.align.export"]  # `import fide`: into its own ancestor, dropped
    assert "fide.optimise.instance" in graph["fide.pipeline"]  # a module of a namespace package (no __init__)
    assert _defining("fide.io", "read_disp") == "fide.io.fields"  # a re-export resolves to where it is defined
    loop = {"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": set(), "e": {"a"}}
    assert _cycles(loop) == [["a", "b", "c", "a"]] and _cycles({**loop, "c": set()}) == []


def test_library_modules_never_import_the_command_line():
    """fide/cli is a front end: the library (fide.register, the runner, the workers) works without it."""
    offending = _violations("*", "fide.cli")
    assert not offending, "library modules import fide.cli:\n" + "\n".join(offending)


def test_prealign_and_optimise_do_not_import_each_other():
    """The pre-alignment and the optimisation are separate stages that fide.pipeline composes (issue 25)."""
    offending = _violations("fide.prealign", "fide.optimise") + _violations("fide.optimise", "fide.prealign")
    assert not offending, "fide.prealign and fide.optimise import each other:\n" + "\n".join(offending)


def test_the_module_graph_has_no_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
