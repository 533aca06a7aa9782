"""URLs served by Django (the admin, probes, management API). Hot paths are routed in asgi.py."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from apps.core import health
from apps.core.landing import landing
from apps.gateway.api.not_found import UNPREFIXED, V1_MISSES, api_not_found
from apps.gateway.api.openapi import openapi_json
from apps.gateway.doors.complete import CompleteView
from apps.gateway.doors.eventsource import stream
from apps.gateway.playground import playground
from apps.reporting.api.usage import UsageExportView, UsageView
from apps.reporting.dashboard import dashboard
from apps.reporting.tenant_page import tenant_usage

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("v1/openapi.json", openapi_json, name="openapi"),
    path("v1/complete", CompleteView.as_view(), name="complete"),
    path("v1/usage", UsageView.as_view(), name="usage"),
    path("v1/usage/export", UsageExportView.as_view(), name="usage-export"),
    path("v1/", include("apps.batches.api.urls")),
    path("admin/dashboard/", dashboard, name="dashboard"),
    path("v1/stream", stream, name="stream"),
    path("playground/", playground, name="playground"),
    path("account/login/", auth_views.LoginView.as_view(template_name="account/login.html"), name="account-login"),
    path("account/logout/", auth_views.LogoutView.as_view(next_page="/account/login/"), name="account-logout"),
    path("account/usage/", tenant_usage, name="account-usage"),
    path("admin/", admin.site.urls),
    path("", landing, name="landing"),
    # Last: API paths nothing above serves answer JSON with a hint, not Django's HTML 404.
    re_path(V1_MISSES, api_not_found),
    re_path(UNPREFIXED, api_not_found),
]
