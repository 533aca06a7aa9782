"""URLs served by Django (the admin, probes, management API). Hot paths are routed in asgi.py."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from apps.core import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
]
