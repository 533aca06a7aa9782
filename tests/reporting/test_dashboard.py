"""The operators' dashboard: staff only, figures from the rollups, one tenant or all."""

from __future__ import annotations

import http.client
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode, urlparse

import pytest
from django.contrib.auth import get_user_model

from apps.reporting.services import usage_rollup
from apps.tenants.services import tenant_create
from apps.usage.models import RequestLog
from tests.gateway.conftest import gateway_process  # noqa: F401 (fixture)
from tests.gateway.test_eventsource import session_cookie
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


def _chart_data(page: str) -> dict:
    """The charts' figures, as the page hands them to Chart.js."""
    start = page.index(">", page.index('<script id="sy-chart-data"')) + 1
    return json.loads(page[start:page.index("</script>", start)])


def _day_sums(field: str, **filters) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for row in RequestLog.objects.filter(**filters):
        day = f"{row.created_at:%b} {row.created_at.day}"
        sums[day] = sums.get(day, Decimal(0)) + getattr(row, field)
    return sums


def test_it_shows_all_tenants_figures_to_staff(client, staff, logged):
    response = client.get("/admin/dashboard/", PARAMS)
    assert response.status_code == 200
    page = response.content.decode()
    total = sum((r.cost for r in RequestLog.objects.all()), Decimal(0))
    assert _money(total) in page
    assert f'<div class="sy-value">{RequestLog.objects.count()}</div>' in page
    # One bucket per day of the range, the empty third day as zeros, for Chart.js served from here.
    charts = _chart_data(page)
    assert charts["step"] == "day" and charts["labels"] == ["Nov 1", "Nov 2", "Nov 3"]
    for field, series in (("cost", "spend"), ("saved_cost", "cache_saved"), ("routing_saved_cost", "routing_saved")):
        sums = _day_sums(field)
        assert charts[series] == pytest.approx([float(sums.get(day, 0)) for day in charts["labels"]]), field
    assert charts["requests"][2] == charts["lookups"][2] == 0 and charts["hit_rate"][2] == 0.0
    assert sum(charts["requests"]) == RequestLog.objects.count()
    for name in ("sy-spend-chart", "sy-savings-chart", "sy-hits-chart"):
        assert f'<canvas id="{name}"' in page
    assert '<script src="/static/reporting/vendor/chartjs/chart.umd.min.js">' in page


def test_it_tables_spend_and_savings_per_tenant_when_all_are_shown(client, staff, logged, tenant_a, tenant_b):
    page = client.get("/admin/dashboard/", PARAMS).content.decode()
    table = page[page.index('id="sy-tenants"'):]
    table = table[:table.index("</table>")]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 2
    for tenant in (tenant_a, tenant_b):
        own = RequestLog.objects.filter(tenant=tenant)
        row = next(row for row in rows if f">{tenant.name}</a>" in row)
        assert f"tenant={tenant.pk}" in row and "range=custom" in row  # narrows the same range to the tenant
        cells = [_money(sum((getattr(r, field) for r in own), Decimal(0)))
                 for field in ("cost", "saved_cost", "routing_saved_cost")]
        assert f"<td>{own.count()}</td><td>{own.filter(status_code__gte=400).count()}</td>" in row
        assert "<td>" + "</td><td>".join(cells) + "</td>" in row
    # Largest spend first.
    spends = [sum((r.cost for r in RequestLog.objects.filter(tenant=t)), Decimal(0)) for t in (tenant_a, tenant_b)]
    first = (tenant_a, tenant_b)[spends.index(max(spends))]
    assert f">{first.name}</a>" in rows[0]
    # One tenant shown: no table of every tenant.
    narrowed = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk}).content.decode()
    assert 'id="sy-tenants"' not in narrowed


def test_it_names_requests_refused_before_routing_instead_of_a_blank_model(client, staff, logged):
    page = client.get("/admin/dashboard/", PARAMS).content.decode()
    models = page[page.index('id="sy-models"'):]
    models = models[:models.index("</table>")]
    refused = RequestLog.objects.filter(model_used="")
    assert refused.exists()  # the fixture logs some
    row = models[models.index("no model (refused before routing)"):]
    row = row[:row.index("</tr>")]
    assert f"<td>{refused.count()}</td><td>{refused.filter(status_code__gte=400).count()}</td>" in row
    assert "(none)" not in page


