"""Writes to the catalog made by the gateway itself (circuit breaker reports)."""

from __future__ import annotations

from datetime import datetime

from django.db import close_old_connections

from apps.catalog.models import Model, ProviderCircuit


def circuit_report(*, provider_id: int, model_id: int, process: str, state: str, consecutive_failures: int,
                   last_failure: str, retry_at: datetime | None, changed_at: datetime) -> None:
    """Record a process's circuit for a model of a provider (one deleted meanwhile is skipped)."""
    close_old_connections()
    if not Model.objects.filter(pk=model_id, provider_id=provider_id).exists():
        return
    ProviderCircuit.objects.update_or_create(
        provider_id=provider_id, model_id=model_id, process=process,
        defaults={"state": state, "consecutive_failures": consecutive_failures, "last_failure": last_failure,
                  "retry_at": retry_at, "changed_at": changed_at},
    )


def circuits_forget(*, process: str) -> int:
    """Remove a process's circuit rows (it is shutting down: its breakers go with it)."""
    close_old_connections()
    deleted, _ = ProviderCircuit.objects.filter(process=process).delete()
    return deleted
