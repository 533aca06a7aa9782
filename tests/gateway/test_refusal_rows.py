"""A provider's own refusal (a 4xx passed back to the client) through every door of a live
Switchyard: the request leaves exactly one usage row with the provider's status and error code,
bills nothing, and its limits reservation is settled (no money left in flight)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.gateway.conftest import request_logs, usage_quiet, wait_until
from tests.gateway.test_messages import NATIVE, native  # noqa: F401 (a fixture)

SIMULATED_CODE = "simulated_fault"  # what the simulator's OpenAI error body names its refusal


def _auth(world) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"}


def _chat(world, *, stream: bool) -> tuple[int, str]:
    response = httpx.post(world.gateway.v1 + "/chat/completions", headers=_auth(world), timeout=30, json={
        "model": "sim-mini", "stream": stream, "messages": [{"role": "user", "content": "refuse this chat"}]})
    return response.status_code, response.json()["error"]["code"]


def _messages(world, *, model: str, stream: bool) -> tuple[int, str]:
    headers = {"x-api-key": world.key_a, "anthropic-version": "2023-06-01", "Cache-Control": "no-store"}
    response = httpx.post(world.gateway.v1 + "/messages", headers=headers, timeout=30, json={
        "model": model, "max_tokens": 64, "stream": stream,
        "messages": [{"role": "user", "content": "refuse this message"}]})
    body = response.json()
    assert body["type"] == "error"
    return response.status_code, body["error"]["type"]


def _embeddings(world) -> tuple[int, str]:
    response = httpx.post(world.gateway.v1 + "/embeddings", headers=_auth(world), timeout=30,
                          json={"model": "sim-embed", "input": "refuse this embedding"})
    return response.status_code, response.json()["error"]["code"]


def _complete(world, *, stream: bool) -> tuple[int, str]:
    response = httpx.post(world.gateway.v1 + "/complete", headers=_auth(world), timeout=30, json={
        "prompt": "refuse this completion", "model": "sim-mini", "stream": stream, "use_cache": False})
    return response.status_code, response.json()["error"]["code"]


def _websocket(world) -> tuple[int, str]:
    async def run() -> dict:
        url = world.gateway.base.replace("http://", "ws://") + "/ws/v1/chat"
        async with connect(url, additional_headers={"Authorization": f"Bearer {world.key_a}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "chat.request", "id": "r1", "cache_control": "no-store", "body": {
                "model": "sim-mini", "messages": [{"role": "user", "content": "refuse this socket"}]}}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event["type"] in ("done", "error"):
                    return event

    event = asyncio.run(run())
    assert event["type"] == "error", event
    return event["status"], event["error"]["code"]


# door: (send, the provider's status, the code the row keeps, the model the row names)
DOORS = {
    "chat-json": (lambda world: _chat(world, stream=False), 400, SIMULATED_CODE, "sim-mini"),
    "chat-stream": (lambda world: _chat(world, stream=True), 404, SIMULATED_CODE, "sim-mini"),
    "messages-translated-json": (lambda world: _messages(world, model="sim-mini", stream=False), 413,
                                 SIMULATED_CODE, "sim-mini"),
    "messages-translated-stream": (lambda world: _messages(world, model="sim-mini", stream=True), 400,
                                   SIMULATED_CODE, "sim-mini"),
    "messages-native-json": (lambda world: _messages(world, model=NATIVE, stream=False), 400,
                             "invalid_request_error", NATIVE),
    "messages-native-stream": (lambda world: _messages(world, model=NATIVE, stream=True), 413,
                               "request_too_large", NATIVE),
    "embeddings": (_embeddings, 400, SIMULATED_CODE, "sim-embed"),
    "complete-json": (lambda world: _complete(world, stream=False), 422, SIMULATED_CODE, "sim-mini"),
    "complete-stream": (lambda world: _complete(world, stream=True), 422, SIMULATED_CODE, "sim-mini"),
    "websocket": (_websocket, 400, SIMULATED_CODE, "sim-mini"),
}


def _budget_seen(world) -> bool:
    """The gateway has reloaded the tenant's budget: a request reserves against it."""
    def seen() -> bool:
        response = httpx.post(world.gateway.v1 + "/chat/completions", headers=_auth(world), timeout=30, json={
            "model": "sim-mini", "max_tokens": 1, "messages": [{"role": "user", "content": "warm up"}]})
        return "x-switchyard-budget-remaining" in response.headers

    return wait_until(seen, timeout=15)


@pytest.mark.parametrize("door", sorted(DOORS))
def test_it_leaves_one_row_for_a_providers_refusal_and_settles_its_reservation(native, door):  # noqa: F811
    from apps.limits.selectors import spend_current
    from apps.usage.models import RequestLog

    world = native
    send, status, code, model = DOORS[door]
    world.tenant_a.budget_usd = Decimal("50")
    world.tenant_a.save()
    assert _budget_seen(world), "the gateway never saw the tenant's budget"
    usage_quiet()
    before = RequestLog.objects.filter(tenant=world.tenant_a).count()
    spent_before = wait_until(lambda: (s := spend_current(world.tenant_a)) and s.reserved == 0 and s, timeout=30)
    assert spent_before, "the warm-up's reservation was never settled"

    world.simulator.fault(model="*", mode="status", status=status, count=-1)
    seen_status, _seen_code = send(world)
    assert seen_status == status, "the provider's status is the client's"

    rows = request_logs(1, timeout=30, tenant=world.tenant_a, status_code=status)
    assert len(rows) == 1, [(r.status_code, r.error_code) for r in rows]
    row = rows[0]
    assert (row.error_code, row.model_used) == (code, model)
    assert f"{model}: status {status}" in row.upstream_failures
    assert (row.output_tokens, row.cost) == (0, 0), "a refusal bills nothing"
    usage_quiet()
    assert RequestLog.objects.filter(tenant=world.tenant_a).count() == before + 1, "exactly one row, not two"
    spend = wait_until(lambda: (s := spend_current(world.tenant_a)) and s.reserved == 0 and s, timeout=30)
    assert spend, f"money left in flight: {spend_current(world.tenant_a)}"
    assert spend.spent == spent_before.spent
