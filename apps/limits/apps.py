from __future__ import annotations

from django.apps import AppConfig


class LimitsConfig(AppConfig):
    name = "apps.limits"
    label = "limits"
    verbose_name = "Limits and budgets"
