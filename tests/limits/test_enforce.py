"""Reservations and settlements against the real counter stores, time set through ``_now``."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from apps.core.errors import BudgetExceeded, RateLimited
from apps.limits import enforce
from apps.limits.periods import period_bounds
from apps.limits.spec import ScopeLimits

_ids = itertools.count(1)
PARIS = ZoneInfo("Europe/Paris")


def scope(*, key: bool = False, rpm=None, tpm=None, concurrency=None, budget=None, period="day", tz=PARIS,
          alert_at=None) -> ScopeLimits:
    n = next(_ids) + 10_000 * (datetime.now().microsecond + 1)  # unique across runs sharing a Redis
    return ScopeLimits(scope=f"{'k' if key else 't'}:{n}", tenant_id=n, api_key_id=n if key else None, rpm=rpm,
                       tpm=tpm, concurrency=concurrency, budget=budget, period=period, tz=tz, alert_at=alert_at)


@pytest.fixture
def clock(monkeypatch):
    class Clock:
        now = datetime(2026, 3, 10, 23, 59, 30, tzinfo=PARIS).timestamp()

    monkeypatch.setattr(enforce, "_now", lambda: Clock.now)
    return Clock


def rid() -> str:
    return f"req-{next(_ids)}"


async def test_it_resets_a_daily_budget_at_midnight_in_the_scopes_time_zone(limiter, clock):
    lim = scope(budget=1000, period="day")
    first = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=600)
    await limiter.settle(first, tokens=0, cost=1000)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=10)
    assert refused.value.code == "budget_exceeded" and refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "30"  # 23:59:30 in Paris: midnight is 30 s away
    assert refused.value.headers["x-switchyard-budget-remaining"] == "0"
    assert refused.value.headers["x-switchyard-budget-limit"] == "0.000001"
    clock.now += 29.9
    with pytest.raises(BudgetExceeded):
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=10)
    clock.now += 0.1  # exactly midnight, Paris time
    fresh = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=10)
    assert fresh.usages[0].spent == 0 and fresh.usages[0].reserved == 10


async def test_it_resets_requests_per_minute_at_the_minute(limiter, clock):
    clock.now = 1_800_000_000 + 59.5  # half a second before a minute starts
    lim = scope(rpm=2)
    for _ in range(2):
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.headers["x-ratelimit-reset-requests"] == "500ms"
    assert refused.value.headers["Retry-After"] == "1"
    clock.now += 0.5
    ok = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
    assert dict(ok.headers())[b"x-ratelimit-remaining-requests"] == b"1"


def test_it_computes_week_and_month_periods_in_local_time():
    tz = ZoneInfo("America/New_York")
    now = datetime(2026, 3, 1, 0, 30, tzinfo=tz).timestamp()  # a Sunday
    start, end = period_bounds("week", tz, now)
    assert datetime.fromtimestamp(start, tz) == datetime(2026, 2, 23, tzinfo=tz)
    assert datetime.fromtimestamp(end, tz) == datetime(2026, 3, 2, tzinfo=tz)
    start, end = period_bounds("month", tz, now)
    assert datetime.fromtimestamp(start, tz) == datetime(2026, 3, 1, tzinfo=tz)
    assert datetime.fromtimestamp(end, tz) == datetime(2026, 4, 1, tzinfo=tz)  # across the DST change
    assert period_bounds("never", tz, now)[0] == 0


async def test_it_applies_the_stricter_of_key_and_tenant(limiter, clock):
    tenant = scope(rpm=100, budget=10_000)
    key = scope(key=True, rpm=1)
    await limiter.reserve((key, tenant), request_id=rid(), tokens=0, cost=1)
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve((key, tenant), request_id=rid(), tokens=0, cost=1)
    assert "API key" in refused.value.message
    # The refused request was not counted anywhere: the tenant still has 99 requests left.
    other_key = scope(key=True)
    ok = await limiter.reserve((tenant,), request_id=rid(), tokens=0, cost=1)
    assert ok.usages[0].requests == 2 and other_key.rpm is None


async def test_it_admits_while_budget_remains_and_settles_to_the_actual_cost(limiter, clock):
    lim = scope(budget=100, alert_at=80)
    a = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=70)
    b = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=70)  # 70 < 100: admitted
    with pytest.raises(BudgetExceeded):
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=1)  # 140 committed
    assert await limiter.settle(a, tokens=0, cost=20) == []
    crossings = await limiter.settle(b, tokens=0, cost=65)  # 20 -> 85 crosses 80
    assert [(c.limits.scope, c.spent) for c in crossings] == [(lim.scope, 85)]
    c = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=50)
    assert (c.usages[0].spent, c.usages[0].reserved) == (85, 50)
    assert await limiter.settle(c, tokens=0, cost=5) == []  # already past the threshold: no second alert


async def test_it_holds_concurrency_exactly_and_frees_the_slot_on_settle(limiter, clock):
    lim = scope(concurrency=3)
    results = await asyncio.gather(*[limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
                                     for _ in range(10)], return_exceptions=True)
    held = [r for r in results if isinstance(r, enforce.Reservation)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(held) == 3 and len(refused) == 7
    assert refused[0].code == "concurrency_limit_exceeded"
    await limiter.settle(held[0], tokens=0, cost=0)
    again = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
    assert again.usages[0].inflight == 3
    clock.now += 61  # leases of a crashed process expire
    assert (await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)).usages[0].inflight == 1


async def test_it_settles_tokens_into_the_window_they_were_reserved_in(limiter, clock):
    clock.now = 1_800_000_000 + 50
    lim = scope(tpm=100)
    first = await limiter.reserve((lim,), request_id=rid(), tokens=90, cost=0)
    second = await limiter.reserve((lim,), request_id=rid(), tokens=90, cost=0)  # 90 < 100: admitted
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve((lim,), request_id=rid(), tokens=1, cost=0)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    await limiter.settle(first, tokens=10, cost=0)
    await limiter.settle(second, tokens=10, cost=0)
    ok = await limiter.reserve((lim,), request_id=rid(), tokens=5, cost=0)
    assert ok.usages[0].tokens == 25


async def test_it_gives_back_a_budget_reservation_its_process_never_settled(limiter, clock):
    clock.now = datetime(2026, 3, 10, 12, 0, tzinfo=PARIS).timestamp()  # the day's period throughout
    lim = scope(budget=100, alert_at=None)
    await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=80)  # its process dies: never settled
    running = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=25)
    with pytest.raises(BudgetExceeded):
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=1)
    clock.now += 61  # past the lease
    after = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=10)
    assert (after.usages[0].spent, after.usages[0].reserved) == (0, 10)  # both old leases expired
    await limiter.settle(running, tokens=0, cost=12)  # a late settlement still counts its spend
    await limiter.settle(after, tokens=0, cost=9)
    last = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=1)
    assert (last.usages[0].spent, last.usages[0].reserved) == (21, 1)


async def test_it_says_a_spent_budget_cannot_be_helped_by_retrying_and_one_held_by_running_requests_can(limiter,
                                                                                                       clock):
    lim = scope(budget=1000, period="never")
    held = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=5000)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=10)
    assert "x-should-retry" not in refused.value.headers  # the running request may give most of it back
    assert refused.value.headers["Retry-After"] == "1"
    await limiter.settle(held, tokens=0, cost=1000)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=10)
    assert refused.value.headers["x-should-retry"] == "false"
    assert "Retry-After" not in refused.value.headers  # a lifetime budget never resets
    assert "($0.000001 settled, $0.00 in flight)" in refused.value.message
    assert "$0.000001 for this tenant" in refused.value.message


async def test_it_counts_an_answers_cost_instead_of_its_hold_in_the_budget_left(limiter, clock):
    lim = scope(budget=2_000_000, period="day")
    reservation = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=2_460_000)
    assert dict(reservation.headers())[b"x-switchyard-budget-remaining"] == b"0"  # a stream: the hold counts
    answered = dict(reservation.headers(cost=Decimal("0.0000084")))
    assert answered[b"x-switchyard-budget-remaining"] == b"0.0019916"


def test_it_writes_money_as_people_read_it():
    assert [enforce.money_text(v) for v in (0, 1, 2_500_000, 10_000_000_000)] == [
        "0.00", "0.000000001", "0.0025", "10.00"]
