"""Stored responses' housekeeping: they expire under their tenant's request log retention."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from apps.tenants.models import Tenant


def _now():
    return timezone.now()


def responses_prune(*, batch_size: int = 5000) -> int:
    """Delete each tenant's stored responses older than its ``log_retention_days`` (none for a
    tenant that keeps its log); returns how many went. Batches of ``batch_size``, each its own
    short transaction found through the tenant-and-time index."""
    deleted = 0
    for tenant_id, days in Tenant.objects.filter(log_retention_days__isnull=False).values_list(
            "pk", "log_retention_days"):
        cutoff = _now() - timedelta(days=days)
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM responses_storedresponse WHERE id IN (SELECT id FROM responses_storedresponse "
                    "WHERE tenant_id = %s AND created_at < %s ORDER BY created_at LIMIT %s)",
                    [tenant_id, cutoff, batch_size])
                count = cursor.rowcount
            deleted += count
            if count < batch_size:
                break
    return deleted
