"""Rate limits and budgets through live gateways: headers, refusals, settlement of streams,
alerts, and limits that hold across several server processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import aiohttp
import httpx
import pytest

from tests.gateway.conftest import (
    REPO,
    Simulator,
    World,
    free_port,
    gateway_start,
    gateway_stop,
    request_logs,
    stop_process,
    usage_quiet,
    wait_http,
    wait_until,
)

REDIS_URL = os.environ.get("REDIS_URL", "")


def _chat(base: str, key: str, content: str, **extra) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "sim-mini", "messages": [{"role": "user", "content": content}], **extra})


def _same_minute(seconds: float = 4.0) -> None:
    """Start a per-minute test with at least ``seconds`` left in the current minute."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def _limits_set(obj, **fields) -> None:
    for name, value in fields.items():
        setattr(obj, name, value)
    obj.save()


def _seen(base: str, key: str, header: str) -> bool:
    """The gateway has reloaded the key's limits (config changes reach it by message)."""
    return wait_until(lambda: header in _chat(base, key, "warm up", max_tokens=1).headers)


def test_it_sends_limit_headers_and_applies_a_key_limit_stricter_than_its_tenants(world):
    from apps.tenants.services import key_create

    _limits_set(world.tenant_a, rpm_limit=50, budget_usd=Decimal("10"))
    key = key_create(tenant=world.tenant_a, name="strict", rpm_limit=2).secret
    other = key_create(tenant=world.tenant_a, name="loose").secret
    base = world.gateway.base
    _same_minute(20)  # the warm-up and the requests below share one clock minute, however slow
    assert _seen(base, other, "x-ratelimit-limit-requests")
    first, second, third = (_chat(base, key, f"strict {n}") for n in range(3))
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"  # the key's 2, not the tenant's 50
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert first.headers["x-switchyard-budget-limit"] == "10"
    assert Decimal(first.headers["x-switchyard-budget-remaining"]) < 10
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert third.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    # The tenant's other key is not held by the strict key's limit, but counts against the tenant's.
    loose = _chat(base, other, "loose")
    assert loose.status_code == 200
    assert loose.headers["x-ratelimit-limit-requests"] == "50"
    assert int(loose.headers["x-ratelimit-remaining-requests"]) <= 50 - 4  # warm-ups, 2 strict, this one
    # The simple door goes through the same limits.
    simple = httpx.post(base + "/v1/complete", headers={"Authorization": f"Bearer {key}"}, json={"prompt": "hi"})
    assert simple.status_code == 429 and simple.json()["error"]["code"] == "rate_limit_exceeded"
    assert simple.headers["x-ratelimit-remaining-requests"] == "0" and "retry-after" in simple.headers
    simple = httpx.post(base + "/v1/complete", headers={"Authorization": f"Bearer {other}"}, json={"prompt": "hi"})
    assert simple.status_code == 200 and simple.headers["x-ratelimit-limit-requests"] == "50"
    # Tenant B has no limits: no headers, no refusals.
    plain = _chat(base, world.key_b, "globex")
    assert plain.status_code == 200 and "x-ratelimit-limit-requests" not in plain.headers


def test_it_refuses_a_spent_budget_for_one_tenant_only_and_alerts_once(world):
    from apps.limits.models import BudgetAlert

    world.models["sim-premium"].max_output_tokens = 64
    world.models["sim-premium"].save()
    _limits_set(world.tenant_a, budget_usd=Decimal("0.005"), budget_period="day", budget_alert_percent=50)
    base = world.gateway.base
    assert _seen(base, world.key_a, "x-switchyard-budget-limit")
    statuses = []
    for n in range(20):
        response = _chat(base, world.key_a, f"spend {n}", model="sim-premium")
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
        time.sleep(0.05)  # settlement happens just after the answer
    assert statuses[-1] == 429 and statuses.count(200) >= 2, statuses
    body = response.json()["error"]
    assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota"
    assert "retry-after" in response.headers and response.headers["x-switchyard-budget-remaining"] == "0"
    assert _chat(base, world.key_b, "globex still served", model="sim-premium").status_code == 200
    alerts = wait_until(lambda: list(BudgetAlert.objects.all()))
    assert [(a.tenant_id, a.api_key_id, a.threshold_percent) for a in alerts] == [(world.tenant_a.pk, None, 50)]
    assert alerts[0].spent_usd >= Decimal("0.0025")
    assert _chat(base, world.key_a, "still spent", model="sim-premium").status_code == 429
    assert BudgetAlert.objects.count() == 1


@pytest.fixture(scope="module")
def slow_upstream():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--port", str(port),
                             "--ttft-ms", "20", "--chunk-delay-ms", "100", "--chunks", "40"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
    yield Simulator(f"http://127.0.0.1:{port}")
    stop_process(proc)


