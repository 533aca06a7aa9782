"""Writes for limits: budget alert rows, their signed webhook, and counter housekeeping."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.limits.models import BudgetAlert, Counter, Lease
from apps.limits.spec import ScopeLimits, usd

logger = logging.getLogger(__name__)


class WebhookFailed(Exception):
    pass


def budget_alert_record(*, limits: ScopeLimits, period_start: int, spent: int) -> BudgetAlert | None:
    """Record a soft-threshold crossing once per scope and period, then emit ``limits.alert_deliver``.

    Returns the new alert, or None when this period already has one (or the tenant is gone).
    """
    from apps.limits.tasks import alert_deliver

    budget = usd(limits.budget or 0)
    try:
        with transaction.atomic():
            alert, created = BudgetAlert.objects.get_or_create(
                scope=limits.scope, period_start=datetime.fromtimestamp(period_start, UTC),
                defaults={"tenant_id": limits.tenant_id, "api_key_id": limits.api_key_id,
                          "threshold_percent": round(limits.alert_at * 100 / limits.budget) if limits.budget else 0,
                          "spent_usd": usd(spent), "budget_usd": budget})
    except IntegrityError:
        logger.warning("budget alert for %s not recorded: its tenant or key no longer exists", limits.scope)
        return None
    if not created:
        return None
    logger.warning("budget alert: %s spent $%s of $%s this period", limits.scope, alert.spent_usd, budget)
    alert_deliver.delay(alert.pk)
    return alert


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the HMAC-SHA256 of ``<timestamp>.<body>`` under the tenant's secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def alert_payload(alert: BudgetAlert) -> dict:
    return {
        "type": "budget.threshold_crossed",
        "alert_id": alert.pk,
        "tenant": alert.tenant.slug,
        "api_key": alert.api_key.prefix if alert.api_key_id else None,
        "period_start": alert.period_start.isoformat(),
        "threshold_percent": alert.threshold_percent,
        "spent_usd": str(alert.spent_usd),
        "budget_usd": str(alert.budget_usd),
        "created_at": alert.created_at.isoformat(),
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook's 3xx is its answer, not an address to follow: a receiver, whoever runs it,
    must not be able to send the worker on to another host (an internal service, say)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx


_WEBHOOK_OPENER = urllib.request.build_opener(_NoRedirects)


def alert_webhook_send(*, alert_id: int) -> str:
    """POST the alert to its tenant's webhook. Raises :class:`WebhookFailed` to be retried."""
    alert = BudgetAlert.objects.select_related("tenant", "api_key").filter(pk=alert_id).first()
    if alert is None:
        return "gone"
    url = alert.tenant.alert_webhook_url
    if not url:
        return "no webhook"
    if alert.delivered_at is not None:
        return "already delivered"
    if not url.startswith(("https://", "http://")):
        raise WebhookFailed(f"not an http(s) URL: {url}")
    body = orjson.dumps(alert_payload(alert))
    stamp = str(int(time.time()))
    request = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 (http(s) only)
        "Content-Type": "application/json", "User-Agent": "switchyard-webhooks",
        "X-Switchyard-Event": "budget.threshold_crossed", "X-Switchyard-Timestamp": stamp,
        "X-Switchyard-Signature": webhook_signature(alert.tenant.alert_webhook_secret, stamp, body)})
    BudgetAlert.objects.filter(pk=alert.pk).update(webhook_attempts=F("webhook_attempts") + 1)
    try:
        # Scheme checked above; redirects are not followed.
        with _WEBHOOK_OPENER.open(request, timeout=settings.LIMITS_WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        error = f"HTTP {exc.code}"
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        if 200 <= status < 300:
            BudgetAlert.objects.filter(pk=alert.pk).update(delivered_at=timezone.now(), last_error="")
            return "delivered"
        error = f"HTTP {status}"
    BudgetAlert.objects.filter(pk=alert.pk).update(last_error=error[:500])
    raise WebhookFailed(error)


def counters_purge(*, now_ms: int | None = None) -> int:
    """Delete minute windows, periods and leases that have expired (Postgres path)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    counters, _ = Counter.objects.filter(expires_ms__lt=now_ms).delete()
    leases, _ = Lease.objects.filter(expires_ms__lt=now_ms).delete()
    return counters + leases
