"""The API's answer to a path it does not serve: JSON in OpenAI's error shape, never Django's HTML
page, with a hint for the usual ways an SDK's base URL goes wrong.

``/v1`` missing (``POST /chat/completions``: the SDK's base URL lacks ``/v1``), ``/v1`` twice
(``/v1/v1/chat/completions``: the base URL ends in ``/v1`` and the path repeats it) and a
trailing slash each say which path was meant and what the base URL should be. Any other miss
under ``/v1/`` lists the main endpoints and points at the OpenAPI document.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.core.errors import NotFound, error_response

# The first segment of each API path, as a client reaches it with the SDK's base URL set without
# /v1 (what the SDK appends to the base): ``chat/completions``, ``files/<id>``, ...
KNOWN_HEADS = ("chat", "embeddings", "models", "messages", "files", "batches", "jobs", "cache", "feedback", "usage",
               "complete", "openapi.json")
# The URLconf's patterns for this view (config/urls.py): last, after every route that serves.
V1_MISSES = r"^v1(?:/.*)?$"
UNPREFIXED = r"^(?:{})(?:/.*)?$".format("|".join(head.replace(".", r"\.") for head in KNOWN_HEADS))
_MAIN = "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models, POST /v1/messages"


def _known(rest: str) -> bool:
    """``rest`` (a path after ``/v1/``, no leading slash) starts like one the API serves."""
    return rest.split("/", 1)[0] in KNOWN_HEADS


def miss_hint(path: str, base: str) -> str:
    """What to tell a client that asked for ``path``; ``base`` is this server's API base URL."""
    rest = path.strip("/")
    if rest.startswith("v1/v1/") or rest == "v1/v1":
        meant = "/" + rest.removeprefix("v1/")
        return (f"The path repeats /v1: did you mean {meant}? Set the SDK's base URL to {base} (it ends in /v1 "
                "once; the SDK adds the rest).")
    if path.endswith("/") and _known(rest.removeprefix("v1/")):
        return f"Did you mean /{rest}, without the trailing slash? The SDK's base URL is {base}."
    if not rest.startswith("v1/") and _known(rest):
        return f"The path lacks /v1: did you mean /v1/{rest}? Set the SDK's base URL to {base} (with /v1)."
    return (f"The API's base URL is {base}. Its endpoints include {_MAIN}; GET /v1/openapi.json describes "
            "all of them.")


@csrf_exempt  # no session, no state: an API client's POST gets this JSON, not a CSRF page
def api_not_found(request, **kwargs) -> HttpResponse:
    """404 for a path under ``/v1`` (or a known endpoint's path without it) that nothing serves."""
    base = request.build_absolute_uri("/v1")
    message = f"Invalid URL ({request.method} {request.path}). {miss_hint(request.path, base)}"
    return error_response(NotFound(message, code="unknown_url"))
