"""The tenant's own usage page: a member sees its tenant's figures only; others are refused."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.contrib.auth import get_user_model

from apps.reporting.models import TenantMember
from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from tests.reporting.test_rollups import _logs

PARAMS = {"range": "custom", "start": "2026-11-01", "end": "2026-11-03"}


@pytest.fixture
def logged(transactional_db, tenant_a, tenant_b, key_a, key_b):
    _logs(random.Random(41), [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], 300, hours=48)
    usage_rollup()
    usage_rollup()


def _member(client, tenant, name="member"):
    user = get_user_model().objects.create_user(name, password="a-long-password-3")
    TenantMember.objects.create(user=user, tenant=tenant)
    assert client.login(username=name, password="a-long-password-3")
    return user


def test_it_shows_a_member_its_own_tenants_figures_only(client, logged, tenant_a, tenant_b, key_a, key_b):
    _member(client, tenant_a)
    page = client.get("/account/usage/", PARAMS).content.decode()
    own = RequestLog.objects.filter(tenant=tenant_a)
    spend = sum((r.cost for r in own), Decimal(0)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    assert f'<div class="card" id="spend"><h3>Spend</h3><div>${spend}</div></div>' in page
    assert f'<div class="card" id="requests"><h3>Requests</h3><div>{own.count()}</div></div>' in page
    assert key_a.api_key.name in page
    assert key_b.api_key.name not in page and tenant_b.name not in page
    assert "no model (refused before routing)" in page and "(none)" not in page  # the fixture logs such rows
    # No parameter reaches another tenant: the page has no tenant parameter at all.
    assert client.get("/account/usage/", {**PARAMS, "tenant": tenant_b.pk}).content.decode().count(
        f"{own.count()}</div>") == 1


def test_it_is_refused_to_a_login_without_a_tenant_and_sends_anonymous_users_to_log_in(client, db):
    response = client.get("/account/usage/")
    assert response.status_code == 302 and response["Location"].startswith("/account/login/")
    get_user_model().objects.create_user("loner", password="a-long-password-4")
    assert client.login(username="loner", password="a-long-password-4")
    assert client.get("/account/usage/").status_code == 403


def test_it_keeps_members_out_of_the_operators_dashboard(client, logged, tenant_a):
    _member(client, tenant_a)
    response = client.get("/admin/dashboard/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_it_logs_a_member_in_through_the_form(client, db, tenant_a):
    get_user_model().objects.create_user("formuser", password="a-long-password-5")
    TenantMember.objects.create(user=get_user_model().objects.get(username="formuser"), tenant=tenant_a)
    response = client.post("/account/login/", {"username": "formuser", "password": "a-long-password-5",
                                                "next": "/account/usage/"})
    assert response.status_code == 302 and response["Location"] == "/account/usage/"
    assert client.get("/account/usage/").status_code == 200
    assert client.post("/account/login/", {"username": "formuser", "password": "wrong"}).status_code == 200


def test_it_charts_the_members_own_tenant_on_a_full_axis(client, logged, tenant_a):
    import json
    import re

    _member(client, tenant_a)
    page = client.get("/account/usage/", PARAMS).content.decode()
    data = json.loads(re.search(r'<script id="sy-chart-data" type="application/json">(.*?)</script>', page,
                                re.S).group(1))
    own = RequestLog.objects.filter(tenant=tenant_a)
    assert data["step"] == "day" and data["labels"] == ["Nov 1", "Nov 2", "Nov 3"]  # every day of the range
    assert sum(data["requests"]) == own.count()
    assert sum(data["spend"]) == pytest.approx(float(sum(r.cost for r in own)), abs=1e-9)
    assert "/static/reporting/vendor/chartjs/chart.umd.min.js" in page and "<svg" not in page
