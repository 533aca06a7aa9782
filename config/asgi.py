"""The ASGI entry point.

Django's ASGI app is built first (it sets up the app registry); the gateway's hot endpoints
are Channels consumers routed here, ahead of Django's handler, so they skip Django's
middleware and request signals.
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
    # The admin's CSS and JS, served by the app itself so one process is the whole web tier.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from apps.gateway.http import GatewayHTTP  # noqa: E402

# The hot endpoints are answered by GatewayHTTP; everything else falls through to Django.
application = GatewayHTTP(django_asgi_app)
