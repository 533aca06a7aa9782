"""The call step: one attempt function tried over the call's chain with retries, circuit
breakers and the ordered fallbacks (:func:`apps.providers.transport.with_fallbacks`), for JSON
answers and streams alike. Every way it can fail is logged here, once."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings

from apps.core.errors import GatewayError, RateLimited
from apps.gateway.pipeline.call import Call
from apps.gateway.pipeline.limits import limits_refusal_raise, limits_settle
from apps.gateway.pipeline.usage import call_fail, call_log
from apps.gateway.snapshot import ModelInfo
from apps.providers.transport import UpstreamClientError, with_fallbacks

if TYPE_CHECKING:
    from apps.gateway.runtime import Runtime

T = TypeVar("T")
Attempt = Callable[[ModelInfo], Awaitable[T]]


async def upstream_call(runtime: Runtime, call: Call, attempt: Attempt) -> tuple[ModelInfo, T]:
    """``attempt(model)`` over the chain until one succeeds; sets ``call.model`` and the timings.

    A token or budget refusal held back for a possible cache hit is raised here, on the way
    upstream. When every attempt failed the request is logged with the failure; a provider's
    refusal of the request itself (a 4xx) is logged with its status and billed nothing; a
    cancellation frees the limits reservation (the caller logs the cut-short request).
    """
    try:
        limits_refusal_raise(call)
    except GatewayError as exc:
        call_fail(runtime, call, exc)
        raise
    chain = call.chain
    if any(m.deployments for m in chain):
        try:
            chain = pool_chain(runtime, chain)
        except GatewayError as exc:
            call.model = call.chain[0]
            call_fail(runtime, call, exc)
            raise
    if call.trace is not None:
        attempt = call.trace.attempts_traced(call, attempt)  # a span per attempt
    call.upstream_started = time.perf_counter()
    try:
        model, result, call.failures = await with_fallbacks(
            chain, attempt, retries=settings.GATEWAY_RETRIES, backoff=settings.GATEWAY_RETRY_BACKOFF,
            breakers=runtime.breakers, pools=runtime.pools, failures=call.failures)
    except GatewayError as exc:
        call.model = call.chain[0]
        call.upstream_ended = time.perf_counter()
        call.status, call.error_code = exc.status, exc.code
        call.overhead_ms = (call.upstream_started - call.started) * 1000
        call_log(runtime, call)
        raise
    except UpstreamClientError as exc:
        call.model = exc.model or call.chain[0]
        call.upstream_ended = time.perf_counter()
        call.status, call.error_code = exc.status, exc.code
        call.failures.append(f"{call.model.name}: status {exc.status}")
        call.overhead_ms = (call.upstream_started - call.started) * 1000
        call_log(runtime, call)
        raise
    except BaseException:
        limits_settle(runtime, call)  # cancelled: free the reservation
        raise
    call.model = model
    call.overhead_ms = (call.upstream_started - call.started) * 1000
    return model, result


def pool_chain(runtime: Runtime, chain: tuple) -> tuple:
    """The chain with each pooled model's deployments in its strategy's order; 429
    ``upstream_rate_limited`` when every one of them is cooling down."""
    expanded = runtime.pools.expand(chain)
    if not expanded:
        seconds = max(math.ceil(runtime.pools.retry_in(chain)), 1)
        raise RateLimited("Every deployment of the models for this request is cooling down after the provider "
                          "rate-limited it.", code="upstream_rate_limited", headers={"Retry-After": str(seconds)})
    return expanded


def answer_done(runtime: Runtime, call: Call) -> None:
    """A JSON answer is priced: count the time spent here on both sides of the call, and log."""
    call.overhead_ms = ((call.upstream_started - call.started) + (time.perf_counter() - call.upstream_ended)) * 1000
    call_log(runtime, call)
