"""The ASGI entry point.

Django's ASGI app is built first (it sets up the app registry). HTTP goes to the gateway's
plain ASGI door (``apps/gateway/doors/http.py``), which answers the hot endpoints itself, ahead of
Django's handler, and hands every other path to Django. WebSockets go to Channels consumers:
``/ws/v1/chat`` is the gateway's WebSocket door, ``/ws/admin/batches`` the admin's live batch
progress (staff session); any other path is refused at the handshake.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()
if settings.SERVE_STATIC:
    # The admin's and the dashboard's CSS and JS (Chart.js), served by the app itself so one
    # process is the whole web tier.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from apps.batches.consumers import BatchProgressConsumer  # noqa: E402
from apps.gateway.cors import cors_wrap  # noqa: E402
from apps.gateway.doors.http import GatewayHTTP  # noqa: E402
from apps.gateway.doors.websocket import ChatConsumer, refuse_socket  # noqa: E402

# The hot endpoints are answered by GatewayHTTP; everything else falls through to Django.
gateway_http = GatewayHTTP(django_asgi_app)

application = ProtocolTypeRouter({
    # Unwrapped unless CORS_ALLOWED_ORIGINS lists origins: cross-origin access is closed by default.
    "http": cors_wrap(gateway_http, settings.CORS_ALLOWED_ORIGINS),
    "lifespan": gateway_http,
    "websocket": URLRouter([
        path("ws/v1/chat", ChatConsumer.as_asgi()),
        path("ws/admin/batches", AllowedHostsOriginValidator(AuthMiddlewareStack(BatchProgressConsumer.as_asgi()))),
        re_path(r"", refuse_socket),
    ]),
})
