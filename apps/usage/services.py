"""Request log housekeeping: per-tenant retention, deleted in batches."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from apps.tenants.models import Tenant


def _now():
    return timezone.now()


def usage_prune(*, batch_size: int = 5000) -> int:
    """Delete each tenant's request log rows older than its ``log_retention_days``; returns how
    many rows went. Only rows the usage rollups have already summed go (ids up to the rollup
    watermark), so the dashboard's history stays whole. Batches of ``batch_size`` rows, each its
    own short transaction found through the tenant-and-time index, so no long lock holds back
    the usage writers."""
    deleted = 0
    for tenant_id, days in Tenant.objects.filter(log_retention_days__isnull=False).values_list(
            "pk", "log_retention_days"):
        cutoff = _now() - timedelta(days=days)
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM usage_requestlog WHERE id IN (SELECT id FROM usage_requestlog WHERE tenant_id = %s "
                    "AND created_at < %s AND id <= (SELECT coalesce(max(last_id), 0) FROM reporting_rollupwatermark) "
                    "ORDER BY created_at LIMIT %s)", [tenant_id, cutoff, batch_size])
                count = cursor.rowcount
            deleted += count
            if count < batch_size:
                break
    return deleted