def test_it_settles_a_cancelled_stream_to_what_was_produced(world, slow_upstream):
    from apps.catalog.models import Model, Provider
    from apps.limits.selectors import spend_current
    from apps.usage.models import RequestLog

    slow = Provider.objects.create(name="slow", kind=Provider.Kind.SIMULATED, base_url=slow_upstream.v1)
    Model.objects.create(name="sim-slow", upstream_id="sim-slow", provider=slow, max_output_tokens=1000,
                         input_price_per_million=Decimal("100"), output_price_per_million=Decimal("1000"))
    _limits_set(world.tenant_a, budget_usd=Decimal("50"), concurrency_limit=1)
    base = world.gateway.base
    headers = {"Authorization": f"Bearer {world.key_a}"}
    assert wait_until(lambda: "sim-slow" in httpx.get(base + "/v1/models", headers=headers).text)
    assert _seen(base, world.key_a, "x-switchyard-concurrency-limit")

    async def cancelled():
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(base + "/v1/chat/completions", json={
                    "model": "sim-slow", "stream": True, "max_tokens": 1000,
                    "messages": [{"role": "user", "content": "a long story"}]}) as response:
                assert response.status == 200
                assert response.headers["x-switchyard-concurrency-remaining"] == "0"
                budget_remaining = Decimal(response.headers["x-switchyard-budget-remaining"])
                await response.content.readany()
                await asyncio.sleep(0.35)  # a few tokens arrive, then the client goes away
                await response.content.readany()
        return budget_remaining

    remaining_while_running = asyncio.run(cancelled())
    # While it ran, the whole reservation (1000 output tokens at $1000/M = $1) was held.
    assert remaining_while_running <= Decimal("49")
    row = request_logs(1, tenant=world.tenant_a, model_used="sim-slow")[0]
    assert row.status_code == 499 and 1 <= row.output_tokens < 40
    spend = wait_until(lambda: (s := spend_current(world.tenant_a)) and s.reserved == 0 and s)
    assert spend.spent >= row.cost > 0
    warm_ups = RequestLog.objects.filter(tenant=world.tenant_a, status_code=200).values_list("cost", flat=True)
    assert spend.spent - row.cost - sum(warm_ups) < Decimal("0.000001")  # nano-dollar rounding only
    # The concurrency slot came back: the next request is admitted.
    assert _chat(base, world.key_a, "next", max_tokens=1).status_code == 200


# --- several processes ----------------------------------------------------------------------

def _gateways(tmp_path, count: int, env: dict) -> list:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda n: gateway_start(tmp_path, extra_env=env), range(count)))


def _fire(bases: list[str], key: str, count: int, body_for) -> list[tuple[int, dict, bytes]]:
    async def one(session, n):
        body = body_for(n)
        async with session.post(bases[n % len(bases)] + "/v1/chat/completions", json=body) as response:
            return response.status, dict(response.headers), await response.read()

    async def run():
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}, connector=connector) as s:
            return await asyncio.gather(*[one(s, n) for n in range(count)])

    return asyncio.run(run())


def _rows_missing(answers: list, gateways: list, tenant) -> str:
    """Which gateway answered requests that have no usage row, with the end of its log."""
    from apps.usage.models import RequestLog

    logged = set(RequestLog.objects.filter(tenant=tenant).values_list("request_id", flat=True))
    report = []
    for index, gateway in enumerate(gateways):
        mine = [(status, headers.get("x-switchyard-request-id")) for n, (status, headers, _b) in enumerate(answers)
                if n % len(gateways) == index]
        missing = [(status, rid) for status, rid in mine if rid not in logged]
        report.append(f"{gateway.base}: {len(mine)} answers, {len(missing)} without a row {missing[:5]}")
        if missing:
            report.append(gateway.log_path.read_text(errors="replace")[-3000:])
    return "\n".join(report)


@pytest.fixture
def fleet_world(transactional_db, simulator):
    world = World(simulator)
    for tenant in (world.tenant_a, world.tenant_b):
        _limits_set(tenant, cache_enabled=False)  # no cache writes to wait for at shutdown
    yield world
    usage_quiet()


