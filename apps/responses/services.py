"""Stored responses' housekeeping: they expire under their tenant's request log retention."""

from __future__ import annotations

from django.utils import timezone

from apps.core.deletes import delete_in_batches
from apps.tenants.selectors import retention_cutoffs


def _now():
    return timezone.now()


def responses_prune(*, batch_size: int = 5000) -> int:
    """Delete each tenant's stored responses older than its ``log_retention_days`` (none for a
    tenant that keeps its log); returns how many went. Batches of ``batch_size``, each its own
    short transaction found through the tenant-and-time index."""
    return sum(delete_in_batches(
        "DELETE FROM responses_storedresponse WHERE id IN (SELECT id FROM responses_storedresponse "
        "WHERE tenant_id = %s AND created_at < %s ORDER BY created_at LIMIT %s)",
        [tenant_id, cutoff], batch_size=batch_size) for tenant_id, cutoff in retention_cutoffs(_now()))
