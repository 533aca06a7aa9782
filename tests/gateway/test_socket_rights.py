"""Long-lived doors judge each request by the key's and tenant's state now, as HTTP does: a
WebSocket opened before its key was revoked, expired or its tenant deactivated is closed with
4401, a budget set while it is open refuses its next request, and ``/v1/stream`` likewise.
A real gateway process, a real WebSocket client, the simulated upstream."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.gateway.conftest import request_logs, usage_quiet, wait_until
from tests.gateway.test_eventsource import events_of, session_cookie

DEADLINE = 30.0


def _ws_url(world) -> str:
    return world.gateway.base.replace("http://", "ws://") + "/ws/v1/chat"


@contextlib.contextmanager
def _socket(world, secret: str):
    with connect(_ws_url(world), additional_headers={"Authorization": f"Bearer {secret}"},
                 open_timeout=DEADLINE) as ws:
        assert json.loads(ws.recv(timeout=DEADLINE))["type"] == "ready"
        yield ws


def _chat(ws, request_id: str, content: str) -> None:
    ws.send(json.dumps({"type": "chat.request", "id": request_id, "cache_control": "no-store",
                        "body": {"model": "sim-mini", "messages": [{"role": "user", "content": content}]}}))


def _until_end(ws, request_id: str) -> dict:
    """The request's done or error event."""
    deadline = time.monotonic() + DEADLINE
    while True:
        event = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
        if event.get("id") == request_id and event["type"] in ("done", "error"):
            return event


def _until_closed(ws) -> list[dict]:
    """Every event until the server closes the socket; fails if it stays open."""
    events: list[dict] = []
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            events.append(json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1))))
        except ConnectionClosed:
            return events
        except TimeoutError:
            pytest.fail(f"the socket is still open {DEADLINE:g} s later; it sent {events}")
        if events[-1]["type"] == "done":
            pytest.fail(f"a request was answered after the key lost its rights: {events[-1]}")


def _http_refuses(world, secret: str) -> bool:
    """HTTP has seen the change (config changes reach the gateway by message)."""
    return wait_until(lambda: httpx.get(world.gateway.v1 + "/models", timeout=DEADLINE,
                                        headers={"Authorization": f"Bearer {secret}"}).status_code == 401,
                      timeout=DEADLINE)


def _key(world, **fields):
    from apps.tenants.services import key_create

    created = key_create(tenant=world.tenant_a, name="socket", **fields)
    return created.api_key, created.secret


def _revoke(world, api_key) -> None:
    from apps.tenants.services import key_revoke

    key_revoke(api_key=api_key)


def _expire(world, api_key) -> None:
    from django.utils import timezone

    # Still valid for two seconds: no message announces the moment it expires.
    api_key.expires_at = timezone.now() + timedelta(seconds=2)
    api_key.save(update_fields=["expires_at"])


def _deactivate(world, api_key) -> None:
    world.tenant_a.is_active = False
    world.tenant_a.save(update_fields=["is_active"])


def _assert_closed_for_auth(ws, events: list[dict]) -> None:
    assert ws.protocol.close_code == 4401, (ws.protocol.close_code, events)
    assert ws.protocol.close_reason, "the close frame says why"
    errors = [event for event in events if event["type"] == "error"]
    assert errors and errors[-1]["status"] == 401 and errors[-1]["error"]["type"] == "authentication_error", events
    assert not [event for event in events if event["type"] in ("delta", "done")], events


@pytest.mark.parametrize("change", [_revoke, _expire, _deactivate], ids=["revoked", "expired", "tenant-inactive"])
def test_it_refuses_the_next_request_on_a_socket_opened_before_the_key_lost_its_rights(world, change):
    api_key, secret = _key(world)
    with _socket(world, secret) as ws:
        _chat(ws, "before", "Say something before")
        assert _until_end(ws, "before")["type"] == "done"
        request_logs(1, api_key=api_key, timeout=DEADLINE)
        upstream_calls = world.simulator.stats()["requests"]
        change(world, api_key)
        assert _http_refuses(world, secret), "HTTP never refused the key"
        try:
            _chat(ws, "after", "Say something after")
        except ConnectionClosed:
            pass  # already closed on the change: just as good
        events = _until_closed(ws)
    _assert_closed_for_auth(ws, events)
    assert world.simulator.stats()["requests"] == upstream_calls
    usage_quiet()
    from apps.usage.models import RequestLog

    assert RequestLog.objects.filter(api_key=api_key).count() == 1


@pytest.mark.parametrize("change", [_revoke, _deactivate], ids=["revoked", "tenant-inactive"])
def test_it_closes_a_silent_socket_once_its_key_loses_its_rights(world, change):
    api_key, secret = _key(world)
    with _socket(world, secret) as ws:
        change(world, api_key)
        events = _until_closed(ws)  # the client sends nothing at all
    _assert_closed_for_auth(ws, events)


