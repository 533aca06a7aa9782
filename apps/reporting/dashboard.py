"""The operators' dashboard at ``/admin/dashboard/``: spend, savings and cache hit rate for all
tenants or one, over today, 7 days, 30 days or a chosen range. Staff only (the admin's login).

It reads only the rollups (never the request log), daily buckets for ranges of more than two
days and hourly ones otherwise, and the learned routes of the range (their feedback and the
router's estimates: the quality that routing savings cost). The charts' figures go into the page
as JSON and Chart.js, served from the project's static files, draws them: nothing is fetched
from elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib import admin
from django.shortcuts import render
from django.utils.dateparse import parse_date
from django.utils.http import urlencode

from apps.limits.selectors import spend_current
from apps.reporting.charts import chart_data
from apps.reporting.selectors import (
    REPORT_EARLIEST,
    REPORT_LATEST,
    UsageFilter,
    attribution_grouped,
    usage_by_tenant,
    usage_filtered,
    usage_grouped,
    usage_series,
    usage_totals,
)
from apps.routing.selectors import learned_quality
from apps.tenants.models import ApiKey, Tenant

RANGES = {"today": "Today", "7d": "7 days", "30d": "30 days", "custom": "Custom"}


def _day(value: str | None) -> datetime | None:
    """UTC midnight of a date, None for anything else (a bad date falls back to the default range)."""
    try:
        day = parse_date(value or "")
    except ValueError:
        return None
    return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)


def _range(params, now: datetime) -> tuple[str, datetime, datetime]:
    choice = params.get("range") if params.get("range") in RANGES else "7d"
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if choice == "custom":
        start, end = _day(params.get("start")), _day(params.get("end"))
        # The end is the day after the last one shown, which must still be in the calendar.
        if start and end and REPORT_EARLIEST <= start <= end < REPORT_LATEST:
            return choice, start, end + timedelta(days=1)
        choice = "7d"
    days = {"today": 1, "7d": 7, "30d": 30}[choice]
    return choice, midnight - timedelta(days=days - 1), midnight + timedelta(days=1)


def usage_filter(params) -> UsageFilter:
    """The ``user=`` and ``tag=`` filters of a dashboard's query string (too long a value matches
    nothing, as no request carries it)."""
    return UsageFilter(end_user=(params.get("user") or "").strip()[:300], tag=(params.get("tag") or "").strip()[:120])


def filter_links(params, narrow: UsageFilter) -> dict:
    """The query strings that apply a user or tag filter (``user_link``/``tag_link`` + value) and
    clear it, keeping the rest of the page's choices."""
    kept = {name: params[name] for name in ("tenant", "range", "start", "end") if params.get(name)}
    return {
        "user_base": "?" + urlencode({**kept, **({"tag": narrow.tag} if narrow.tag else {})}),
        "tag_base": "?" + urlencode({**kept, **({"user": narrow.end_user} if narrow.end_user else {})}),
        "clear": "?" + urlencode(kept),
    }


def figures(*, tenant_id: int | None, start: datetime, end: datetime, period: str,
            narrow: UsageFilter) -> tuple:
    """The cards' totals and the charts' series, of every request or of the filter's only."""
    if narrow:
        return usage_filtered(tenant_id=tenant_id, start=start, end=end, period=period, narrow=narrow)
    return (usage_totals(tenant_id=tenant_id, start=start, end=end, period=period),
            usage_series(tenant_id=tenant_id, start=start, end=end, period=period))


def _link_rows(rows: list[dict], base: str, name: str) -> list[dict]:
    for row in rows:
        value = row["group"]
        row["link"] = f"{base}&{urlencode({name: value})}" if value and isinstance(value, str) else ""
    return rows


