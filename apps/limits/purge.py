"""Housekeeping of the Postgres counters: rows whose window, period or lease has passed."""

from __future__ import annotations

import time

from apps.limits.models import Counter, Lease


def counters_purge(*, now_ms: int | None = None) -> int:
    """Delete minute windows, periods and leases that have expired (Postgres path)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    counters, _ = Counter.objects.filter(expires_ms__lt=now_ms).delete()
    leases, _ = Lease.objects.filter(expires_ms__lt=now_ms).delete()
    return counters + leases
