from __future__ import annotations

from django.apps import AppConfig


class ReportingConfig(AppConfig):
    name = "apps.reporting"
    label = "reporting"
    verbose_name = "Reporting"
