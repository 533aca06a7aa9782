"""A provider batch's spend against its key's and tenant's budgets, on the counters live requests
use (:mod:`apps.limits`): reserved when the job is submitted, settled to the batch cost when its
results are recorded.

    spend_reserve   the job's estimated cost (each line's prompt as the tokenizer counts it plus
                    its output cap, at its model's batch price, prompt-cache writes at their
                    price when dearer) reserved in every scope with a budget, under one
                    reservation held for the provider's 24 hours and the polls after. Refused
                    when the budget is spent, or when the reservation would take it past its
                    limit (then given back at once): the job's lines fail with the budget error
                    and nothing goes to the provider.
    spend_settle    the reservation replaced by what the job's usage rows cost

Rate limits (requests, tokens per minute, concurrency) are not counted: the provider's batch
is not live traffic. A worker that died after reserving and before saving the reservation on
the job leaves a reservation the next worker gives back before reserving again (a settlement of
nothing, which is harmless when there is none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from decimal import Decimal

from django.conf import settings

from apps.core import tokens
from apps.core.errors import BudgetExceeded
from apps.gateway.database import conninfo
from apps.gateway.snapshot import KeyInfo
from apps.limits.counters import Check
from apps.limits.enforce import Limiter, Reservation, limiter_open, money_text
from apps.limits.periods import minute_window, period_bounds
from apps.limits.services import budget_alert_record
from apps.limits.spec import ScopeLimits, nanos

LEASE_SECONDS = 26 * 3600  # the provider's 24 hours to answer, and the polls that notice it ended


def _budgets(key: KeyInfo) -> tuple[ScopeLimits, ...]:
    return tuple(dataclasses.replace(lim, rpm=None, tpm=None, concurrency=None)
                 for lim in key.limits if lim.budget is not None)


def line_estimate(body: dict, model) -> Decimal:
    """The most one line may cost at its model's batch price."""
    messages = body.get("messages")
    prompt = tokens.messages_tokens(messages) if isinstance(messages, list) else 0
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    output = cap if isinstance(cap, int) and cap > 0 else model.max_output_tokens
    return max(model.cost(prompt, 0, output, batch=True), model.cost(prompt, 0, output, prompt, batch=True))


def _reservation(request_id: str, limits: tuple[ScopeLimits, ...], periods: dict[str, int], cost: int) -> Reservation:
    now = time.time()
    window, window_end = minute_window(now)
    checks = [Check(limits=lim, period=periods[lim.scope], period_end=0.0)
              for lim in sorted(limits, key=lambda s: s.scope) if lim.scope in periods]
    return Reservation(request_id=request_id, checks=checks, usages=[], now=now, window=window,
                       window_end=window_end, tokens=0, cost=cost)


def _limiter() -> Limiter:
    return limiter_open(redis_url=settings.REDIS_URL, conninfo=conninfo(), lease_seconds=LEASE_SECONDS)


def spend_reserve(*, job_id: str, key: KeyInfo, estimate: Decimal) -> dict:
    """``{}`` (no budget), ``{"request_id", "cost", "periods"}`` (reserved), or ``{"refused": body}``
    (the OpenAI error body each line gets)."""
    limits = _budgets(key)
    if not limits:
        return {}
    request_id, cost = f"{job_id}-budget", nanos(estimate)
    now = time.time()
    periods = {lim.scope: period_bounds(lim.period, lim.tz, now)[0] for lim in limits}

    async def run() -> dict:
        limiter = _limiter()
        try:
            await limiter.settle(_reservation(request_id, limits, periods, 0), tokens=0, cost=0)
            try:
                reservation = await limiter.reserve(limits, request_id=request_id, tokens=0, cost=cost)
            except BudgetExceeded as refusal:
                return {"refused": refusal.body()}
            for check, usage in zip(reservation.checks, reservation.usages, strict=True):
                if usage.spent + usage.reserved > check.limits.budget:
                    await limiter.settle(reservation, tokens=0, cost=0)
                    left = max(check.limits.budget - usage.spent - usage.reserved + cost, 0)
                    refusal = BudgetExceeded(
                        f"This batch's estimated cost (${money_text(cost)} at the batch price) is more than the "
                        f"budget of ${money_text(check.limits.budget)} has left (${money_text(left)}); no line "
                        "was sent.", headers={"x-should-retry": "false"})
                    return {"refused": refusal.body()}
            return {"request_id": request_id, "cost": cost,
                    "periods": {check.limits.scope: check.period for check in reservation.checks}}
        finally:
            await limiter.close()

    return asyncio.run(run())


def spend_settle(*, key: KeyInfo, budget: dict, cost: Decimal) -> None:
    """Settle the job's reservation to ``cost``; a budget alert it crosses is recorded."""
    limits = _budgets(key)
    reservation = _reservation(budget["request_id"], limits, budget["periods"], budget["cost"])
    if not reservation.checks:
        return

    async def run():
        limiter = _limiter()
        try:
            return await limiter.settle(reservation, tokens=0, cost=nanos(cost))
        finally:
            await limiter.close()

    for crossing in asyncio.run(run()):
        budget_alert_record(limits=crossing.limits, period_start=crossing.period_start, spent=crossing.spent)
