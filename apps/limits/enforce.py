"""Reserve before the upstream call, settle when the answer ends.

A request reserves, in every scope that limits it (its key and its tenant), one request, its
estimated tokens (prompt plus ``max_tokens``) and its estimated cost (those tokens at the
dearest model it may fall back to), and takes a concurrency slot. When it ends (answered,
failed, cancelled, or served from the cache) it settles: the reservation is replaced by what
it really used, and the slot is freed. Settlements that carry a scope's spend over its alert
threshold are returned, for the caller to record.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from decimal import Decimal

from apps.core.errors import BudgetExceeded, LimitsUnavailable, RateLimited
from apps.limits.counters import (
    BUDGET,
    CONCURRENCY,
    KIND_NAMES,
    REQUESTS,
    Check,
    Counters,
    PostgresCounters,
    RedisCounters,
    Usage,
)
from apps.limits.periods import NEVER_ENDS, minute_window, period_bounds
from apps.limits.spec import ScopeLimits, nanos, usd

logger = logging.getLogger(__name__)


def _now() -> float:
    """Epoch seconds; tests replace this to cross minute and period boundaries without sleeping."""
    return time.time()


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``12s``, ``6m0s``, ``3h2m1s``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(slots=True)
class Crossing:
    """A settlement that took a scope's spend over its alert threshold."""

    limits: ScopeLimits
    period_start: int
    spent: int


@dataclass(slots=True)
class Reservation:
    request_id: str
    checks: list[Check]
    usages: list[Usage]
    now: float
    window: int
    window_end: float
    tokens: int
    cost: int
    settled: bool = False

    def headers(self, *, cost: Decimal | None = None) -> list[tuple[bytes, bytes]]:
        """The limit headers of an answer. With ``cost`` (an answer whose cost is known when its
        headers leave), the budget left counts that cost instead of the request's own hold, an
        upper bound that can exceed all the money left; a stream's answer counts the hold."""
        if cost is not None and self.cost:
            return limit_headers(self.checks, self.usages, now=self.now, window_end=self.window_end,
                                 hold=self.cost, actual=nanos(cost))
        return limit_headers(self.checks, self.usages, now=self.now, window_end=self.window_end)


def _money(value: int) -> bytes:
    """Nano-dollars as the shortest exact decimal: ``0``, ``0.0025``, ``10``."""
    whole, fraction = divmod(value, 1_000_000_000)
    return b"%d.%s" % (whole, (b"%09d" % fraction).rstrip(b"0")) if fraction else b"%d" % whole


def money_text(value: int) -> str:
    """Nano-dollars as a reader expects money: ``0.00``, ``0.0025``, ``10.00``, never ``0E-9``."""
    amount = usd(value).normalize()
    return f"{amount.quantize(Decimal('0.01')) if amount.as_tuple().exponent > -2 else amount:f}"


