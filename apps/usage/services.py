"""Request log housekeeping: per-tenant retention, deleted in batches."""

from __future__ import annotations

from django.utils import timezone

from apps.core.deletes import delete_in_batches
from apps.tenants.selectors import retention_cutoffs


def _now():
    return timezone.now()


def usage_prune(*, batch_size: int = 5000) -> int:
    """Delete each tenant's request log rows older than its ``log_retention_days``; returns how
    many rows went. Only rows the usage rollups have already summed go (ids up to the rollup
    watermark), so the dashboard's history stays whole. Batches of ``batch_size`` rows, each its
    own short transaction found through the tenant-and-time index, so no long lock holds back
    the usage writers."""
    cutoffs = retention_cutoffs(_now())
    logs = sum(delete_in_batches(
        "DELETE FROM usage_requestlog WHERE id IN (SELECT id FROM usage_requestlog WHERE tenant_id = %s "
        "AND created_at < %s AND id <= (SELECT coalesce(max(last_id), 0) FROM reporting_rollupwatermark) "
        "ORDER BY created_at LIMIT %s)", [tenant_id, cutoff], batch_size=batch_size)
        for tenant_id, cutoff in cutoffs)
    # Kept request bodies go under the same retention (nothing sums them: no watermark to wait for).
    for tenant_id, cutoff in cutoffs:
        delete_in_batches(
            "DELETE FROM usage_requestbody WHERE id IN (SELECT id FROM usage_requestbody WHERE tenant_id = %s "
            "AND created_at < %s ORDER BY created_at LIMIT %s)", [tenant_id, cutoff], batch_size=batch_size)
    return logs
