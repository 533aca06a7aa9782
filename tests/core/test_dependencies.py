"""Dependencies between the modules of ``apps/`` point one way.

Every module under ``apps/`` is parsed with ``ast`` (imports at module level and inside
functions alike, since an import hidden in a function still ties the two modules together):

- a domain app never imports the gateway: the gateway is built on the domain apps, never the
  other way round;
- the import graph of ``apps.*`` has no cycle;
- an import of ``apps.*`` inside a function says why on its line or the line above (the reason is
  Django's app loading, or a heavy optional dependency, never a cycle).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "apps"

DOMAIN_APPS = (
    "tenants", "catalog", "routing", "cache", "limits", "usage", "reporting", "batches", "core", "providers",
)

@dataclass(frozen=True)
class Import:
    """One import statement of an ``apps.*`` module, resolved to the ``apps.*`` modules it loads."""

    source: str
    targets: tuple[str, ...]
    line: int
    in_function: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(APPS.rglob("*.py"))}


def _resolve(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The ``apps.*`` modules one import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "apps"]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "apps":
        return []
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.append(submodule if submodule in known else base)
    return targets


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports() -> list[Import]:
    known = _modules()
    found: list[Import] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, type_checking: bool, module=module, is_package=is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    targets = _resolve(child, module, is_package, known)
                    if targets:
                        found.append(Import(module, tuple(targets), child.lineno, in_function, type_checking))
                    continue
                nested_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                guarded = isinstance(child, ast.If) and _is_type_checking(child.test)
                visit(child, in_function or nested_function, type_checking or guarded)

        visit(tree, in_function=False, type_checking=False)
    return found


def _app_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module to the modules it imports at run time (``TYPE_CHECKING`` blocks load nothing)."""
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    for imp in imports:
        if imp.type_checking:
            continue
        for target in imp.targets:
            if target != imp.source:
                graph[imp.source].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return [_cycle_in(sorted(component), graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest chain from the component's first module back to itself, for a readable message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # a component of two or more always has one


def _has_reason(lines: list[str], line: int) -> bool:
    """A comment on the import's line, or on the line above it or above the run of imports it
    belongs to (one comment may give the reason of a group)."""
    if "#" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_it_parses_the_whole_of_apps():
    imports = _imports()
    assert len(_modules()) > 100
    assert any(imp.in_function for imp in imports), "function-level imports must be seen too"


def _gateway_targets(imp: Import) -> set[str]:
    return {target for target in imp.targets if _app_of(target) == "gateway"}


def test_it_keeps_the_domain_apps_off_the_gateway():
    offenders = sorted(
        f"{imp.source} (line {imp.line}) imports {', '.join(sorted(_gateway_targets(imp)))}"
        for imp in _imports()
        if _app_of(imp.source) in DOMAIN_APPS and _gateway_targets(imp)
    )
    assert not offenders, f"{len(offenders)} domain-app imports of apps.gateway:\n" + "\n".join(offenders)


def test_it_has_no_import_cycle_between_the_modules_of_apps():
    cycles = _cycles(_graph(_imports()))
    chains = "\n".join(" -> ".join(cycle) for cycle in cycles)
    assert not cycles, f"{len(cycles)} import cycles in apps/:\n{chains}"


def test_it_finds_a_cycle_when_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_it_gives_every_function_level_import_of_apps_its_reason():
    missing = []
    for imp in _imports():
        if not imp.in_function:
            continue
        lines = _modules()[imp.source].read_text().splitlines()
        if not _has_reason(lines, imp.line):
            missing.append(f"{imp.source} line {imp.line}: {lines[imp.line - 1].strip()}")
    assert not missing, f"{len(missing)} function-level imports of apps.* without a reason:\n" + "\n".join(missing)
