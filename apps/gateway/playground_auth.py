"""Who may use a key without its secret: a staff user logged in to Django (the playground).

Keys are stored hashed, so the playground cannot show a key's secret; a staff user picks a key
by its id instead, and the WebSocket and EventSource doors act as that key. Both reads happen
once per socket or stream, in a thread, never per request on the API path.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie

from apps.tenants.models import ApiKey


def _is_staff(user) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


@database_sync_to_async
def _user_from_session(session_key: str):
    from django.contrib.auth import get_user

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(SimpleNamespace(session=store))  # also checks the session's password hash
    return user if _is_staff(user) else None


async def staff_user_from_cookies(cookie_header: str | None):
    """The active staff user behind the request's session cookie, or None."""
    if not cookie_header:
        return None
    session_key = parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    return await _user_from_session(session_key)


def playground_keys() -> list:
    """Every key a staff user may pick: not revoked, tenant active (sync)."""
    return list(ApiKey.objects.select_related("tenant").filter(revoked_at__isnull=True, tenant__is_active=True)
                .order_by("tenant__name", "name"))


@database_sync_to_async
def playground_key_prefix(key_id) -> str | None:
    """The visible prefix of key ``key_id`` (an int or a digit string), or None."""
    try:
        key_id = int(key_id)
    except (TypeError, ValueError):
        return None
    return ApiKey.objects.filter(pk=key_id).values_list("prefix", flat=True).first()


def is_playground_user(user) -> bool:
    return _is_staff(user)
