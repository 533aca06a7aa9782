"""Reads for limits: a tenant's or key's spend this period, as enforcement sees it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import redis
from django.conf import settings

from apps.limits.counters import redis_keys
from apps.limits.models import BudgetAlert, Counter
from apps.limits.periods import minute_window, period_bounds
from apps.limits.spec import scope_limits, usd
from apps.tenants.models import ApiKey


@dataclass(frozen=True)
class Spend:
    budget: Decimal
    spent: Decimal
    reserved: Decimal
    period_start: datetime
    alert_percent: int | None
    alerted_at: datetime | None

    @property
    def percent(self) -> float:
        return float(self.spent * 100 / self.budget) if self.budget else 100.0

    @property
    def alert_state(self) -> str:
        if self.alerted_at is not None:
            return "alerted"
        if self.alert_percent is None:
            return "no alert set"
        return "below threshold"


def _counts(scope: str, period: int) -> tuple[int, int]:
    if settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            spent, reserved = client.hmget(redis_keys(scope, window=minute_window(time.time())[0], period=period)[2],
                                           "spent", "reserved")
        finally:
            client.close()
        return int(spent or 0), int(reserved or 0)
    row = Counter.objects.filter(scope=scope, kind="b", window_id=period).values_list("used", "reserved").first()
    return row or (0, 0)


def spend_current(obj, *, now: float | None = None) -> Spend | None:
    """The budget, spend and alert state of a Tenant or ApiKey this period; None without a budget."""
    is_key = isinstance(obj, ApiKey)
    limits = scope_limits(obj, tenant_id=obj.tenant_id if is_key else obj.pk, api_key_id=obj.pk if is_key else None)
    if limits is None or limits.budget is None:
        return None
    period, _end = period_bounds(limits.period, limits.tz, now if now is not None else time.time())
    spent, reserved = _counts(limits.scope, period)
    start = datetime.fromtimestamp(period, UTC)
    alert = BudgetAlert.objects.filter(scope=limits.scope, period_start=start).values_list("created_at", flat=True)
    return Spend(budget=usd(limits.budget), spent=usd(spent), reserved=usd(reserved), period_start=start,
                 alert_percent=obj.budget_alert_percent, alerted_at=alert.first())
