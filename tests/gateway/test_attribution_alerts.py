"""Budget alerts of a tag's and an end user's budget, end to end: requests through the live
gateway spend past the threshold, the settlement records one alert per scope and period, and a
real Celery worker POSTs it, signed and naming the tag or the end user, to a webhook receiver on
loopback. Another tenant's spend on the same tag alerts nobody."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.gateway.conftest import request_logs, wait_until


@pytest.fixture
def receiver():
    """A real HTTP endpoint that accepts every POST and keeps it."""
    received: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/budget", received
    server.shutdown()


def _chat(world, key: str, content: str, *, tags: str = "", user: str = "") -> httpx.Response:
    body = {"model": "sim-dear", "max_tokens": 20, "messages": [{"role": "user", "content": content}]}
    if user:
        body["user"] = user
    return httpx.post(world.gateway.v1 + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **({"x-switchyard-tags": tags} if tags else {})})


def _payloads(received) -> list[dict]:
    return [json.loads(body) for _headers, body in received]


def test_tag_and_end_user_budgets_alert_once_per_period_over_the_webhook(world, celery_worker, receiver):
    from apps.catalog.models import Model
    from apps.limits.models import AttributionLimit, BudgetAlert

    url, received = receiver
    Model.objects.create(name="sim-dear", upstream_id="sim-dear", provider=world.provider, max_output_tokens=4096,
                         input_price_per_million=Decimal("500"), output_price_per_million=Decimal("1000"))
    for tenant in (world.tenant_a, world.tenant_b):
        tenant.alert_webhook_url = url
        tenant.save(update_fields=["alert_webhook_url"])
    AttributionLimit.objects.create(tenant=world.tenant_a, kind="tag", value="eval", budget_usd=Decimal("0.10"),
                                    budget_alert_percent=50)
    AttributionLimit.objects.create(tenant=world.tenant_a, kind="user", value="alice", budget_usd=Decimal("0.10"),
                                    budget_alert_percent=50)
    # Globex's own limit on the same tag, never reached: its spend must not alert acme's tag.
    AttributionLimit.objects.create(tenant=world.tenant_b, kind="tag", value="eval", budget_usd=Decimal("1000"),
                                    budget_alert_percent=90)
    assert wait_until(lambda: _chat(world, world.key_a, "warm up", user="alice").headers.get(
        "x-switchyard-budget-limit") == "0.1"), "the gateway never loaded the end user's budget"
    assert _chat(world, world.key_a, "warm up the tag", tags="eval").status_code == 200
    for n in range(3):
        assert _chat(world, world.key_b, f"globex spends on eval {n}", tags="eval").status_code == 200

    # Spend past half of each budget, a request at a time, and a little beyond.
    answered = {"eval": 0, "alice": 0}
    for n in range(12):
        for name, extra in (("eval", {"tags": "eval, nightly"}), ("alice", {"user": "alice"})):
            answer = _chat(world, world.key_a, f"spend {name} {n}", **extra)
            answered[name] += answer.status_code == 200
    rows = request_logs(answered["eval"] + 1, tenant=world.tenant_a, tags__contains=["eval"], status_code=200)
    spent = sum(row.cost for row in rows)
    assert spent >= Decimal("0.05"), spent  # the threshold was crossed

    assert wait_until(lambda: len(received) >= 2, timeout=60), (received, celery_worker.poll())
    time.sleep(1)  # room for a wrong third delivery to arrive
    payloads = _payloads(received)
    assert len(payloads) == 2, payloads
    by_subject = {(payload["tag"], payload["end_user"]): payload for payload in payloads}
    assert set(by_subject) == {("eval", None), (None, "alice")}
    for payload in payloads:
        assert payload["tenant"] == "acme" and payload["api_key"] is None
        assert payload["type"] == "budget.threshold_crossed" and payload["threshold_percent"] == 50
        assert Decimal(payload["budget_usd"]) == Decimal("0.1")
        assert Decimal("0.05") <= Decimal(payload["spent_usd"]) <= Decimal("0.1") + Decimal("0.05")
    for headers, body in received:
        expected = hmac.new(world.tenant_a.alert_webhook_secret.encode(),
                            headers["x-switchyard-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-switchyard-signature"], f"sha256={expected}")

    alerts = BudgetAlert.objects.order_by("attribution_kind")
    assert [(a.tenant_id, a.attribution_kind, a.attribution_value) for a in alerts] == [
        (world.tenant_a.pk, "tag", "eval"), (world.tenant_a.pk, "user", "alice")]
    assert all(alert.delivered_at is not None for alert in alerts)

    # Once per period: more spend on both (refused or not) sends nothing more.
    for n in range(3):
        _chat(world, world.key_a, f"spend more {n}", tags="eval", user="alice")
    time.sleep(1.5)
    assert len(received) == 2 and BudgetAlert.objects.count() == 2
