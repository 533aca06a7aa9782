"""The request log in a real headless Chromium, 1400 pixels wide, against a live Switchyard: the
columns an operator reads first are on screen beside the filters without scrolling sideways,
the search box says what it matches, and the filters narrow the list. A screenshot lands in
tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.catalog.models import Model
from apps.tenants.services import key_create, tenant_create
from apps.usage.models import RequestLog
from tests.admin.conftest import OPERATOR_PASSWORD
from tests.live import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
COLUMNS = ("model_column", "cache_column", "cost_column", "latency_column", "status", "error_column")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


def _seed(provider) -> dict:
    tenants = [tenant_create(name="Acme Corporation International", slug="acme-corp"),
               tenant_create(name="Globex Manufacturing Holdings", slug="globex-holdings")]
    keys = [key_create(tenant=tenant, name="production backend").api_key for tenant in tenants]
    model = Model.objects.create(name="sim-standard-2025-01-long", upstream_id="sim-standard", provider=provider,
                                 input_price_per_million=Decimal("2.5"), output_price_per_million=Decimal("10"))
    now = timezone.now()
    outcomes = [(200, "", "miss"), (200, "", "semantic"), (429, "rate_limit_exceeded", "miss"),
                (502, "upstream_timeout", "miss"), (200, "", "exact")]
    RequestLog.objects.bulk_create([
        RequestLog(tenant=tenants[i % 2], api_key=keys[i % 2], request_id=f"req_{i:016x}{i:08x}",
                   requested_model="auto", model_used=model.name, model=model,
                   cache_outcome=outcomes[i % 5][2], cache_similarity=0.93871 if outcomes[i % 5][2] == "semantic"
                   else None, input_tokens=12_345, output_tokens=6_789, cost=Decimal("0.0123456789"),
                   latency_ms=12_345.6, status_code=outcomes[i % 5][0], error_code=outcomes[i % 5][1],
                   is_stream=bool(i % 2), created_at=now - timedelta(minutes=i))
        for i in range(150)])
    return {"tenants": tenants, "keys": keys}


def test_it_shows_model_cache_cost_latency_and_error_beside_the_filters_at_1400_pixels(operator_browser,
                                                                                        admin_server, provider):
    from playwright.sync_api import sync_playwright

    seeded = _seed(provider)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(admin_server.base + "/admin/login/?next=/admin/usage/requestlog/")
            page.fill("#id_username", "live-operator")
            page.fill("#id_password", OPERATOR_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/usage/requestlog/")
            page.screenshot(path=str(ARTIFACTS / "request-log.png"))
            filters = page.locator("#changelist-filter").bounding_box()
            assert page.evaluate("document.documentElement.scrollWidth") <= 1400
            for column in COLUMNS:
                header = page.locator(f"#result_list thead th.column-{column}").bounding_box()
                assert header is not None and header["x"] + header["width"] <= filters["x"], column
            row = page.locator("#result_list tbody tr").filter(has_text="semantic").first
            for text in ("sim-standard-2025-01-long (auto)", "semantic 0.939", "$0.012346", "12,346 ms"):
                assert text in row.inner_text()
            assert "upstream_timeout" in page.locator("#result_list tbody").inner_text()
            help_text = page.locator("#searchbar_helptext").inner_text()
            assert "exact request ID" in help_text and "prefix" in help_text
            for title in ("created at", "tenant", "API key", "model used", "status", "error code"):
                assert page.locator("#changelist-filter").get_by_text(f"By {title}", exact=True).count() == 1
            page.locator("#changelist-filter").get_by_role("link", name="upstream_timeout").click()
            page.wait_for_url("**error_code=upstream_timeout*")
            statuses = page.locator("#result_list tbody td.field-status").all_inner_texts()
            assert statuses and set(statuses) == {"502"}
            page.locator("#changelist-filter").get_by_role("link", name=seeded["tenants"][0].name, exact=True).click()
            page.wait_for_url("**tenant__id__exact=*")
            keys = page.locator("#result_list tbody td.field-key_prefix").all_inner_texts()
            assert keys and set(keys) == {seeded["keys"][0].prefix}
        finally:
            browser.close()
