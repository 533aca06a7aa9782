"""The dashboard's and the tenant page's end-user and tag filters: every card and chart counts
the matching requests alone (checked against sums of the log's rows), whole days from the filter
rollups and partial days from the log, and a filter never reaches across tenants."""

from __future__ import annotations

import bisect
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.contrib.auth import get_user_model

from apps.reporting.models import HISTOGRAM_SIZE, LATENCY_BOUNDS_MS, FilterRollup, TenantMember
from apps.reporting.selectors import UsageFilter, histogram_percentile, usage_filtered
from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from tests.reporting.test_dashboard import _chart_data

START = datetime(2026, 11, 1, tzinfo=UTC)
PARAMS = {"range": "custom", "start": "2026-11-01", "end": "2026-11-03"}
USERS = {"a": ["alice", "bob", ""], "b": ["carol", "alice", ""]}
TAGS = {"a": [[], ["eval"], ["eval", "nightly"], ["prod"]], "b": [[], ["eval"], ["secret-b"]]}


@pytest.fixture
def logged(transactional_db, tenant_a, tenant_b, key_a, key_b):
    rng = random.Random(53)
    rows = []
    for n in range(600):
        side, tenant, key = (("a", tenant_a, key_a), ("b", tenant_b, key_b))[n % 2]
        rows.append(RequestLog(
            tenant=tenant, api_key=key.api_key, request_id=f"f{n}", model_used="sim-mini",
            cache_outcome=rng.choice(["miss", "exact", "semantic", "bypass"]), input_tokens=rng.randrange(5000),
            output_tokens=rng.randrange(500), cost=Decimal(rng.randrange(10**7)) / Decimal(10**9),
            saved_cost=Decimal(rng.randrange(10**6)) / 10**9, routing_saved_cost=Decimal(rng.randrange(10**6)) / 10**9,
            latency_ms=rng.choice([0.5, rng.uniform(0, 3000), 90.0]), ttft_ms=rng.choice([None, rng.uniform(1, 900)]),
            status_code=rng.choice([200, 200, 429]), end_user=rng.choice(USERS[side]),
            tags=rng.choice(TAGS[side]), created_at=START + timedelta(hours=rng.uniform(0, 60))))
    RequestLog.objects.bulk_create(rows)
    usage_rollup()
    usage_rollup()


@pytest.fixture
def staff(client, db):
    user = get_user_model().objects.create_user("operator", password="a-long-password-1", is_staff=True)
    client.force_login(user)
    return user


def _money(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def _matching(tenant, *, user: str = "", tag: str = "", start=START, end=START + timedelta(days=3)):
    rows = RequestLog.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
    if user:
        rows = rows.filter(end_user=user)
    if tag:
        rows = rows.filter(tags__contains=[tag])
    return list(rows)


def _p(rows, q: float, field: str = "latency_ms"):
    histogram = [0] * HISTOGRAM_SIZE
    for row in rows:
        if getattr(row, field) is not None:
            histogram[bisect.bisect_right(LATENCY_BOUNDS_MS, getattr(row, field))] += 1
    return histogram_percentile(histogram, q)


def _check_page(page: str, rows) -> None:
    """The cards and the charts of ``page`` say exactly what ``rows`` add up to."""
    assert f'<div class="sy-value">{len(rows)}</div>' in page
    for field in ("cost", "saved_cost", "routing_saved_cost"):
        assert _money(sum((getattr(r, field) for r in rows), Decimal(0))) in page, field
    lookups = [r for r in rows if r.cache_outcome != "bypass"]
    hits = [r for r in lookups if r.cache_outcome in ("exact", "semantic")]
    rate = round(len(hits) / len(lookups) * 100) if lookups else 0
    assert f'id="sy-hits"><h3>Cache hit rate</h3><div class="sy-value">{rate}%' in page
    assert f"{_p(rows, 50)} / {_p(rows, 95)} ms" in page
    charts = _chart_data(page)
    assert charts["labels"] == ["Nov 1", "Nov 2", "Nov 3"]
    for field, series in (("cost", "spend"), ("saved_cost", "cache_saved")):
        by_day = [float(sum((getattr(r, field) for r in rows if r.created_at.day == day), Decimal(0)))
                  for day in (1, 2, 3)]
        assert charts[series] == pytest.approx(by_day), field
    assert charts["requests"] == [sum(1 for r in rows if r.created_at.day == day) for day in (1, 2, 3)]
    assert charts["hits"] == [sum(1 for r in hits if r.created_at.day == day) for day in (1, 2, 3)]


@pytest.mark.parametrize("narrow", [{"user": "alice"}, {"tag": "eval"}, {"tag": "nightly"},
                                    {"user": "alice", "tag": "eval"}])
def test_it_shows_only_the_filtered_requests_on_every_card_and_chart(client, staff, logged, tenant_a, narrow):
    page = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk, **narrow}).content.decode()
    rows = _matching(tenant_a, **narrow)
    assert rows and len(rows) < RequestLog.objects.filter(tenant=tenant_a).count()
    _check_page(page, rows)
    assert 'id="sy-filter"' in page and 'id="sy-clear-filter"' in page


