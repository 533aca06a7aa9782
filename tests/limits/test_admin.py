"""Limits in the admin: each tenant's and key's spend against its budget and alert state, and
bad limit settings answered with a form error."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.urls import reverse

from apps.limits.models import BudgetAlert
from apps.limits.periods import period_bounds
from apps.limits.services import budget_alert_record
from apps.limits.spec import nanos, scope_limits
from apps.tenants.models import ApiKey


def _spend(*objs_and_amounts) -> None:
    """Reserve and settle through the store the admin reads (Redis when configured)."""
    from apps.gateway.database import conninfo
    from apps.limits.enforce import limiter_open

    async def run():
        limiter = limiter_open(redis_url=settings.REDIS_URL, conninfo=conninfo(), lease_seconds=60)
        try:
            for n, (limits, amount) in enumerate(objs_and_amounts):
                held = await limiter.reserve((limits,), request_id=f"admin-{time.time()}-{n}", tokens=0,
                                             cost=nanos(Decimal(amount)))
                for crossing in await limiter.settle(held, tokens=0, cost=nanos(Decimal(amount))):
                    await asyncio.to_thread(budget_alert_record, limits=crossing.limits,
                                            period_start=crossing.period_start, spent=crossing.spent)
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.fixture
def budgets(transactional_db, tenant_a, tenant_b, key_a, key_b):
    tenant_a.budget_usd, tenant_a.budget_alert_percent = Decimal("1"), 20
    tenant_a.save()
    tenant_b.budget_usd, tenant_b.budget_alert_percent = Decimal("2"), 90
    tenant_b.save()
    key = key_a.api_key
    key.budget_usd, key.budget_period = Decimal("0.5"), "day"
    key.save()
    _spend((scope_limits(tenant_a, tenant_id=tenant_a.pk, api_key_id=None), "0.25"),
           (scope_limits(key, tenant_id=tenant_a.pk, api_key_id=key.pk), "0.125"),
           (scope_limits(tenant_b, tenant_id=tenant_b.pk, api_key_id=None), "0.75"))
    return tenant_a, tenant_b, key


def test_it_shows_each_tenants_own_spend_and_alert_state(admin_client, budgets):
    tenant_a, tenant_b, key = budgets
    page = admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant_a.pk])).content.decode()
    assert "$0.25 of $1 (25.0%)" in page and "alerted at 20%" in page
    assert "$0.75" not in page
    page = admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant_b.pk])).content.decode()
    assert "$0.75 of $2 (37.5%)" in page and "below threshold" in page
    assert "$0.25" not in page
    listing = admin_client.get(reverse("admin:tenants_tenant_changelist")).content.decode()
    assert "$0.25 of $1 (25.0%)" in listing and "$0.75 of $2 (37.5%)" in listing
    page = admin_client.get(reverse("admin:tenants_apikey_change", args=[key.pk])).content.decode()
    assert "$0.125 of $0.5 (25.0%)" in page and "no alert set" not in page


def test_it_lists_budget_alerts_per_tenant(admin_client, budgets):
    tenant_a, tenant_b, _key = budgets
    assert BudgetAlert.objects.count() == 1
    url = reverse("admin:limits_budgetalert_changelist")
    mine = admin_client.get(url, {"tenant__id__exact": tenant_a.pk}).content.decode()
    theirs = admin_client.get(url, {"tenant__id__exact": tenant_b.pk}).content.decode()
    assert "0 budget alerts" in theirs and "1 budget alert" in mine
    assert admin_client.get(reverse("admin:limits_budgetalert_add")).status_code == 403


def test_it_creates_a_key_with_limits_and_refuses_a_bad_time_zone(admin_client, tenant_a):
    url = reverse("admin:tenants_apikey_add")
    form = {"tenant": tenant_a.pk, "name": "capped", "rpm_limit": "5", "budget_usd": "3.50", "budget_period": "week",
            "budget_timezone": "Mars/Olympus_Mons", "budget_alert_percent": "80"}
    refused = admin_client.post(url, form)
    assert refused.status_code == 200 and "is not an IANA time zone" in refused.content.decode()
    assert admin_client.post(url, {**form, "budget_alert_percent": "150"}).status_code == 200
    assert not ApiKey.objects.filter(name="capped").exists()
    created = admin_client.post(url, {**form, "budget_timezone": "Asia/Tokyo"})
    assert created.status_code == 302
    key = ApiKey.objects.get(name="capped")
    assert (key.rpm_limit, key.budget_usd, key.budget_period, key.budget_timezone) == (
        5, Decimal("3.50"), "week", "Asia/Tokyo")
    start, _end = period_bounds("week", scope_limits(key, tenant_id=tenant_a.pk, api_key_id=key.pk).tz, time.time())
    assert start > 0
