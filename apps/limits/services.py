"""Writes for limits: budget alert rows (delivered to the tenant's webhook by ``limits.alert_deliver``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.db import IntegrityError, transaction

from apps.limits.models import BudgetAlert
from apps.limits.spec import ScopeLimits, usd
from apps.limits.tasks import alert_deliver

logger = logging.getLogger(__name__)


def budget_alert_record(*, limits: ScopeLimits, period_start: int, spent: int) -> BudgetAlert | None:
    """Record a soft-threshold crossing once per scope and period, then emit ``limits.alert_deliver``.

    Returns the new alert, or None when this period already has one (or the tenant is gone).
    """
    budget = usd(limits.budget or 0)
    try:
        with transaction.atomic():
            alert, created = BudgetAlert.objects.get_or_create(
                scope=limits.scope, period_start=datetime.fromtimestamp(period_start, UTC),
                defaults={"tenant_id": limits.tenant_id, "api_key_id": limits.api_key_id,
                          "attribution_kind": limits.attribution_kind,
                          "attribution_value": limits.attribution_value,
                          "threshold_percent": round(limits.alert_at * 100 / limits.budget) if limits.budget else 0,
                          "spent_usd": usd(spent), "budget_usd": budget})
    except IntegrityError:
        logger.warning("budget alert for %s not recorded: its tenant or key no longer exists", limits.scope)
        return None
    if not created:
        return None
    logger.warning("budget alert: %s spent $%s of $%s this period", limits.label or limits.scope, alert.spent_usd,
                   budget)
    alert_deliver.delay(alert.pk)
    return alert
