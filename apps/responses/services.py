"""Stored responses' housekeeping: they expire under their tenant's request log retention, and a
background response whose run died with its gateway process is failed."""

from __future__ import annotations

from django.db import connection, transaction
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


_STALE_ERROR = ('{"status": "failed", "error": {"code": "server_error", "message": "The gateway process running this '
                'background response stopped before it finished."}}')


@transaction.atomic
def responses_stale_fail() -> int:
    """Fail every background response still queued or in progress whose run has not written it
    by its ``stale_at`` (its process died), as reading it would: the response ``failed`` and its
    stream ended with ``response.failed``. Returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE responses_storedresponse SET status = 'failed', response = response || %s::jsonb, "
            "events = events || jsonb_build_array(jsonb_build_object('type', 'response.failed', "
            "'response', response || %s::jsonb, "
            "'sequence_number', COALESCE((events -> -1 ->> 'sequence_number')::int + 1, 0))), stale_at = NULL "
            "WHERE background AND status IN ('queued', 'in_progress') AND stale_at < %s",
            [_STALE_ERROR, _STALE_ERROR, _now()])
        return cursor.rowcount
