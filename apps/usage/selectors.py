"""Reads of the request log, always inside one tenant."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from apps.usage.models import RequestLog


def request_log_rows(*, tenant_id: int, start: datetime, end: datetime, fields: Sequence[str]) -> Iterator[tuple]:
    """The tenant's log rows in [start, end), oldest first, as tuples of ``fields``, read from a
    server-side cursor so any range runs in constant memory."""
    return (RequestLog.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
            .order_by("created_at", "id").values_list(*fields).iterator(chunk_size=2000))
