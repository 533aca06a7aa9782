"""The login lockout (django-axes) as Switchyard uses it: its authentication backend, and the
answer to a login it refuses on the admin's and the tenant members' login forms."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.http import HttpRequest, HttpResponse


class LockoutBackend(AxesStandaloneBackend):
    """Counts and refuses logins that come with a request, as every login form's do.

    django-axes raises for an ``authenticate()`` without a request; such a call (a script, a
    test client's ``login()``) is no login over HTTP, so it is passed on to the password backend
    uncounted instead."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict | None = None) -> HttpResponse:
    """429 with ``Retry-After`` (the whole cool-off: each try during a lockout starts it again).

    Nothing about the account is said beyond the refusal, and no CORS header is added."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    minutes = max(seconds // 60, 1)
    response = HttpResponse(f"Account locked: too many login attempts. Try again in {minutes} minutes.\n",
                            status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(seconds)
    return response