def limit_headers(checks: list[Check], usages: list[Usage], *, now: float, window_end: float, hold: int = 0,
                  actual: int | None = None) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers plus Switchyard's budget and concurrency ones, each
    from the scope with the least left (the first such scope on a tie). With ``actual``, a
    budget counts ``actual`` nano-dollars in place of the ``hold`` the request reserved."""
    requests = tokens = budget = concurrency = None  # (check, limit, remaining) of the tightest scope
    for check, usage in zip(checks, usages, strict=True):
        lim = check.limits
        if lim.rpm is not None:
            left = max(lim.rpm - usage.requests, 0)
            if requests is None or left < requests[2]:
                requests = (check, lim.rpm, left)
        if lim.tpm is not None:
            left = max(lim.tpm - usage.tokens, 0)
            if tokens is None or left < tokens[2]:
                tokens = (check, lim.tpm, left)
        if lim.budget is not None:
            reserved = usage.reserved if actual is None else max(usage.reserved - hold, 0) + actual
            left = max(lim.budget - usage.spent - reserved, 0)
            if budget is None or left < budget[2]:
                budget = (check, lim.budget, left)
        if lim.concurrency is not None:
            left = max(lim.concurrency - usage.inflight, 0)
            if concurrency is None or left < concurrency[2]:
                concurrency = (check, lim.concurrency, left)
    headers: list[tuple[bytes, bytes]] = []
    if requests is not None or tokens is not None:
        reset = duration(window_end - now).encode()
        if requests is not None:
            headers += [(b"x-ratelimit-limit-requests", b"%d" % requests[1]),
                        (b"x-ratelimit-remaining-requests", b"%d" % requests[2]),
                        (b"x-ratelimit-reset-requests", reset)]
        if tokens is not None:
            headers += [(b"x-ratelimit-limit-tokens", b"%d" % tokens[1]),
                        (b"x-ratelimit-remaining-tokens", b"%d" % tokens[2]),
                        (b"x-ratelimit-reset-tokens", reset)]
    if budget is not None:
        check, limit, remaining = budget
        headers += [(b"x-switchyard-budget-limit", _money(limit)),
                    (b"x-switchyard-budget-remaining", _money(remaining))]
        if check.period_end != NEVER_ENDS:
            headers.append((b"x-switchyard-budget-reset", duration(check.period_end - now).encode()))
    if concurrency is not None:
        headers += [(b"x-switchyard-concurrency-limit", b"%d" % concurrency[1]),
                    (b"x-switchyard-concurrency-remaining", b"%d" % concurrency[2])]
    return headers


def _who(limits: ScopeLimits) -> str:
    if limits.label:
        return limits.label
    return "this API key" if limits.api_key_id is not None else "this tenant"


def _refusal(kind: int, check: Check, usage: Usage, headers: list[tuple[bytes, bytes]], *, now: float,
             window_end: float) -> RateLimited:
    error = _refusal_error(kind, check, usage, headers, now=now, window_end=window_end)
    error.limit_kind = KIND_NAMES[kind]
    return error


def _refusal_error(kind: int, check: Check, usage: Usage, headers: list[tuple[bytes, bytes]], *, now: float,
                   window_end: float) -> RateLimited:
    lim = check.limits
    as_dict = {name.decode(): value.decode() for name, value in headers}
    if kind == BUDGET:
        wait = check.period_end - now
        if usage.spent >= lim.budget:
            # Spent for good: waiting cannot help before the period ends (SDKs that honour
            # x-should-retry give up at once; Retry-After says when the period ends, if ever).
            as_dict["x-should-retry"] = "false"
            if wait != NEVER_ENDS:
                as_dict["Retry-After"] = str(max(math.ceil(wait), 1))
            when = f" It resets in {duration(wait)}." if wait != NEVER_ENDS else " It does not reset."
        else:
            # Held by requests still running: their settlement gives back what they did not use.
            as_dict["Retry-After"] = "1"
            when = " Requests still running hold the rest; it may free up when they end."
        return BudgetExceeded(
            f"The {lim.period if lim.period != 'never' else 'lifetime'} budget of ${money_text(lim.budget)} for "
            f"{_who(lim)} is spent (${money_text(usage.spent)} settled, ${money_text(usage.reserved)} in flight)."
            f"{when}", headers=as_dict)
    if kind == CONCURRENCY:
        as_dict["Retry-After"] = "1"
        return RateLimited(f"Concurrent request limit reached for {_who(lim)}: {lim.concurrency} already running.",
                           code="concurrency_limit_exceeded", headers=as_dict)
    wait = window_end - now
    as_dict["Retry-After"] = str(max(math.ceil(wait), 1))
    if kind == REQUESTS:
        what = f"requests per minute: limit {lim.rpm}, used {usage.requests}"
    else:
        what = f"tokens per minute: limit {lim.tpm}, used {usage.tokens}"
    return RateLimited(f"Rate limit reached for {_who(lim)} on {what}. Try again in {duration(wait)}.",
                       headers=as_dict)


class Limiter:
    def __init__(self, counters: Counters, *, lease_seconds: float = 900.0) -> None:
        self.counters = counters
        self.lease_ms = int(lease_seconds * 1000)
        self._checks: dict[int, tuple[tuple[ScopeLimits, ...], list[Check], float, float]] = {}

    def _checks_for(self, limits: tuple[ScopeLimits, ...], now: float) -> list[Check]:
        """The scopes' checks in lock order with their budget periods at ``now``; kept per
        ``limits`` (a key's limits are one tuple until its settings change) until a period ends,
        so that a request neither sorts nor computes calendar dates."""
        cached = self._checks.get(id(limits))
        if cached is not None and cached[0] is limits and cached[2] <= now < cached[3]:
            return cached[1]
        checks, start, end = [], -math.inf, math.inf
        for lim in sorted(limits, key=lambda s: s.scope):  # one lock order everywhere
            if lim.budget is None:
                checks.append(Check(limits=lim, period=0, period_end=0.0))
                continue
            period, period_end = period_bounds(lim.period, lim.tz, now)
            checks.append(Check(limits=lim, period=period, period_end=period_end))
            start, end = max(start, period), min(end, period_end)
        if len(self._checks) >= 4096:
            self._checks.clear()
        self._checks[id(limits)] = (limits, checks, start, end)
        return checks

    async def reserve(self, limits: tuple[ScopeLimits, ...], *, request_id: str, tokens: int,
                      cost: int) -> Reservation:
        """Reserve in every scope at once, or raise :class:`RateLimited` / :class:`BudgetExceeded`."""
        now = _now()
        window, window_end = minute_window(now)
        checks = self._checks_for(limits, now)
        try:
            denied, kind, usages = await self.counters.reserve(
                request_id=request_id, now_ms=int(now * 1000), window=window, lease_ms=self.lease_ms,
                checks=checks, tokens=tokens, cost=cost)
        except Exception as exc:
            logger.exception("limits store failed; refusing the request")
            raise LimitsUnavailable() from exc
        if denied >= 0:
            headers = limit_headers(checks, usages, now=now, window_end=window_end)
            raise _refusal(kind, checks[denied], usages[denied], headers, now=now, window_end=window_end)
        return Reservation(request_id=request_id, checks=checks, usages=usages, now=now, window=window,
                           window_end=window_end, tokens=tokens, cost=cost)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: int) -> list[Crossing]:
        """Replace the reservation by what was used; the alert crossings it caused."""
        reservation.settled = True
        if all(c.limits.tpm is None and c.limits.budget is None and c.limits.concurrency is None
               for c in reservation.checks):
            return []  # requests per minute only: nothing to give back
        spends = await self.counters.settle(
            request_id=reservation.request_id, window=reservation.window, checks=reservation.checks,
            tokens_delta=tokens - reservation.tokens, reserved=reservation.cost, actual=cost)
        crossings = []
        for check, (before, after) in zip(reservation.checks, spends, strict=True):
            alert_at = check.limits.alert_at
            if alert_at is not None and before >= 0 and before < alert_at <= after:
                crossings.append(Crossing(limits=check.limits, period_start=check.period, spent=after))
        return crossings

    async def close(self) -> None:
        await self.counters.close()


def limiter_open(*, redis_url: str, conninfo: str, lease_seconds: float) -> Limiter:
    """Redis counters when ``redis_url`` is set, else Postgres ones."""
    counters = RedisCounters(redis_url) if redis_url else PostgresCounters(conninfo)
    return Limiter(counters, lease_seconds=lease_seconds)
