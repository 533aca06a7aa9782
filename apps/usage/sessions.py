"""Sessions: a tenant's requests that share a session id (``x-switchyard-session-id`` or
``metadata.session_id``), read from the log through its partial index on (tenant, session,
time), which holds only the rows that name a session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Max, Min, Sum
from django.utils import timezone

from apps.usage.models import RequestLog

MAX_REQUESTS = 500


@dataclass(frozen=True)
class Span:
    """A request on the session's timeline: where it starts and how long it took, in percent of
    the session's span, and the row itself."""

    log: RequestLog
    started: datetime
    left: float
    width: float
    first_token: float | None  # percent of the span at which its first token came, for streams


def sessions_recent(*, tenant_id: int | None, days: int = 7, limit: int = 100) -> list[dict]:
    """The latest sessions (by their last request) of one tenant, or of all for staff."""
    rows = RequestLog.objects.exclude(session_id="").filter(created_at__gte=timezone.now() - timedelta(days=days))
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    return list(rows.values("tenant_id", "tenant__name", "session_id").annotate(
        requests=Count("id"), first=Min("created_at"), last=Max("created_at"), cost=Sum("cost"),
    ).order_by("-last")[:limit])


def session_timeline(*, tenant_id: int, session_id: str) -> tuple[list[Span], dict]:
    """One session's requests in the order they started (at most ``MAX_REQUESTS``, the latest),
    placed on a common time axis, and the session's totals."""
    logs = list(RequestLog.objects.filter(tenant_id=tenant_id, session_id=session_id).select_related(
        "api_key").order_by("-created_at")[:MAX_REQUESTS])
    if not logs:
        return [], {}
    # A row is written when its request ends: it started latency_ms before.
    starts = {log.pk: log.created_at - timedelta(milliseconds=log.latency_ms) for log in logs}
    begin = min(starts.values())
    end = max(log.created_at for log in logs)
    span_ms = max((end - begin).total_seconds() * 1000, 1.0)
    spans = []
    for log in sorted(logs, key=lambda log: (starts[log.pk], log.pk)):
        offset = (starts[log.pk] - begin).total_seconds() * 1000
        spans.append(Span(
            log=log, started=starts[log.pk], left=round(offset / span_ms * 100, 3),
            width=round(max(log.latency_ms / span_ms * 100, 0.3), 3),
            first_token=round((offset + log.ttft_ms) / span_ms * 100, 3) if log.is_stream and log.ttft_ms else None))
    totals = {"requests": len(logs), "cost": sum((log.cost for log in logs), Decimal(0)),
              "tokens": sum(log.input_tokens + log.output_tokens for log in logs),
              "errors": sum(1 for log in logs if log.status_code >= 400), "begin": begin, "end": end,
              "duration_ms": span_ms, "truncated": len(logs) == MAX_REQUESTS}
    return spans, totals
