"""Limits and budgets per tag and per end user, through the live gateway: a tag's budget holds
under 200 concurrent requests with the same reserve-then-settle counters as a tenant's, an end
user's requests per minute are counted apart from the tenant's other users, and one tenant's tag
limit never touches another tenant's requests with the same tag."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import httpx

from tests.gateway.conftest import request_logs, wait_until
from tests.gateway.test_limits import _same_minute


def _chat(world, key: str, content: str, *, tags: str = "", user: str = "", model: str = "sim-mini",
          **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    if user:
        body["user"] = user
    return httpx.post(world.gateway.v1 + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **({"x-switchyard-tags": tags} if tags else {})})


def _fire(world, key: str, count: int, *, tags: str) -> list[tuple[int, bytes]]:
    async def one(session, n):
        body = {"model": "sim-dear", "max_tokens": 20, "stream": n % 2 == 0,
                "messages": [{"role": "user", "content": f"spend on the tag {n}"}]}
        async with session.post(world.gateway.v1 + "/chat/completions", json=body) as response:
            return response.status, await response.read()

    async def run():
        headers = {"Authorization": f"Bearer {key}", "x-switchyard-tags": tags}
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*[one(session, n) for n in range(count)])

    return asyncio.run(run())


def test_a_tag_budget_holds_under_200_concurrent_requests_for_its_tenant_only(world):
    from apps.catalog.models import Model
    from apps.limits.models import AttributionLimit

    Model.objects.create(name="sim-dear", upstream_id="sim-dear", provider=world.provider, max_output_tokens=4096,
                         input_price_per_million=Decimal("500"), output_price_per_million=Decimal("1000"))
    AttributionLimit.objects.create(tenant=world.tenant_a, kind="tag", value="eval", budget_usd=Decimal("1.00"))
    assert wait_until(lambda: _chat(world, world.key_a, "warm up", tags="eval", max_tokens=1).headers.get(
        "x-switchyard-budget-limit") == "1"), "the gateway never loaded the tag's budget"

    answers = _fire(world, world.key_a, 200, tags="eval, nightly")
    statuses = [status for status, _body in answers]
    refused = [body for status, body in answers if status == 429]
    assert statuses.count(200) + len(refused) == 200, statuses
    assert refused and all(b'"budget_exceeded"' in body and b"tag 'eval'" in body for body in refused)
    rows = request_logs(statuses.count(200), tenant=world.tenant_a, model_used="sim-dear", status_code=200)
    costs = [row.cost for row in rows]
    assert len(costs) == statuses.count(200)
    assert sum(costs) <= Decimal("1.00") + max(costs), (sum(costs), max(costs))
    assert sum(costs) > Decimal("0.5")  # the tag's budget, not something else, stopped them

    # The same tenant's untagged requests, and another tenant's "eval" ones, are not held by it.
    assert _chat(world, world.key_a, "not tagged", model="sim-dear", max_tokens=20).status_code == 200
    assert _chat(world, world.key_b, "globex's own eval", tags="eval", model="sim-dear",
                 max_tokens=20).status_code == 200


def test_an_end_users_requests_per_minute_are_counted_apart(world):
    from apps.limits.models import AttributionLimit

    AttributionLimit.objects.create(tenant=world.tenant_a, kind="user", value="alice", rpm_limit=3)
    _same_minute(10)
    assert wait_until(lambda: _chat(world, world.key_a, "warm up", user="alice", max_tokens=1).headers.get(
        "x-ratelimit-limit-requests") == "3"), "the gateway never loaded the end user's limit"
    _same_minute(10)
    answers = [_chat(world, world.key_a, f"alice asks {n}", user="alice") for n in range(4)]
    statuses = [answer.status_code for answer in answers]
    assert 429 in statuses and statuses.count(200) <= 3, statuses
    refusal = answers[statuses.index(429)].json()["error"]
    assert refusal["code"] == "rate_limit_exceeded" and "end user 'alice'" in refusal["message"]
    assert _chat(world, world.key_a, "bob asks", user="bob").status_code == 200
    assert _chat(world, world.key_b, "globex's alice asks", user="alice").status_code == 200