def _by_tenant(names: dict[int, str], params, *, start: datetime, end: datetime, period: str) -> list[dict]:
    """Every tenant's figures, each with a link to the dashboard narrowed to it."""
    rows = usage_by_tenant(start=start, end=end, period=period)
    kept = {name: params[name] for name in ("range", "start", "end") if params.get(name)}
    for row in rows:
        row["name"] = names.get(row["tenant_id"], f"tenant {row['tenant_id']}")
        row["link"] = "?" + urlencode({**kept, "tenant": row["tenant_id"]})
    return rows


def _tag_rows(rows: list[dict], base: str) -> list[dict]:
    """Each tag of each tag set as its own filter link."""
    for row in rows:
        row["tag_links"] = [(tag, f"{base}&{urlencode({'tag': tag})}") for tag in row["group"]]
    return rows


@admin.site.admin_view
def dashboard(request):
    now = datetime.now(UTC)
    choice, start, end = _range(request.GET, now)
    tenants = list(Tenant.objects.order_by("name").values_list("pk", "name"))
    try:
        tenant_id = int(request.GET.get("tenant") or 0) or None
    except ValueError:
        tenant_id = None
    if tenant_id not in {pk for pk, _ in tenants}:
        tenant_id = None
    period = "hour" if end - start <= timedelta(days=2) else "day"
    narrow = usage_filter(request.GET)
    links = filter_links(request.GET, narrow)
    totals, series = figures(tenant_id=tenant_id, start=start, end=end, period=period, narrow=narrow)
    by_model = usage_grouped(tenant_id=tenant_id, start=start, end=end, group_by="model", period=period)[:10]
    top_keys = usage_grouped(tenant_id=tenant_id, start=start, end=end, group_by="key", period=period)[:10]
    names = {pk: f"{prefix}… ({name}, {tenant})" for pk, prefix, name, tenant in ApiKey.objects.filter(
        pk__in=[row["group"] for row in top_keys]).values_list("pk", "prefix", "name", "tenant__name")}
    for row in top_keys:
        row["name"] = names.get(row["group"], "no key" if not row["group"] else f"deleted key {row['group']}")
    budgets = []
    with_budget = Tenant.objects.filter(budget_usd__isnull=False).order_by("name")
    for tenant in with_budget.filter(pk=tenant_id) if tenant_id else with_budget[:20]:
        spend = spend_current(tenant)
        if spend is not None:
            budgets.append({"tenant": tenant.name, "spend": spend})
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "ranges": RANGES, "choice": choice, "start": start.date(), "end": (end - timedelta(days=1)).date(),
        "tenants": tenants, "tenant_id": tenant_id, "totals": totals, "hit_rate": totals.hit_rate,
        "exact_rate": totals.hits_exact / max(totals.hits_exact + totals.hits_semantic + totals.misses, 1),
        "semantic_rate": totals.hits_semantic / max(totals.hits_exact + totals.hits_semantic + totals.misses, 1),
        "charts": chart_data(series, start=start, end=end, period=period),
        "narrow": narrow, "clear_link": links["clear"],
        "by_tenant": None if tenant_id or narrow else _by_tenant(dict(tenants), request.GET, start=start, end=end,
                                                       period=period),
        "by_model": by_model, "top_keys": top_keys, "period": period, "budgets": budgets,
        "savings_share": (totals.saved_cost / (totals.cost + totals.saved_cost)
                          if totals.cost + totals.saved_cost else Decimal(0)),
        "unrouted_cost": totals.cost + totals.routing_saved_cost,
        "learned": learned_quality(tenant_id=tenant_id, start=start, end=end),
        # One tenant's end users and tag sets (the attribution rollups, and the log for partial days).
        "by_user": _link_rows(attribution_grouped(tenant_id=tenant_id, start=start, end=end, group_by="user")[:20],
                              links["user_base"], "user") if tenant_id else None,
        "by_tags": _tag_rows(attribution_grouped(tenant_id=tenant_id, start=start, end=end, group_by="tags")[:20],
                             links["tag_base"]) if tenant_id else None,
    }
    return render(request, "admin/dashboard.html", context)