def test_whole_days_come_from_the_filter_rollups(logged, tenant_a):
    # A request with two tags counts under each; a user's requests once, under "".
    rolled = FilterRollup.objects.filter(tenant=tenant_a)
    assert sum(r.requests for r in rolled.filter(tag="eval")) == len(_matching(tenant_a, tag="eval"))
    assert sum(r.requests for r in rolled.filter(end_user="alice", tag="")) == len(_matching(tenant_a, user="alice"))
    # Emptied rollups show that the page reads them, not the log, for whole days.
    FilterRollup.objects.filter(tenant=tenant_a, tag="eval").update(cost=0)
    totals, _series = usage_filtered(tenant_id=tenant_a.pk, start=START, end=START + timedelta(days=3),
                                     period="day", narrow=UsageFilter(tag="eval"))
    assert totals.cost == 0 and totals.requests == len(_matching(tenant_a, tag="eval"))


def test_partial_days_at_the_ends_come_from_the_log(logged, tenant_a):
    start, end = START + timedelta(hours=7, minutes=30), START + timedelta(days=2, hours=5)
    for narrow in (UsageFilter(end_user="bob"), UsageFilter(tag="eval"), UsageFilter(end_user="alice", tag="prod")):
        totals, series = usage_filtered(tenant_id=tenant_a.pk, start=start, end=end, period="day", narrow=narrow)
        rows = _matching(tenant_a, user=narrow.end_user, tag=narrow.tag, start=start, end=end)
        assert totals.requests == len(rows) and sum(s["requests"] for s in series) == len(rows)
        assert totals.cost == sum((r.cost for r in rows), Decimal(0))
        assert totals.saved_cost == sum((r.saved_cost for r in rows), Decimal(0))
        assert totals.errors == sum(1 for r in rows if r.status_code >= 400)
        assert totals.hits_exact == sum(1 for r in rows if r.cache_outcome == "exact")
        assert (totals.latency_p50, totals.latency_p95) == (_p(rows, 50), _p(rows, 95))
        assert (totals.ttft_p50, totals.ttft_p95) == (_p(rows, 50, "ttft_ms"), _p(rows, 95, "ttft_ms"))


def test_a_short_range_is_charted_by_hour_from_the_log(client, staff, logged, tenant_a):
    page = client.get("/admin/dashboard/", {"range": "custom", "start": "2026-11-02", "end": "2026-11-02",
                                            "tenant": tenant_a.pk, "tag": "eval"}).content.decode()
    rows = _matching(tenant_a, tag="eval", start=START + timedelta(days=1), end=START + timedelta(days=2))
    charts = _chart_data(page)
    assert charts["step"] == "hour" and sum(charts["requests"]) == len(rows)
    assert _money(sum((r.cost for r in rows), Decimal(0))) in page


