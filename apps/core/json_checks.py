"""Checks any JSON body the project takes must pass, whoever takes it (the gateway's doors, the
batch API): not nested too deep to be written again, no NUL character Postgres cannot store.
"""

from __future__ import annotations

from apps.core.errors import BadRequest

# orjson refuses to write values nested 255 levels deep, and the cache and the Messages
# translation wrap parts of a body a few levels deeper, so bodies are held well below that.
MAX_NESTING = 64


def nesting_too_deep() -> BadRequest:
    """The error for a body nested more than :data:`MAX_NESTING` levels."""
    return BadRequest(f"The request body nests arrays and objects more than {MAX_NESTING} levels deep.",
                      code="nesting_too_deep")


def nesting_check(body: dict) -> None:
    """Refuse a body nested more than :data:`MAX_NESTING` levels (the body itself is level 1).

    One pass over the containers, strings and numbers untouched: a few microseconds for a
    usual request, about one per message of a long conversation."""
    stack = [(body, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_NESTING:
            raise nesting_too_deep()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                push((child, depth + 1))


def nul_check(value, param: str | None) -> None:
    """Refuse a NUL character in any string of ``value`` (object keys too): Postgres text and
    jsonb cannot hold one, so what is stored must not carry it."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise BadRequest(f"'{param}' may not contain NUL characters (\\u0000)." if param else
                                 "The request may not contain NUL characters (\\u0000).", param=param,
                                 code="invalid_value")
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
