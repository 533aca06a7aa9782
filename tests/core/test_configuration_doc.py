"""docs/configuration.md lists every environment variable the code reads, and nothing else.

A variable is read where ``config/`` or ``apps/`` (or ``.ci/``, for ``make lint``) passes its name
as a literal to one of ``config/env.py``'s readers, to ``os.environ.get``, ``os.getenv``,
``os.environ.setdefault`` or ``os.environ[...]``. It is documented when a row of one of the
page's tables names it, in backquotes, in its first cell, and the row's default shows the value
the code falls back on wherever that is a literal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
SOURCES = [REPO / "config", REPO / "apps", REPO / ".ci"]
READERS = {"env_str", "env_bool", "env_int", "env_float", "env_decimal", "env_list", "_origins"}


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def names_read(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Name) and func.id in READERS:
                name = _literal(node.args[0])
            elif isinstance(func, ast.Attribute) and func.attr in {"get", "setdefault"} and _is_environ(func.value):
                name = _literal(node.args[0])
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv"
                  and isinstance(func.value, ast.Name) and func.value.id == "os"):
                name = _literal(node.args[0])
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            name = _literal(node.slice)
        if name:
            names.add(name)
    return names


def read_by_code() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            for name in names_read(ast.parse(path.read_text(), filename=str(path))):
                where.setdefault(name, []).append(str(path.relative_to(REPO)))
    return where


def documented() -> set[str]:
    names = set()
    for line in DOC.read_text().splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= {"-"}:
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]))
    return names


def test_it_finds_what_the_settings_read():
    where = read_by_code()
    assert {"DATABASE_URL", "SECRET_KEY", "CACHE_EF_SEARCH", "CORS_ALLOWED_ORIGINS", "SWITCHYARD_PGDATA",
            "SWITCHYARD_API_KEY", "AUDIT_TIMEOUT"} <= where.keys()
    assert "config/settings.py" in where["CACHE_EF_SEARCH"]


def test_it_reads_every_kind_of_lookup():
    tree = ast.parse("import os\nenv_int('A', 1)\nos.environ.get('B')\nos.environ['C']\nos.getenv('D')\n"
                     "os.environ.setdefault('E', '1')\n_origins('F')\nos.environ.get(name)\n")
    assert names_read(tree) == {"A", "B", "C", "D", "E", "F"}


def test_it_documents_every_variable_the_code_reads():
    where = read_by_code()
    missing = {name: files for name, files in where.items() if name not in documented()}
    assert not missing, f"read by the code but not in docs/configuration.md: {missing}"


def test_it_documents_nothing_the_code_does_not_read():
    stale = sorted(documented() - read_by_code().keys())
    assert not stale, f"docs/configuration.md lists variables nothing reads: {stale}"


def _constant(node: ast.AST):
    """The value of an expression made of literals only (``4 * 1024 * 1024``), else None."""
    if not all(isinstance(part, (ast.Constant, ast.BinOp, ast.operator, ast.UnaryOp, ast.unaryop))
               for part in ast.walk(node)):
        return None
    return eval(compile(ast.Expression(node), "<default>", "eval"))  # noqa: S307  # nosec B307  # literals only


def defaults_in_code() -> dict[str, object]:
    defaults = {}
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and len(node.args) >= 2):
                    continue
                func = node.func
                reader = isinstance(func, ast.Name) and func.id in READERS
                environ_get = isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value)
                if (reader or environ_get) and (name := _literal(node.args[0])):
                    value = _constant(node.args[1])
                    if value is not None and value != "":
                        defaults[name] = value
    return defaults


def documented_defaults() -> dict[str, str]:
    defaults = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        values = cells[1].split(" / ")
        for index, name in enumerate(names):
            defaults[name] = values[index] if len(values) == len(names) else cells[1]
    return defaults


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def test_it_gives_the_defaults_the_code_has():
    documented = documented_defaults()
    wrong = {name: (documented[name], _shown(value)) for name, value in defaults_in_code().items()
             if _shown(value) not in documented[name]}
    assert not wrong, f"docs/configuration.md's default differs from the code's: {wrong}"
