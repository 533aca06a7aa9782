"""The limits one scope (a tenant or a key) enforces, as the gateway keeps them in memory."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from zoneinfo import ZoneInfo

NANOS = Decimal(1_000_000_000)


def nanos(usd: Decimal) -> int:
    """Whole nano-dollars, rounded up: counters are integers, and a spend is never under-counted."""
    return int((usd * NANOS).to_integral_value(rounding=ROUND_CEILING))


def usd(value: int) -> Decimal:
    return (Decimal(value) / NANOS).quantize(Decimal("0.000000001"))


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    scope: str  # "t:<tenant id>" or "k:<key id>"
    tenant_id: int
    api_key_id: int | None
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    budget: int | None  # nano-dollars per period
    period: str
    tz: ZoneInfo
    alert_at: int | None  # nano-dollars
    label: str = ""  # who a refusal names, when not the key or the tenant ("tag 'eval'")
    # For a tag's or an end user's limits: "tag" or "user", and the tag or the end user's id
    # (what a budget alert names).
    attribution_kind: str = ""
    attribution_value: str = ""

    @property
    def needs_estimate(self) -> bool:
        return self.tpm is not None or self.budget is not None


def _alert_at(budget: int | None, percent: int | None) -> int | None:
    """The spend (nano-dollars) at which a budget's soft alert fires, None without one."""
    if budget is None or not percent:
        return None
    return max(math.ceil(budget * percent / 100), 1)


def scope_limits(obj, *, tenant_id: int, api_key_id: int | None) -> ScopeLimits | None:
    """The limits of a Tenant or ApiKey row, or None when it sets none."""
    if not obj.has_limits():
        return None
    budget = nanos(Decimal(obj.budget_usd)) if obj.budget_usd is not None else None
    alert_at = _alert_at(budget, obj.budget_alert_percent)
    return ScopeLimits(
        scope=f"k:{api_key_id}" if api_key_id is not None else f"t:{tenant_id}",
        tenant_id=tenant_id, api_key_id=api_key_id, rpm=obj.rpm_limit, tpm=obj.tpm_limit,
        concurrency=obj.concurrency_limit, budget=budget, period=obj.budget_period,
        tz=ZoneInfo(obj.budget_timezone or "UTC"), alert_at=alert_at,
    )


def attribution_scope_limits(limit) -> ScopeLimits | None:
    """The limits of an AttributionLimit row (a tenant's tag or end user), or None when it sets
    none. Its counters are the tenant's own for that tag or user: scope ``a:<tenant>:<t|u>:<digest>``
    (at most 32 characters, as the counters' scope columns hold)."""
    if not limit.has_limits():
        return None
    digest = hashlib.sha256(limit.value.encode()).hexdigest()[:16]
    name = "tag" if limit.kind == "tag" else "end user"
    budget = nanos(Decimal(limit.budget_usd)) if limit.budget_usd is not None else None
    return ScopeLimits(
        scope=f"a:{limit.tenant_id}:{limit.kind[0]}:{digest}", tenant_id=limit.tenant_id, api_key_id=None,
        rpm=limit.rpm_limit, tpm=limit.tpm_limit, concurrency=limit.concurrency_limit, budget=budget,
        period=limit.budget_period, tz=ZoneInfo(limit.budget_timezone or "UTC"),
        alert_at=_alert_at(budget, limit.budget_alert_percent), label=f"{name} {limit.value!r}",
        attribution_kind=limit.kind, attribution_value=limit.value)