def test_it_puts_every_hour_of_a_short_range_on_the_axis(client, staff, logged):
    page = client.get("/admin/dashboard/", {"range": "custom", "start": "2026-11-02", "end": "2026-11-03"})
    charts = _chart_data(page.content.decode())
    assert charts["step"] == "hour" and len(charts["labels"]) == 48
    assert charts["labels"][:2] == ["Nov 2", "01:00"] and charts["labels"][24] == "Nov 3"
    assert charts["titles"][13] == "Mon 2026-11-02 13:00 to 14:00 UTC"
    hours = RequestLog.objects.filter(created_at__gte=datetime(2026, 11, 2, tzinfo=UTC))
    assert sum(charts["requests"]) == hours.count()


def test_it_narrows_to_one_tenant(client, staff, logged, tenant_a, tenant_b, key_b):
    response = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk})
    page = response.content.decode()
    own = RequestLog.objects.filter(tenant=tenant_a)
    assert _money(sum((r.cost for r in own), Decimal(0))) in page
    assert f'<div class="sy-value">{own.count()}</div>' in page
    assert key_b.api_key.prefix not in page  # the other tenant's key is not among the top keys


def _route(tenant, request_id, model, *, score=None, estimate=None, best_estimate=None, explored=False):
    from apps.routing.models import RouteOutcome

    return RouteOutcome.objects.create(
        tenant=tenant, request_id=request_id, model_name=model, embedding=[0.0] * 383 + [1.0], score=score,
        estimate=estimate, best_model="sim-premium", best_estimate=best_estimate, explored=explored,
        created_at=datetime(2026, 11, 2, 12, tzinfo=UTC))


def test_it_weighs_learned_routing_savings_against_the_quality_kept(client, staff, logged, tenant_a, tenant_b):
    _route(tenant_a, "r1", "sim-mini", score=1.0, estimate=0.9, best_estimate=1.0)
    _route(tenant_a, "r2", "sim-mini", score=0.0, estimate=0.9, best_estimate=1.0)
    _route(tenant_a, "r3", "sim-mini", estimate=0.8, best_estimate=1.0, explored=True)
    _route(tenant_a, "r4", "sim-premium", score=1.0, estimate=1.0, best_estimate=1.0)
    _route(tenant_b, "r5", "sim-mini", score=0.0, estimate=0.1, best_estimate=1.0)
    page = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk}).content.decode()
    summary = page[page.index('id="sy-learned-summary"'):page.index('id="sy-learned"')]
    assert "4 requests routed by learned rules" in summary
    assert "Measured quality of the 3 rated answers: <strong>0.667</strong>" in summary
    assert "estimate for the unrated ones: 0.800" in summary
    assert "best candidate: <strong>70%</strong>" in summary  # (1 + 0 + 0.8 + 1) / 4
    table = page[page.index('id="sy-learned"'):]
    assert "<tr><td>sim-mini</td><td>3</td><td>1</td><td>2</td>\n<td>0.500</td><td>0.800</td></tr>" in table
    # Every tenant: tenant B's route counts too.
    everyone = client.get("/admin/dashboard/", PARAMS).content.decode()
    assert "5 requests routed by learned rules" in everyone
    spend = RequestLog.objects.filter(tenant=tenant_a)
    without = sum((r.cost + r.routing_saved_cost for r in spend), Decimal(0))
    assert _money(without) in page[page.index('id="sy-unrouted"'):]


def test_it_says_when_no_learned_rule_routed(client, staff, logged):
    page = client.get("/admin/dashboard/", PARAMS).content.decode()
    assert "No request was routed by a learned rule in this range." in page


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


