"""``GET /``: what this server runs and where each part is, for someone who just started it.

No secrets and no database: the admin, dashboard and playground ask for a login themselves,
and the demo's key is printed by ``manage.py demo_credentials``.
"""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe


@csrf_exempt  # it changes nothing: a POST gets 405, not a CSRF page
@require_safe
def landing(request):
    base = request.build_absolute_uri("/").rstrip("/")
    socket_base = ("wss://" if request.is_secure() else "ws://") + request.get_host()
    return render(request, "landing.html", {
        "base": base, "api_base": base + "/v1", "openapi": base + "/v1/openapi.json",
        "websocket": socket_base + "/ws/v1/chat",
    })
