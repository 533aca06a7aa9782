"""A tenant member's own usage page in a real headless Chromium against a live Switchyard: after
logging in at /account/login/, the same charts as the operators' dashboard are drawn (Chart.js
from the project's static files) with every day of the range on the axis, and only that
tenant's figures. A screenshot lands in tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import random

import pytest
from django.contrib.auth import get_user_model

from apps.reporting.models import TenantMember
from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from tests.live import REPO
from tests.reporting.test_rollups import _logs

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
CHARTS = ("sy-spend-chart", "sy-savings-chart", "sy-hits-chart")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


def test_a_member_sees_the_tenants_charts_drawn(transactional_db, admin_server, tenant_a, tenant_b, key_a, key_b):
    from playwright.sync_api import expect, sync_playwright

    _logs(random.Random(7), [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], 200, hours=48)
    usage_rollup()
    usage_rollup()
    user = get_user_model().objects.create_user("member", password="a-long-password-3")
    TenantMember.objects.create(user=user, tenant=tenant_a)
    own = sum(1 for _ in RequestLog.objects.filter(tenant=tenant_a).iterator())
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            elsewhere = []
            page.on("request", lambda request: None if request.url.startswith(admin_server.base)
                    else elsewhere.append(request.url))
            page.goto(admin_server.base + "/account/usage/?range=custom&start=2026-11-01&end=2026-11-03")
            page.fill("input[name=username]", "member")
            page.fill("input[name=password]", "a-long-password-3")
            page.locator("button[type=submit], input[type=submit]").first.click()
            page.wait_for_url("**/account/usage/**")
            expect(page.locator("#sy-spend-chart")).to_be_visible()
            for chart in CHARTS:
                labels = page.evaluate("id => Chart.getChart(id).scales.x.getLabelItems().map(i => i.label)", chart)
                assert labels == ["Nov 1", "Nov 2", "Nov 3"], (chart, labels)
            drawn = page.evaluate("() => Chart.getChart('sy-spend-chart').data.datasets[0].data.length")
            assert drawn == 3
            assert f"<div>{own}</div>" in page.content()  # the requests card: this tenant's only
            page.screenshot(path=str(ARTIFACTS / "tenant-usage.png"), full_page=True)
            assert elsewhere == []
        finally:
            browser.close()