def test_a_tenants_filter_never_shows_another_tenants_requests(client, staff, logged, tenant_a, tenant_b):
    # carol and the tag secret-b are globex's alone: narrowed to acme they find nothing.
    for narrow in ({"user": "carol"}, {"tag": "secret-b"}):
        page = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk, **narrow}).content.decode()
        assert '<div class="sy-value">0</div>' in page and "$0.0000" in page and "No requests in this range" in page
    # alice is a user of both: acme's view counts acme's alice only.
    page = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk, "user": "alice"}).content.decode()
    _check_page(page, _matching(tenant_a, user="alice"))
    assert _matching(tenant_b, user="alice")


def _href(page: str, marker: str) -> str:
    """The first link after ``marker``, as a query string to request."""
    link = page[page.index(marker):].split('href="', 1)[1]
    return link[:link.index('"')].replace("&amp;", "&")


def test_clicking_a_user_or_tag_applies_the_filter_and_clear_removes_it(client, staff, logged, tenant_a):
    page = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk}).content.decode()
    assert 'id="sy-filter"' not in page
    filtered = client.get("/admin/dashboard/" + _href(page, 'class="sy-user-filter"')).content.decode()
    name = filtered.split('id="sy-filter-user">', 1)[1].split("<", 1)[0]
    assert name in ("alice", "bob")
    _check_page(filtered, _matching(tenant_a, user=name))
    # A tag clicked under the user's filter narrows to both; clearing drops both.
    tags = filtered[filtered.index('id="sy-tags"'):]
    links = dict((text, href.replace("&amp;", "&")) for href, text in re.findall(
        r'class="sy-tag-filter" href="([^"]+)"[^>]*>([^<]+)</a>', tags))
    link = links["eval"]
    both = client.get("/admin/dashboard/" + link).content.decode()
    assert 'id="sy-filter-tag">eval<' in both and f'id="sy-filter-user">{name}<' in both
    _check_page(both, _matching(tenant_a, user=name, tag="eval"))
    cleared = client.get("/admin/dashboard/" + _href(both, 'id="sy-clear-filter"')).content.decode()
    assert 'id="sy-filter"' not in cleared
    assert f'<div class="sy-value">{RequestLog.objects.filter(tenant=tenant_a).count()}</div>' in cleared


def test_the_tenant_page_filters_its_own_requests_only(client, logged, tenant_a, tenant_b):
    user = get_user_model().objects.create_user("member", password="a-long-password-3")
    TenantMember.objects.create(user=user, tenant=tenant_a)
    assert client.login(username="member", password="a-long-password-3")
    page = client.get("/account/usage/", {**PARAMS, "user": "alice"}).content.decode()
    rows = _matching(tenant_a, user="alice")
    assert f"<h3>Requests</h3><div>{len(rows)}</div>" in page
    assert _money(sum((r.cost for r in rows), Decimal(0))) in page
    assert sum(_chart_data(page)["requests"]) == len(rows)
    assert 'id="sy-clear-filter"' in page
    for narrow in ({"user": "carol"}, {"tag": "secret-b"}, {"tenant": tenant_b.pk, "tag": "secret-b"}):
        page = client.get("/account/usage/", {**PARAMS, **narrow}).content.decode()
        assert "<h3>Requests</h3><div>0</div>" in page and "No requests in this range" in page
    # A tag link on the tenant page narrows to the tag.
    page = client.get("/account/usage/", PARAMS).content.decode()
    assert 'class="sy-tag-filter"' in page and "carol" not in page


def test_a_filter_value_of_any_length_or_shape_is_not_an_error(client, staff, logged, tenant_a):
    for narrow in ({"user": "x" * 5000}, {"tag": "'; DROP TABLE x; --"}, {"tag": "a,b"}, {"user": "\u00e9\u00e8"}):
        response = client.get("/admin/dashboard/", {**PARAMS, "tenant": tenant_a.pk, **narrow})
        assert response.status_code == 200 and '<div class="sy-value">0</div>' in response.content.decode()
