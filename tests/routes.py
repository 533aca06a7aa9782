"""Every route of Django's URLconf, walked through its includes, for tests that must cover them all."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver


@dataclass(frozen=True)
class Route:
    route: str  # "v1/files/<str:file_id>"
    callback: object
    kwargs: tuple[str, ...]  # the names the route captures

    @property
    def path(self) -> str:
        return "/" + self.route


def routes(skip_prefixes: tuple[str, ...] = ()) -> list[Route]:
    """Each pattern with its full route; an include under one of ``skip_prefixes`` is not entered."""
    found: list[Route] = []

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if any(route.startswith(skip) for skip in skip_prefixes):
                continue
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                found.append(Route(route, entry.callback, tuple(entry.pattern.converters)))

    walk(get_resolver().url_patterns, "")
    return found
