"""The operators' dashboard: staff only, figures from the rollups, one tenant or all."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.contrib.auth import get_user_model

from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from tests.reporting.test_rollups import _logs

PARAMS = {"range": "custom", "start": "2026-11-01", "end": "2026-11-03"}


@pytest.fixture
def logged(transactional_db, tenant_a, tenant_b, key_a, key_b):
    _logs(random.Random(31), [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], 300, hours=48)
    usage_rollup()
    usage_rollup()


@pytest.fixture
def staff(client, db):
    user = get_user_model().objects.create_user("operator", password="a-long-password-1", is_staff=True)
    client.force_login(user)
    return user


def _money(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def test_it_shows_all_tenants_figures_to_staff(client, staff, logged):
    response = client.get("/admin/dashboard/", PARAMS)
    assert response.status_code == 200
    page = response.content.decode()
    total = sum((r.cost for r in RequestLog.objects.all()), Decimal(0))
    assert _money(total) in page
    assert f'<div class="sy-value">{RequestLog.objects.count()}</div>' in page
    assert page.count("<rect ") >= 2  # the daily spend and hit-rate charts, drawn on the server


def test_it_narrows_to_one_tenant(client, staff, logged, tenant_a, tenant_b, key_b):
    response = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk})
    page = response.content.decode()
    own = RequestLog.objects.filter(tenant=tenant_a)
    assert _money(sum((r.cost for r in own), Decimal(0))) in page
    assert f'<div class="sy-value">{own.count()}</div>' in page
    assert key_b.api_key.prefix not in page  # the other tenant's key is not among the top keys


@pytest.mark.parametrize("is_staff", [False, None])
def test_it_is_refused_to_anyone_but_staff(client, db, is_staff):
    if is_staff is not None:
        client.force_login(get_user_model().objects.create_user("tenant-user", password="a-long-password-2"))
    response = client.get("/admin/dashboard/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_it_falls_back_to_seven_days_on_a_bad_range(client, staff, logged):
    response = client.get("/admin/dashboard/", {"range": "custom", "start": "nonsense", "tenant": "x"})
    assert response.status_code == 200
    # The fixture's rows are stamped 2026-11-01 and 02; "7 days" ends today.
    page = response.content.decode()
    assert 'value="custom" selected' not in page and 'value="7d" selected' in page


def test_it_shows_budget_usage_against_the_limit(client, staff, logged, tenant_a, tenant_b):
    tenant_a.budget_usd = Decimal("25.00")
    tenant_a.save()
    page = client.get("/admin/dashboard/", PARAMS).content.decode()
    budgets = page[page.index('id="sy-budgets"'):]
    assert tenant_a.name in budgets and "$25.00" in budgets
    assert tenant_b.name not in budgets  # no budget set
    narrowed = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_b.pk}).content.decode()
    assert "No tenant has a budget." in narrowed
