"""Budget alerts delivered to the tenant's webhook: a signed POST, no redirects followed, retried
by ``limits.alert_deliver`` while it raises :class:`WebhookFailed`."""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request

import orjson
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from apps.limits.models import BudgetAlert


class WebhookFailed(Exception):
    pass


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
        # A tag's or an end user's budget names it; both are null for the tenant's or a key's.
        "tag": alert.attribution_value if alert.attribution_kind == "tag" else None,
        "end_user": alert.attribution_value if alert.attribution_kind == "user" else None,
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
