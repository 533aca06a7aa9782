"""The dashboard in a real headless Chromium against a live Switchyard with seeded usage: the
figures and charts render (Chart.js from the project's static files, an axis label for every
day, a bucket's figures on hover), nothing loads from elsewhere, and a screenshot lands in
tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from tests.gateway.conftest import REPO
from tests.gateway.test_eventsource import session_cookie

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"

CHARTS = ("sy-spend-chart", "sy-savings-chart", "sy-hits-chart")
# What each chart draws on its time axis, and where a bucket's bar stands on the page.
AXIS = "id => Chart.getChart(id).scales.x.getLabelItems().map(item => item.label)"
BAR = """([id, index]) => {
    const chart = Chart.getChart(id), box = chart.canvas.getBoundingClientRect();
    const bar = chart.getDatasetMeta(0).data[index];
    return [box.left + bar.x, box.top + Math.min(bar.y, bar.base - 4)];
}"""

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


def test_it_renders_the_dashboard_with_seeded_usage(world):
    from apps.tenants.models import ApiKey

    rng = random.Random(5)
    now = datetime.now(UTC)
    keys = {tenant: ApiKey.objects.get(tenant=tenant) for tenant in (world.tenant_a, world.tenant_b)}
    RequestLog.objects.bulk_create([
        RequestLog(tenant=tenant, api_key=keys[tenant], request_id=f"seed-{n}", model_used=rng.choice(
            ["sim-mini", "sim-standard", "sim-premium"]), cache_outcome=rng.choice(["miss", "exact", "semantic"]),
            input_tokens=rng.randrange(50, 900), output_tokens=rng.randrange(10, 300),
            cost=Decimal(rng.randrange(1, 5000)) / Decimal(10**6), latency_ms=rng.uniform(5, 900),
            ttft_ms=rng.uniform(3, 400), created_at=now - timedelta(hours=rng.uniform(0, 24 * 6)))
        for n, tenant in enumerate(rng.choice([world.tenant_a, world.tenant_b]) for _ in range(400))])
    usage_rollup()
    usage_rollup()
    spend = sum((row.cost for row in RequestLog.objects.all()), Decimal(0))
    spend = spend.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)  # as the page's floatformat rounds
    own = RequestLog.objects.filter(tenant=world.tenant_a).count()
    days = [now - timedelta(days=back) for back in range(6, -1, -1)]
    by_day = {day.date(): Decimal(0) for day in days}
    for row in RequestLog.objects.all():
        by_day[row.created_at.date()] += row.cost
    dearest = max(by_day, key=by_day.get)
    cookie = session_cookie()  # the ORM before Playwright: its sync API runs an event loop here
    ARTIFACTS.mkdir(exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.add_cookies([{"name": "sessionid", "value": cookie, "url": world.gateway.base}])
            page = context.new_page()
            elsewhere: list[str] = []
            page.on("request", lambda request: None if request.url.startswith(world.gateway.base)
                    else elsewhere.append(request.url))
            page.goto(world.gateway.base + "/admin/dashboard/?range=7d")
            assert page.locator("#sy-spend .sy-value").inner_text() == f"${spend}"
            assert page.locator("#sy-requests .sy-value").inner_text() == "400"
            # Each chart has drawn an axis label for every day of the seven, oldest first.
            for chart in CHARTS:
                assert page.evaluate(AXIS, chart) == [f"{day:%b} {day.day}" for day in days], chart
            # Hovering the dearest day's bar shows that day and its spend, to four significant digits.
            page.locator("#sy-spend-chart").scroll_into_view_if_needed()
            page.mouse.move(*page.evaluate(BAR, ["sy-spend-chart", list(by_day).index(dearest)]))
            tooltip = page.locator("#sy-tooltip")
            tooltip.wait_for(state="visible")
            assert f"{dearest:%a %Y-%m-%d} (UTC)" in tooltip.inner_text()
            shown = re.search(r"Spend \$([0-9.]+)", tooltip.inner_text()).group(1)
            assert float(shown) == pytest.approx(float(by_day[dearest]), rel=1e-3)
            page.locator("#sy-hits-chart").scroll_into_view_if_needed()
            # The same (busiest) day on the hit-rate chart: its rate, and of how many lookups.
            page.mouse.move(*page.evaluate(BAR, ["sy-hits-chart", list(by_day).index(dearest)]))
            page.wait_for_function("document.getElementById('sy-tooltip').innerText.includes('Hit rate')")
            assert f"{dearest:%a %Y-%m-%d} (UTC)" in tooltip.inner_text()
            assert re.search(r"Hit rate \d+%: \d+ of \d+ lookups?", tooltip.inner_text())
            assert page.locator("#sy-models tbody tr").count() == 3
            assert page.locator("#sy-tenants tbody tr").count() == 2
            page.screenshot(path=str(ARTIFACTS / "dashboard-all.png"), full_page=True)
            page.select_option("select[name=tenant]", str(world.tenant_a.pk))
            page.click("input[type=submit]")
            page.wait_for_url("**tenant=*")
            assert page.locator("#sy-requests .sy-value").inner_text() == str(own)
            assert page.locator("#sy-tenants").count() == 0
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert elsewhere == []
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_it_renders_the_charts_of_a_tenant_that_only_missed_and_of_one_with_no_usage(world):
    from apps.tenants.models import ApiKey

    key = ApiKey.objects.get(tenant=world.tenant_a)
    now = datetime.now(UTC)
    RequestLog.objects.bulk_create([
        RequestLog(tenant=world.tenant_a, api_key=key, request_id=f"miss-{n}", model_used="sim-mini",
                   cache_outcome="miss", input_tokens=100, output_tokens=20, cost=Decimal("0.0001"), latency_ms=10.0,
                   created_at=now - timedelta(days=n % 6, minutes=1))
        for n in range(30)])
    usage_rollup()
    usage_rollup()
    cookie = session_cookie()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.add_cookies([{"name": "sessionid", "value": cookie, "url": world.gateway.base}])
            page = context.new_page()
            response = page.goto(world.gateway.base + f"/admin/dashboard/?range=7d&tenant={world.tenant_a.pk}")
            assert response.status == 200
            assert page.locator("#sy-hits .sy-value").inner_text() == "0%"
            # Spend, savings, and a hit rate of 0 in every bucket.
            assert page.locator("#sy-charts canvas").count() == 3
            assert page.evaluate("Chart.getChart('sy-hits-chart').data.datasets[0].data") == [0] * 7
            response = page.goto(world.gateway.base + f"/admin/dashboard/?range=30d&tenant={world.tenant_b.pk}")
            assert response.status == 200
            assert page.locator("#sy-requests .sy-value").inner_text() == "0"
            assert page.locator("#sy-charts canvas").count() == 0
            assert page.get_by_text("No requests in this range.").count() == 1
        finally:
            browser.close()
