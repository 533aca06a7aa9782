"""A new operator's first steps in a real headless Chromium against a live Switchyard: the start
page says where everything is, the admin's header and index lead to the dashboard and the
playground. Screenshots land in tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.admin.conftest import OPERATOR_PASSWORD
from tests.live import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM,
                                      args=["--no-sandbox", "--disable-background-networking"])


def test_it_says_on_the_start_page_where_everything_is(admin_server):
    response = httpx.get(admin_server.base + "/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    for link in ('href="/admin/"', 'href="/admin/dashboard/"', 'href="/playground/"', 'href="/v1/openapi.json"'):
        assert link in html
    assert f'<code id="sy-api-base">{admin_server.base}/v1</code>' in html
    assert "sk-sy-" not in html.replace("sk-sy-...", "")  # no key on a public page
    assert httpx.head(admin_server.base + "/", timeout=30).status_code == 200
    refused = httpx.post(admin_server.base + "/", timeout=30)
    assert refused.status_code == 405


def test_it_leads_from_the_start_page_to_the_admin_dashboard_and_playground(transactional_db, admin_server,
                                                                             django_user_model):
    from playwright.sync_api import expect, sync_playwright

    django_user_model.objects.create_superuser("first-operator", password=OPERATOR_PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(admin_server.base + "/")
            page.screenshot(path=str(ARTIFACTS / "start-page.png"), full_page=True)
            page.locator("#sy-links").get_by_role("link", name=f"{admin_server.base}/admin/", exact=True).click()
            page.fill("#id_username", "first-operator")
            page.fill("#id_password", OPERATOR_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/")
            expect(page.locator("#sy-tools-module").get_by_role("link", name="Dashboard")).to_be_visible()
            expect(page.locator("#sy-tools-module").get_by_role("link", name="Playground")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "admin-index.png"))
            page.locator("#user-tools").get_by_role("link", name="Dashboard").click()
            page.wait_for_url("**/admin/dashboard/")
            expect(page.locator("#sy-spend")).to_be_visible()
            # every admin page's header has both links, the dashboard's own included
            page.locator("#user-tools").get_by_role("link", name="Playground").click()
            page.wait_for_url("**/playground/")
            expect(page.locator("#prompt")).to_be_visible()
            page.goto(admin_server.base + "/admin/tenants/tenant/")
            page.locator("#user-tools").get_by_role("link", name="Dashboard").click()
            page.wait_for_url("**/admin/dashboard/")
        finally:
            browser.close()
