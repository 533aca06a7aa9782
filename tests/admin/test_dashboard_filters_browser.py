"""The dashboard's end-user and tag filters in a real headless Chromium against a live Switchyard:
an operator narrowed to one tenant clicks an end user in the top-20 table, then a tag, and every
card and chart counts those requests alone; "Clear filter" brings the whole tenant back. A tenant
member's page takes the same filters and never shows another tenant's requests. Screenshots land
in tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.contrib.auth import get_user_model

from apps.reporting.models import TenantMember
from apps.usage.models import RequestLog
from tests.admin.conftest import OPERATOR_PASSWORD
from tests.live import REPO
from tests.reporting.test_dashboard_filters import _matching, logged  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
RANGE = "range=custom&start=2026-11-01&end=2026-11-03"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


def _money(rows) -> str:
    return f"${sum((r.cost for r in rows), Decimal(0)).quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def _charted(page) -> int:
    return page.evaluate("() => Chart.getChart('sy-spend-chart').data.datasets[0].data.length")


def _chart_requests(page) -> int:
    return page.evaluate("() => JSON.parse(document.getElementById('sy-chart-data').textContent)"
                         ".requests.reduce((a, b) => a + b, 0)")


def test_an_operator_filters_the_dashboard_by_clicking_a_user_and_a_tag(logged, admin_server, tenant_a,  # noqa: F811
                                                                       tenant_b, django_user_model):
    from playwright.sync_api import expect, sync_playwright

    django_user_model.objects.create_superuser("live-operator", password=OPERATOR_PASSWORD)
    member = get_user_model().objects.create_user("member", password="a-long-password-3")
    TenantMember.objects.create(user=member, tenant=tenant_a)
    # Expected figures first: the ORM cannot run inside Playwright's event loop.
    whole = RequestLog.objects.filter(tenant=tenant_a).count()
    alice, alice_eval, evals = (_matching(tenant_a, user="alice"), _matching(tenant_a, user="alice", tag="eval"),
                                _matching(tenant_a, tag="eval"))
    assert 0 < len(alice_eval) < len(alice) < whole
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(admin_server.base + f"/admin/login/?next=/admin/dashboard/%3Ftenant%3D{tenant_a.pk}%26"
                      + RANGE.replace("&", "%26").replace("=", "%3D"))
            page.fill("#id_username", "live-operator")
            page.fill("#id_password", OPERATOR_PASSWORD)
            page.locator("input[type=submit]").click()
            page.wait_for_url("**/admin/dashboard/**")
            expect(page.locator("#sy-spend-chart")).to_be_visible()
            expect(page.locator("#sy-filter")).to_have_count(0)
            expect(page.locator("#sy-requests .sy-value")).to_have_text(str(whole))

            page.locator("#sy-users a.sy-user-filter", has_text="alice").click()
            expect(page.locator("#sy-filter-user")).to_have_text("alice")
            rows = alice
            expect(page.locator("#sy-requests .sy-value")).to_have_text(str(len(rows)))
            expect(page.locator("#sy-spend .sy-value")).to_have_text(_money(rows))
            assert _charted(page) == 3 and _chart_requests(page) == len(rows)

            page.locator("#sy-tags a.sy-tag-filter", has_text="eval").first.click()
            expect(page.locator("#sy-filter-tag")).to_have_text("eval")
            expect(page.locator("#sy-filter-user")).to_have_text("alice")
            rows = alice_eval
            expect(page.locator("#sy-requests .sy-value")).to_have_text(str(len(rows)))
            expect(page.locator("#sy-spend .sy-value")).to_have_text(_money(rows))
            assert _chart_requests(page) == len(rows)
            page.screenshot(path=str(ARTIFACTS / "dashboard-filtered.png"), full_page=True)

            # The range form keeps the filter; "Clear filter" drops it.
            page.locator("#sy-filters input[type=submit]").click()
            expect(page.locator("#sy-filter-tag")).to_have_text("eval")
            page.locator("#sy-clear-filter").click()
            expect(page.locator("#sy-filter")).to_have_count(0)
            expect(page.locator("#sy-requests .sy-value")).to_have_text(str(whole))

            # carol is globex's: narrowed to acme, the filter finds nothing of globex.
            page.goto(admin_server.base + f"/admin/dashboard/?tenant={tenant_a.pk}&{RANGE}&user=carol")
            expect(page.locator("#sy-requests .sy-value")).to_have_text("0")
            expect(page.locator("#sy-spend .sy-value")).to_have_text("$0.0000")

            # A member's page: its own tenant's requests, narrowed the same way.
            member_page = browser.new_page(viewport={"width": 1200, "height": 900})
            member_page.goto(admin_server.base + f"/account/usage/?{RANGE}")
            member_page.fill("input[name=username]", "member")
            member_page.fill("input[name=password]", "a-long-password-3")
            member_page.locator("button[type=submit], input[type=submit]").first.click()
            member_page.wait_for_url("**/account/usage/**")
            member_page.locator("#sy-tags a.sy-tag-filter", has_text="eval").first.click()
            expect(member_page.locator("#sy-filter-tag")).to_have_text("eval")
            rows = evals
            expect(member_page.locator("#requests div")).to_have_text(str(len(rows)))
            assert _chart_requests(member_page) == len(rows)
            member_page.screenshot(path=str(ARTIFACTS / "tenant-usage-filtered.png"), full_page=True)
            member_page.goto(admin_server.base + f"/account/usage/?{RANGE}&tag=secret-b&tenant={tenant_b.pk}")
            expect(member_page.locator("#requests div")).to_have_text("0")
        finally:
            browser.close()
