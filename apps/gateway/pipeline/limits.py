"""The pipeline's reserve and settle points for rate limits and budgets (``apps.limits``).

``limits_reserve`` runs once a request is validated and routed, before the cache and the
upstream. A chat request refused for its tokens or budget is not refused yet: it holds only
its request and concurrency slot, since a cache hit costs nothing and counts toward requests
per minute only; the refusal is raised if it goes upstream (``limits_refusal_raise``).

``limits_settle`` runs from :meth:`Call.log`, which every request reaches exactly once however
it ends (answered, failed, cancelled, cache hit), and from the doors' last ``finally`` as a
safety net. A key and tenant with no limits cost nothing here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from django.db import close_old_connections

from apps.core import tokens
from apps.core.errors import RateLimited
from apps.limits.services import budget_alert_record
from apps.limits.spec import nanos

logger = logging.getLogger(__name__)


def _output_cap(body: dict, chain) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        return limit
    return max(model.max_output_tokens for model in chain)


async def limits_reserve(runtime, call, body: dict, *, mode: str = "chat") -> None:
    """Reserve this request in its key's and tenant's counters, and those of its tags and end user
    that the tenant limits, or raise a 429."""
    limits = call.key.limits
    by_attribution = call.key.attribution_limits
    if by_attribution:
        attribution = call.attribution
        wanted = [("tag", tag) for tag in attribution.tags]
        if attribution.end_user:
            wanted.append(("user", attribution.end_user))
        limits += tuple(by_attribution[name] for name in wanted if name in by_attribution)
    if not limits:
        return
    estimate = cost = 0
    if any(lim.needs_estimate for lim in limits):
        # An upper bound: the prompt as the tokenizer counts it, the most it may produce, at the
        # dearest model it may fall back to.
        if mode == "chat":
            prompt, output = call.prompt_tokens_count(body["messages"]), _output_cap(body, call.chain)
        else:
            text = body["input"] if isinstance(body["input"], str) else " ".join(
                item for item in body["input"] if isinstance(item, str))
            prompt, output = tokens.text_tokens(text) + 1, 0
        estimate = prompt + output
        cost = nanos(max(model.cost(prompt, 0, output) for model in call.chain))
    try:
        call.reservation = await runtime.limiter.reserve(limits, request_id=call.request_id, tokens=estimate,
                                                       cost=cost)
    except RateLimited as refusal:
        if mode != "chat" or getattr(refusal, "limit_kind", "") not in ("tokens", "budget"):
            raise
        counted = tuple(lim for lim in (dataclasses.replace(lim, tpm=None, budget=None) for lim in limits)
                        if lim.rpm is not None or lim.concurrency is not None)
        if counted:
            call.reservation = await runtime.limiter.reserve(counted, request_id=call.request_id, tokens=0, cost=0)
        call.refusal = refusal


def limits_refusal_raise(call) -> None:
    """Raise the token or budget refusal held back for a possible cache hit (on the way upstream)."""
    if call.refusal is not None:
        raise call.refusal


def limits_settle(runtime, call) -> None:
    """Settle the reservation to what the request used (off the response path); idempotent."""
    reservation = call.reservation
    if reservation is None or reservation.settled:
        return
    reservation.settled = True
    used = call.input_tokens + call.output_tokens if call.cache in ("miss", "bypass") else 0
    runtime.spawn(_settle(runtime, reservation, used, nanos(call.cost)))


async def _settle(runtime, reservation, used: int, cost: int) -> None:
    crossings = await runtime.limiter.settle(reservation, tokens=used, cost=cost)
    for crossing in crossings:
        await asyncio.to_thread(_alert_record, budget_alert_record, crossing)


def _alert_record(record, crossing) -> None:
    close_old_connections()
    try:
        record(limits=crossing.limits, period_start=crossing.period_start, spent=crossing.spent)
    finally:
        close_old_connections()
