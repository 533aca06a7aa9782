"""Budget alerts: one row per scope and period, and a signed webhook retried by a real worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.limits.models import BudgetAlert
from apps.limits.periods import period_bounds
from apps.limits.services import budget_alert_record
from apps.limits.spec import nanos, scope_limits
from apps.limits.webhooks import WebhookFailed, alert_webhook_send


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("LIMITS_WEBHOOK_RETRY_DELAY", "0.2")


@pytest.fixture
def worker(fast_retries, celery_worker):
    return celery_worker


@pytest.fixture
def receiver():
    """A real HTTP endpoint that fails the first two deliveries, then accepts."""
    received: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(500 if len(received) <= 2 else 204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/budget", received
    server.shutdown()


def _crossing(tenant, spent: str):
    limits = scope_limits(tenant, tenant_id=tenant.pk, api_key_id=None)
    period, _end = period_bounds(limits.period, limits.tz, time.time())
    return budget_alert_record(limits=limits, period_start=period, spent=nanos(Decimal(spent)))


def test_it_delivers_a_signed_webhook_and_retries_until_it_is_accepted(worker, receiver, tenant_a, tenant_b):
    url, received = receiver
    for tenant in (tenant_a, tenant_b):
        tenant.budget_usd, tenant.budget_alert_percent, tenant.alert_webhook_url = Decimal("10"), 80, url
        tenant.save()
    alert = _crossing(tenant_a, "8.5")
    assert alert is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and BudgetAlert.objects.get(pk=alert.pk).delivered_at is None:
        assert worker.poll() is None, "the worker died"
        time.sleep(0.1)
    alert.refresh_from_db()
    assert alert.delivered_at is not None and alert.webhook_attempts == 3 and alert.last_error == ""
    assert len(received) == 3  # two 500s, then accepted
    for headers, body in received:
        expected = hmac.new(tenant_a.alert_webhook_secret.encode(), headers["x-switchyard-timestamp"].encode()
                            + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-switchyard-signature"], f"sha256={expected}")
        wrong = hmac.new(tenant_b.alert_webhook_secret.encode(), headers["x-switchyard-timestamp"].encode()
                         + b"." + body, hashlib.sha256).hexdigest()
        assert headers["x-switchyard-signature"] != f"sha256={wrong}"
        payload = json.loads(body)
        assert payload["tenant"] == "acme" and payload["api_key"] is None
        assert payload["type"] == "budget.threshold_crossed" and payload["threshold_percent"] == 80
        assert Decimal(payload["spent_usd"]) == Decimal("8.5") and Decimal(payload["budget_usd"]) == 10


def test_it_records_one_alert_per_scope_and_period(db, tenant_a, tenant_b, key_a):
    for tenant in (tenant_a, tenant_b):
        tenant.budget_usd, tenant.budget_alert_percent = Decimal("10"), 50
        tenant.save()
    key = key_a.api_key
    key.budget_usd, key.budget_alert_percent = Decimal("1"), 90
    key.save()
    assert _crossing(tenant_a, "5") is not None
    assert _crossing(tenant_a, "6") is None  # same period: no second alert
    assert _crossing(tenant_b, "5") is not None  # another tenant has its own
    limits = scope_limits(key, tenant_id=tenant_a.pk, api_key_id=key.pk)
    period, _end = period_bounds(limits.period, limits.tz, time.time())
    key_alert = budget_alert_record(limits=limits, period_start=period, spent=nanos(Decimal("0.95")))
    assert key_alert.api_key_id == key.pk and key_alert.threshold_percent == 90
    assert BudgetAlert.objects.filter(tenant=tenant_a).count() == 2
    assert BudgetAlert.objects.filter(tenant=tenant_b).count() == 1


def test_it_does_not_follow_a_webhook_redirect(db, tenant_a):
    followed: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/hooks/budget":
                self.do_GET()
                return
            self.send_response(302)  # urllib would follow it with a GET
            self.send_header("Location", "/internal/admin-action")
            self.end_headers()

        def do_GET(self):
            followed.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tenant_a.budget_usd, tenant_a.budget_alert_percent = Decimal("10"), 80
        tenant_a.alert_webhook_url = f"http://127.0.0.1:{server.server_address[1]}/hooks/budget"
        tenant_a.save()
        alert = _crossing(tenant_a, "8.5")
        with pytest.raises(WebhookFailed, match="HTTP 302"):
            alert_webhook_send(alert_id=alert.pk)
    finally:
        server.shutdown()
    assert followed == []
    alert.refresh_from_db()
    assert alert.delivered_at is None and alert.last_error == "HTTP 302"
