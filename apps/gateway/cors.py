"""Cross-origin access to the tenant API: closed unless ``CORS_ALLOWED_ORIGINS`` lists origins.

With the list empty (the default) nothing is wrapped, so no answer carries an
``Access-Control-Allow-*`` header and a page on another site cannot read any of them. With
exact origins listed (``https://app.example.com``), :func:`cors_wrap` puts a small ASGI wrapper
in front of the HTTP app that, for paths under ``/v1/`` and a listed ``Origin`` only:

* answers a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) itself with 204 and
  the allow headers, before any authentication: a browser sends no key in a preflight;
* adds ``Access-Control-Allow-Origin: <that origin>`` and the exposed ``x-switchyard-*``,
  rate-limit and budget headers to every other answer.

Any other origin, and every other path (admin, login, playground, probes), is passed through
untouched. Credentials are never allowed (no ``Access-Control-Allow-Credentials``): the API
takes keys in headers, and the pages that a session cookie authenticates stay same-site. The
cost on the hot path is one scan of the request headers for ``Origin``.
"""

from __future__ import annotations

from collections.abc import Iterable

_PREFIX = "/v1/"
_ALLOW_METHODS = b"GET, POST, DELETE, OPTIONS"
_MAX_AGE = b"600"
_EXPOSE = b", ".join([
    b"x-switchyard-request-id", b"x-switchyard-model", b"x-switchyard-provider", b"x-switchyard-cache",
    b"x-switchyard-cache-similarity", b"x-switchyard-cost", b"x-switchyard-overhead-ms",
    b"x-switchyard-error-code", b"x-switchyard-budget-limit", b"x-switchyard-budget-remaining",
    b"x-switchyard-budget-reset", b"x-switchyard-concurrency-limit", b"x-switchyard-concurrency-remaining",
    b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests",
    b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens",
    b"request-id", b"retry-after", b"age",
])
# Characters of a list of header names: anything else in Access-Control-Request-Headers is not
# echoed back.
_HEADER_LIST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ")


class CorsWrapper:
    """The ASGI wrapper that :func:`cors_wrap` returns when origins are listed."""

    def __init__(self, app, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(origin.encode("latin-1") for origin in origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        if origin is None or origin not in self.origins:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await _preflight(send, origin, _header(scope, b"access-control-request-headers"))
            return

        async def send_allowed(message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"access-control-allow-origin", origin),
                           (b"access-control-expose-headers", _EXPOSE), (b"vary", b"Origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_allowed)


def cors_wrap(app, origins: Iterable[str]):
    """``app`` itself when no origin is listed (CORS closed, nothing added to the hot path),
    else ``app`` behind a :class:`CorsWrapper` for those exact origins."""
    origins = list(origins)
    return CorsWrapper(app, origins) if origins else app


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _preflight(send, origin: bytes, requested: bytes | None) -> None:
    headers = [(b"access-control-allow-origin", origin), (b"access-control-allow-methods", _ALLOW_METHODS),
               (b"access-control-max-age", _MAX_AGE), (b"vary", b"Origin"), (b"content-length", b"0")]
    if requested and set(requested) <= _HEADER_LIST_CHARS:
        # A listed origin is trusted with any request header it asks for (the SDKs send several
        # of their own); the key still has to be right.
        headers.append((b"access-control-allow-headers", requested))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
