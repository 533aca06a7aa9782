"""Budget alert delivery (retried with backoff) and counter housekeeping, on Celery."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from apps.limits.purge import counters_purge
from apps.limits.webhooks import WebhookFailed, alert_webhook_send


@shared_task(name="limits.alert_deliver", bind=True)
def alert_deliver(self, alert_id: int) -> str:
    """The budget alert event: POSTs it to the tenant's webhook, if it has one."""
    try:
        return alert_webhook_send(alert_id=alert_id)
    except WebhookFailed as exc:
        retries = self.request.retries
        if retries >= settings.LIMITS_WEBHOOK_RETRIES:
            return f"failed: {exc}"
        raise self.retry(exc=exc, countdown=settings.LIMITS_WEBHOOK_RETRY_DELAY * 2 ** retries,
                         max_retries=settings.LIMITS_WEBHOOK_RETRIES) from exc


@shared_task(name="limits.purge_counters")
def purge_counters() -> int:
    return counters_purge()