def test_it_closes_a_silent_socket_when_its_key_expires(world):
    from django.utils import timezone

    api_key, secret = _key(world, expires_at=timezone.now() + timedelta(seconds=DEADLINE * 2))
    with _socket(world, secret) as ws:
        _expire(world, api_key)
        events = _until_closed(ws)
    _assert_closed_for_auth(ws, events)


def test_it_cancels_and_bills_requests_in_flight_when_the_key_is_revoked(world):
    from apps.usage.models import RequestLog

    world.simulator.fault(model="*", mode="stall", count=1)  # three words, then the stream stays open
    api_key, secret = _key(world)
    with _socket(world, secret) as ws:
        _chat(ws, "long", "Tell a long story")
        first = json.loads(ws.recv(timeout=DEADLINE))
        assert first["type"] == "delta", first
        _revoke(world, api_key)
        events = _until_closed(ws)
    _assert_closed_for_auth(ws, [event for event in events if event["type"] != "delta"])
    assert [event["id"] for event in events if event["type"] == "error"] == ["long"]
    (row,) = request_logs(1, api_key=api_key, timeout=DEADLINE)
    assert row.status_code == 499 and row.output_tokens >= 1
    usage_quiet()
    assert RequestLog.objects.filter(api_key=api_key).count() == 1


def test_it_applies_a_budget_set_while_the_socket_is_open_to_its_next_request(world):
    from apps.usage.models import RequestLog

    with _socket(world, world.key_a) as ws:
        _chat(ws, "before", "Spend a little")
        assert _until_end(ws, "before")["type"] == "done"
        world.tenant_a.budget_usd = Decimal("0.000001")
        world.tenant_a.budget_period = "day"
        world.tenant_a.save()

        def http_refused_for_budget() -> bool:
            response = httpx.post(world.gateway.v1 + "/chat/completions", timeout=DEADLINE,
                                  headers={"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"},
                                  json={"model": "sim-mini", "messages": [{"role": "user", "content": "warm"}]})
            return response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"

        assert wait_until(http_refused_for_budget, timeout=DEADLINE), "HTTP never refused for the budget"
        usage_quiet()
        upstream_calls = world.simulator.stats()["requests"]
        billed = RequestLog.objects.filter(tenant=world.tenant_a, cost__gt=0).count()
        for n in range(3):
            _chat(ws, f"after-{n}", f"Spend more {n}")
            event = _until_end(ws, f"after-{n}")
            assert event["type"] == "error", event
            assert (event["status"], event["error"]["code"]) == (429, "budget_exceeded"), event
            assert "E-" not in event["error"]["message"], event
        ws.send(json.dumps({"type": "ping", "id": "still-open"}))
        assert json.loads(ws.recv(timeout=DEADLINE))["type"] == "pong"  # a budget is not a reason to close
    assert world.simulator.stats()["requests"] == upstream_calls
    usage_quiet()
    assert RequestLog.objects.filter(tenant=world.tenant_a, cost__gt=0).count() == billed


@pytest.mark.parametrize("change", [_revoke, _deactivate], ids=["revoked", "tenant-inactive"])
def test_it_refuses_an_event_stream_for_a_key_that_lost_its_rights(world, change):
    from apps.tenants.models import ApiKey

    api_key, secret = _key(world)
    cookie = session_cookie()
    status, events = events_of(world, cookie, key=api_key.pk, model="sim-mini", prompt="Before")
    assert status == 200 and events[-1][0] == "done"
    change(world, ApiKey.objects.get(pk=api_key.pk))
    assert _http_refuses(world, secret)
    upstream_calls = world.simulator.stats()["requests"]
    status, body = events_of(world, cookie, key=api_key.pk, model="sim-mini", prompt="After")
    assert status == 401 and body["error"]["type"] == "authentication_error", body
    assert world.simulator.stats()["requests"] == upstream_calls


def test_it_applies_a_budget_to_the_next_event_stream(world):
    from apps.tenants.models import ApiKey

    cookie = session_cookie()
    key_id = ApiKey.objects.get(tenant=world.tenant_a).pk
    status, events = events_of(world, cookie, key=key_id, model="sim-mini", prompt="Before", cache="no-store")
    assert status == 200 and events[-1][0] == "done"
    world.tenant_a.budget_usd = Decimal("0.000001")
    world.tenant_a.save()

    def refused() -> bool:
        _, events = events_of(world, cookie, key=key_id, model="sim-mini", prompt="Spend", cache="no-store")
        return events[-1][0] == "error" and events[-1][1]["error"]["code"] == "budget_exceeded"

    assert wait_until(refused, timeout=DEADLINE)
