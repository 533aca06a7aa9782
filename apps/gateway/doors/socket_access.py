"""Who may open and use a WebSocket: the browser's origin, the key a handshake carries, and a
logged-in staff user's pick of a key (the playground)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from apps.core.errors import AuthenticationFailed
from apps.gateway.asgi_io import header
from apps.gateway.playground_auth import playground_key_prefix, staff_user_from_cookies
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo

KEY_PROTOCOL_PREFIX = "switchyard.key."


def origin_allowed(scope) -> bool:
    """No Origin (not a browser), this host, or a listed origin."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    allowed = settings.WEBSOCKET_ALLOWED_ORIGINS
    if "*" in allowed or origin in allowed:
        return True
    host = header(scope, b"host")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def handshake_credentials(scope) -> str | None:
    """The ``Bearer ...`` credentials of a handshake: its ``Authorization`` header, or a
    ``switchyard.key.<key>`` subprotocol (browsers cannot set headers); None when it has none."""
    token = header(scope, b"authorization")
    if token is not None:
        return token
    for protocol in scope.get("subprotocols") or ():
        if protocol.startswith(KEY_PROTOCOL_PREFIX):
            return "Bearer " + protocol[len(KEY_PROTOCOL_PREFIX):]
    return None


async def staff_key(runtime: Runtime, scope, key_id) -> KeyInfo:
    """The key a staff user logged in to Django (on this site's pages) picked by its id."""
    if header(scope, b"origin") is None or not origin_allowed(scope):
        raise AuthenticationFailed("Logged-in use needs a browser on this site.")
    user = await staff_user_from_cookies(header(scope, b"cookie"))
    if user is None:
        raise AuthenticationFailed("Log in as a staff user to use a key by its id.")
    prefix = await playground_key_prefix(key_id)
    if prefix is None:
        raise AuthenticationFailed("No such API key.")
    return await runtime.key_for_prefix(prefix)