def _seed(tenant, key, outcomes: list[str], moments: list[datetime]) -> None:
    RequestLog.objects.bulk_create([
        RequestLog(tenant=tenant, api_key=key, request_id=f"{tenant.slug}-{n}", model_used="sim-mini",
                   cache_outcome=outcome, input_tokens=100, output_tokens=20, latency_ms=12.0,
                   cost=Decimal("0") if outcome in ("exact", "semantic") else Decimal("0.000120"),
                   saved_cost=Decimal("0.000120") if outcome in ("exact", "semantic") else Decimal("0"),
                   created_at=moment)
        for n, (outcome, moment) in enumerate(zip(outcomes, moments, strict=True))])


def _live_page(gateway, cookie: str, params: dict) -> tuple[int, str]:
    url = urlparse(gateway.base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request("GET", f"/admin/dashboard/?{urlencode(params)}", headers={"Cookie": f"sessionid={cookie}"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.parametrize("spread", ["no data", "one day", "thirty days"])
def test_it_draws_every_chart_for_misses_only_hits_only_and_empty_tenants(gateway_process, transactional_db,  # noqa: F811
                                                                          tenant_a, tenant_b, key_a, key_b, spread):
    """A tenant whose requests all missed the cache (and one whose all hit, and one with none)
    is a normal state: every range and filter draws its charts, never a 500."""
    quiet = tenant_create(name="Initech", slug="initech")
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days = {"no data": 0, "one day": 1, "thirty days": 30}[spread]
    # Three requests on each of the last ``days`` days, all between midnight and now of their day.
    moments = [midnight + (now - midnight) * share - timedelta(days=day)
               for day in range(days) for share in (0.25, 0.5, 0.75)]
    # Acme's requests all missed or bypassed the cache (no lookup at all); Globex's all hit.
    _seed(tenant_a, key_a.api_key, ["miss", "miss", "bypass"] * days, moments)
    _seed(tenant_b, key_b.api_key, ["exact", "semantic", "exact"] * days, moments)
    usage_rollup()
    usage_rollup()
    cookie = session_cookie()
    first = (midnight - timedelta(days=max(days - 1, 0))).date().isoformat()
    within = [{"range": "today"}, {"range": "7d"}, {"range": "30d"},
              {"range": "custom", "start": first, "end": now.date().isoformat()},
              {"range": "custom", "start": "1970-01-01", "end": "9999-12-30"}]
    # Out of the calendar's reach, or no date: the page falls back to 7 days, as for any bad range.
    beyond = [{"range": "custom", "start": "0001-01-01", "end": "2026-11-01"},
              {"range": "custom", "start": "2026-11-01", "end": "9999-12-31"},
              {"range": "custom", "start": "9999-12-31", "end": "9999-12-31"},
              {"range": "custom", "start": "2026-02-30", "end": "2026-11-01"}]
    # Hit rates: misses count, bypasses do not (3 hits of 5 lookups a day over both tenants).
    for tenant, hit_rate in ((tenant_a, "0%"), (tenant_b, "100%"), (None, "60%"), (quiet, "0%")):
        seen = bool(days) and tenant is not quiet
        for chosen in within + beyond:
            status, page = _live_page(gateway_process, cookie, {**chosen, "tenant": tenant.pk if tenant else ""})
            assert status == 200, (spread, tenant, chosen, page[:2000])
            charts = page[page.index('<div id="sy-charts">'):page.index('<div class="sy-columns">')]
            assert charts.count("<canvas") == (3 if seen else 0), (spread, tenant, chosen)
            assert charts.count("No requests in this range.") == (0 if seen else 1), (spread, tenant, chosen)
            if seen and chosen["range"] != "custom":
                # Every hour of today, every day of 7 or 30, whether it had requests or not.
                buckets = {"today": 24, "7d": 7, "30d": 30}[chosen["range"]]
                assert len(_chart_data(page)["labels"]) == buckets, (spread, tenant, chosen)
            assert f'<div class="sy-value">{hit_rate if seen else "0%"}</div>' in page, (spread, tenant, chosen)
            if chosen in beyond:
                assert 'value="7d" selected' in page, chosen
