"""Development tools: ``manage.py run_platform`` (``make run``), ``manage.py run_cluster`` (``make
cluster``) and the small TCP balancer it puts in front of its replicas. Installed only outside
production (``config/settings.py``), like the simulated upstream; a deployment runs its
processes from ``deploy/``."""

from __future__ import annotations

from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    name = "apps.devtools"
    label = "devtools"
    verbose_name = "Development tools"