@pytest.mark.parametrize("store", ["postgres", pytest.param("redis", marks=pytest.mark.redis)])
def test_it_holds_budget_rpm_and_tpm_across_processes(fleet_world, tmp_path, store):
    """200 concurrent requests from four processes against a $1.00 budget never settle above
    $1.00 plus one request's cost; requests and tokens per minute hold across two processes.
    (One test per store: starting four servers is most of its time.)"""
    from apps.catalog.models import Model
    from apps.limits.selectors import spend_current
    from apps.tenants.services import key_create
    from apps.usage.models import RequestLog

    if store == "redis" and not REDIS_URL:
        pytest.skip("needs REDIS_URL")
    world = fleet_world
    Model.objects.create(name="sim-dear", upstream_id="sim-dear", provider=world.provider, max_output_tokens=4096,
                         input_price_per_million=Decimal("500"), output_price_per_million=Decimal("1000"))
    _limits_set(world.tenant_a, budget_usd=Decimal("1.00"), budget_period="month", budget_alert_percent=None)
    rpm_key = key_create(tenant=world.tenant_b, name="rpm", rpm_limit=10).secret
    tpm_key = key_create(tenant=world.tenant_b, name="tpm", tpm_limit=300).secret
    gateways = _gateways(tmp_path, 4, {"REDIS_URL": REDIS_URL if store == "redis" else ""})
    bases = [g.base for g in gateways]
    try:
        _same_minute(20)  # the rpm and tpm bursts share one clock minute, however slow the machine
        by_rpm = _fire(bases[:2], rpm_key, 30, lambda n: {
            "model": "sim-mini", "messages": [{"role": "user", "content": f"rpm {n}"}]})
        by_tpm = _fire(bases[2:], tpm_key, 30, lambda n: {
            "model": "sim-mini", "max_tokens": 12, "messages": [{"role": "user", "content": f"tpm {n}"}]})
        by_budget = _fire(bases, world.key_a, 200, lambda n: {
            "model": "sim-dear", "max_tokens": 20, "stream": n % 2 == 0,
            "messages": [{"role": "user", "content": f"race for the last cent {n}"}]})
    finally:
        for gateway in gateways:
            gateway_stop(gateway)  # a clean stop flushes usage rows and finishes settlements

    # Budget: four processes, half streams, half JSON.
    statuses = [status for status, _h, _b in by_budget]
    refused = [body for status, _h, body in by_budget if status == 429]
    assert statuses.count(200) + len(refused) == 200, statuses
    assert refused and all(b'"budget_exceeded"' in body for body in refused)
    rows = RequestLog.objects.filter(tenant=world.tenant_a, model_used="sim-dear", status_code=200)
    assert rows.count() == statuses.count(200), _rows_missing(by_budget, gateways, world.tenant_a)
    costs = [row.cost for row in rows]
    total = sum(costs)
    assert total <= Decimal("1.00") + max(costs), (total, max(costs))
    assert total > Decimal("0.5")  # the budget, not something else, stopped the requests
    if store == ("redis" if REDIS_URL else "postgres"):  # the admin reads the same store as these gateways
        spend = spend_current(world.tenant_a)
        assert spend.reserved == 0
        assert total <= spend.spent <= total + Decimal("0.000000001") * len(costs)  # rounding up per request

    # Requests per minute, two processes: exactly the limit.
    assert [status for status, _h, _b in by_rpm].count(200) == 10
    assert [status for status, _h, _b in by_rpm].count(429) == 20
    assert all(h["x-ratelimit-limit-requests"] == "10" for _s, h, _b in by_rpm)
    # Tokens per minute, two processes: within one request of the limit.
    refused = [h for status, h, _b in by_tpm if status == 429]
    assert refused and all(h["x-ratelimit-remaining-tokens"] == "0" for h in refused)
    rows = RequestLog.objects.filter(api_key__name="tpm", tenant=world.tenant_b, status_code=200)
    used = [row.input_tokens + row.output_tokens for row in rows]
    assert len(used) == [s for s, _h, _b in by_tpm].count(200) >= 2
    assert sum(used) <= 300 + max(used)


def test_it_serves_cache_hits_to_a_tenant_whose_budget_is_spent(world):
    base = world.gateway.base
    question = "What is the capital of France?"
    assert _chat(base, world.key_a, question).headers["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: _chat(base, world.key_a, question).headers["x-switchyard-cache"] == "hit-exact")
    _limits_set(world.tenant_a, budget_usd=Decimal("0.000001"), rpm_limit=100, budget_alert_percent=None)
    assert _seen(base, world.key_a, "x-switchyard-budget-limit")
    assert _chat(base, world.key_a, "use up the budget").status_code in (200, 429)
    refused = _chat(base, world.key_a, "a question nobody asked before")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    hit = _chat(base, world.key_a, question)
    assert hit.status_code == 200 and hit.headers["x-switchyard-cache"] == "hit-exact"
    assert hit.headers["x-switchyard-cost"] == "0"
    again = _chat(base, world.key_a, question)
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in (hit, again)]
    assert remaining[1] == remaining[0] - 1  # a hit counts as a request
    streamed = _chat(base, world.key_a, question, stream=True)
    assert streamed.status_code == 200 and b"[DONE]" in streamed.content
