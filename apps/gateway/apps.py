from __future__ import annotations

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "apps.gateway"
    label = "gateway"
    verbose_name = "Gateway"

    def ready(self) -> None:
        # Imported here, once every app's models are loaded: these modules import models.
        from apps.core.health import readiness_probe_add
        from apps.gateway.config_changes import signals_connect
        from apps.gateway.runtime import draining_probe

        signals_connect()
        readiness_probe_add("shutdown", draining_probe)
