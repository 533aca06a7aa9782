"""URLs served by Django (the admin, probes, management API). Hot paths are routed in asgi.py."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from apps.core import health
from apps.gateway.api.complete import CompleteView

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("v1/complete", CompleteView.as_view(), name="complete"),
    path("admin/", admin.site.urls),
]
