"""Reads of the rollups, always scoped to one tenant or explicitly to all (staff views)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import F, Sum

from apps.reporting.models import HISTOGRAM_SIZE, LATENCY_BOUNDS_MS, UsageRollup

# The moments a report may ask about: from before any request log to a day short of the end of
# Python's calendar, so that any of them, with any UTC offset, has a UTC datetime.
REPORT_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
REPORT_LATEST = datetime(9999, 12, 31, tzinfo=UTC)

GROUPS = {"model": "model_name", "key": "api_key_id", "day": "bucket", "outcome": "cache_outcome"}
# Groupings read from the attribution rollups (days) and, for a range's partial days, the log.
ATTRIBUTION_GROUPS = {"user": "end_user", "tags": "tags"}
_ATTRIBUTION_SUMS = ("requests", "errors", "input_tokens", "cached_tokens", "output_tokens", "cost", "saved_cost")


def histogram_percentile(histogram: list[int], q: float) -> float | None:
    """The q-th percentile read from a histogram (None for no rows): in the bucket that holds it,
    interpolated linearly between the bucket's bounds by the rank's place among the bucket's
    requests (as Prometheus' ``histogram_quantile`` does). Always inside the true percentile's
    bucket; a percentile in the open last bucket is reported as its lower bound."""
    total = sum(histogram)
    if not total:
        return None
    rank, seen = q / 100 * total, 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            lower = float(LATENCY_BOUNDS_MS[index - 1]) if index else 0.0
            if index >= len(LATENCY_BOUNDS_MS):
                return lower
            share = max(rank - seen, 0) / count
            return round(lower + (LATENCY_BOUNDS_MS[index] - lower) * share, 1)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    errors: int
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    cost: Decimal
    saved_cost: Decimal
    routing_saved_cost: Decimal
    hits_exact: int
    hits_semantic: int
    misses: int
    latency_p50: float | None
    latency_p95: float | None
    ttft_p50: float | None
    ttft_p95: float | None

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits_exact + self.hits_semantic + self.misses
        return (self.hits_exact + self.hits_semantic) / looked_up if looked_up else 0.0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests, "errors": self.errors, "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens, "output_tokens": self.output_tokens, "cost": str(self.cost),
            "saved_cost": str(self.saved_cost), "routing_saved_cost": str(self.routing_saved_cost),
            "cache_hits_exact": self.hits_exact,
            "cache_hits_semantic": self.hits_semantic, "cache_misses": self.misses,
            "cache_hit_rate": round(self.hit_rate, 4), "latency_ms_p50": self.latency_p50,
            "latency_ms_p95": self.latency_p95, "ttft_ms_p50": self.ttft_p50, "ttft_ms_p95": self.ttft_p95,
        }


def _rollups(*, tenant_id: int | None, start: datetime, end: datetime, period: str):
    rows = UsageRollup.objects.filter(period=period, bucket__gte=start, bucket__lt=end)
    return rows if tenant_id is None else rows.filter(tenant_id=tenant_id)


def _where(tenant_id: int | None, start: datetime, end: datetime, period: str) -> tuple[str, list]:
    where, params = "period = %s AND bucket >= %s AND bucket < %s", [period, start, end]
    if tenant_id is not None:
        where += " AND tenant_id = %s"
        params.append(tenant_id)
    return where, params


def _histogram_sums(column: str) -> str:
    """SQL summing a histogram column element by element (one pass, no unnest)."""
    return ", ".join(f"coalesce(sum({column}[{i}]), 0)" for i in range(1, HISTOGRAM_SIZE + 1))


def _totals_period(period: str) -> str:
    # Totals and series need no key or model: whole days come from the per-tenant daily rows.
    return "tday" if period == "day" else period


def usage_totals(*, tenant_id: int | None, start: datetime, end: datetime, period: str = "hour") -> UsageTotals:
    """Totals over [start, end) for one tenant (or all when ``tenant_id`` is None), summed in
    the database in one scan of the rollups."""
    where, params = _where(tenant_id, start, end, _totals_period(period))  # constant SQL, values as parameters
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(errors), 0), coalesce(sum(input_tokens), 0), "  # noqa: S608  # nosec B608
            "coalesce(sum(cached_tokens), 0), coalesce(sum(cache_write_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cost), 0), "
            "coalesce(sum(saved_cost), 0), coalesce(sum(routing_saved_cost), 0), "
            "coalesce(sum(requests) FILTER (WHERE cache_outcome = 'exact'), 0), "
            "coalesce(sum(requests) FILTER (WHERE cache_outcome = 'semantic'), 0), "
            "coalesce(sum(requests) FILTER (WHERE cache_outcome = 'miss'), 0), "
            f"{_histogram_sums('latency_histogram')}, {_histogram_sums('ttft_histogram')} "
            f"FROM reporting_usagerollup WHERE {where}", params)
        row = cursor.fetchone()
    (requests, errors, input_tokens, cached_tokens, cache_write_tokens, output_tokens, cost, saved, routing_saved,
     exact, semantic, misses) = row[:12]
    latency = [int(n) for n in row[12:12 + HISTOGRAM_SIZE]]
    ttft = [int(n) for n in row[12 + HISTOGRAM_SIZE:]]
    return UsageTotals(
        requests=int(requests), errors=int(errors), input_tokens=int(input_tokens), cached_tokens=int(cached_tokens),
        cache_write_tokens=int(cache_write_tokens), output_tokens=int(output_tokens), cost=Decimal(cost),
        saved_cost=Decimal(saved),
        routing_saved_cost=Decimal(routing_saved), hits_exact=int(exact),
        hits_semantic=int(semantic), misses=int(misses),
        latency_p50=histogram_percentile(latency, 50), latency_p95=histogram_percentile(latency, 95),
        ttft_p50=histogram_percentile(ttft, 50), ttft_p95=histogram_percentile(ttft, 95),
    )


def usage_series(*, tenant_id: int | None, start: datetime, end: datetime, period: str) -> list[dict]:
    """Per bucket that has rows: requests, errors, cost, savings by the cache and by routing,
    cache hits, cache lookups and hit rate, oldest first."""
    where, params = _where(tenant_id, start, end, _totals_period(period))  # constant SQL, values as parameters
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT bucket, sum(requests), sum(errors), sum(cost), sum(saved_cost), sum(routing_saved_cost), "  # noqa: S608  # nosec B608
            f"{_LOOKUPS} FROM reporting_usagerollup WHERE {where} GROUP BY bucket ORDER BY bucket", params)
        rows = cursor.fetchall()
    return [{"bucket": bucket, **_figures(*figures)} for bucket, *figures in rows]


def usage_by_tenant(*, start: datetime, end: datetime, period: str) -> list[dict]:
    """Per tenant with rows in [start, end): the figures of :func:`usage_series`, largest spend
    first. Every tenant's figures: for staff views only."""
    where, params = _where(None, start, end, _totals_period(period))  # constant SQL, values as parameters
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tenant_id, sum(requests), sum(errors), sum(cost), sum(saved_cost), sum(routing_saved_cost), "  # noqa: S608  # nosec B608
            f"{_LOOKUPS} FROM reporting_usagerollup WHERE {where} GROUP BY tenant_id "
            "ORDER BY sum(cost) DESC, tenant_id", params)
        rows = cursor.fetchall()
    return [{"tenant_id": tenant_id, **_figures(*figures)} for tenant_id, *figures in rows]


# Cache hits, and lookups (hits and misses: a bypass or a refusal looked nothing up).
_LOOKUPS = ("coalesce(sum(requests) FILTER (WHERE cache_outcome IN ('exact', 'semantic')), 0), "
            "coalesce(sum(requests) FILTER (WHERE cache_outcome IN ('exact', 'semantic', 'miss')), 0)")


def _figures(requests, errors, cost, saved, routing_saved, hits, looked_up) -> dict:
    # Postgres sums bigints as numeric: counts are made ints, and the rate a float, here.
    return {"requests": int(requests), "errors": int(errors), "cost": Decimal(cost), "saved_cost": Decimal(saved),
            "routing_saved_cost": Decimal(routing_saved), "hits": int(hits), "lookups": int(looked_up),
            "hit_rate": int(hits) / int(looked_up) if looked_up else 0.0}


def usage_grouped(*, tenant_id: int | None, start: datetime, end: datetime, group_by: str,
                  period: str = "hour") -> list[dict]:
    """Requests, tokens, cost and savings per model, key, day or cache outcome, largest cost first
    (days in order)."""
    # Days are read from the daily rollups; everything else from whichever period was asked.
    rows = _rollups(tenant_id=tenant_id, start=start, end=end, period="day" if group_by == "day" else period)
    grouped = rows.annotate(group=F(GROUPS[group_by])).values("group").annotate(
        requests=Sum("requests"), errors=Sum("errors"), input_tokens=Sum("input_tokens"),
        cached_tokens=Sum("cached_tokens"), cache_write_tokens=Sum("cache_write_tokens"),
        output_tokens=Sum("output_tokens"), cost=Sum("cost"),
        saved_cost=Sum("saved_cost"), routing_saved_cost=Sum("routing_saved_cost"))
    return list(grouped.order_by("group") if group_by == "day" else grouped.order_by("-cost", "group"))


def _day_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def attribution_grouped(*, tenant_id: int, start: datetime, end: datetime, group_by: str) -> list[dict]:
    """One tenant's requests, tokens, cost and savings per end user or per tag set in
    [start, end), largest cost first. Whole days come from the attribution rollups; the partial
    days at either end of the range from the log itself (at most two days of one tenant's rows,
    on its (tenant, time) index), so any range is exact. Every request counts once: the groups
    sum to the tenant's totals."""
    column = ATTRIBUTION_GROUPS[group_by]
    sums = ", ".join(f"sum({name})" for name in _ATTRIBUTION_SUMS)
    first = _day_floor(start) if start == _day_floor(start) else _day_floor(start) + timedelta(days=1)
    last = _day_floor(end)
    parts: list[tuple[str, list]] = []
    if first < last:
        # Only constants are formatted in (the column is from ATTRIBUTION_GROUPS); values are parameters.
        parts.append((f"SELECT {column}, {sums} FROM reporting_attributionrollup "  # noqa: S608  # nosec B608
                      "WHERE tenant_id = %s AND bucket >= %s AND bucket < %s GROUP BY 1", [tenant_id, first, last]))
        edges = [(start, first), (last, end)]
    else:
        edges = [(start, end)]
    log_sums = ("count(*), count(*) FILTER (WHERE status_code >= 400), sum(input_tokens), sum(cached_tokens), "
                "sum(output_tokens), sum(cost), sum(saved_cost)")
    for low, high in edges:
        if low < high:
            parts.append((f"SELECT {column}, {log_sums} FROM usage_requestlog "  # noqa: S608  # nosec B608
                          "WHERE tenant_id = %s AND created_at >= %s AND created_at < %s GROUP BY 1",
                          [tenant_id, low, high]))
    merged: dict = {}
    with connection.cursor() as cursor:
        for statement, params in parts:
            cursor.execute(statement, params)
            for group, *figures in cursor.fetchall():
                group = tuple(group) if isinstance(group, list) else group
                row = merged.setdefault(group, [0, 0, 0, 0, 0, Decimal(0), Decimal(0)])
                for index, value in enumerate(figures):
                    row[index] += value or 0
    rows = [{"group": list(group) if isinstance(group, tuple) else group,
             **{name: (Decimal(value) if name in ("cost", "saved_cost") else int(value))
                for name, value in zip(_ATTRIBUTION_SUMS, figures, strict=True)}}
            for group, figures in merged.items()]
    rows.sort(key=lambda row: (-row["cost"], str(row["group"])))
    return rows


@dataclass(frozen=True)
class UsageFilter:
    """The dashboard's narrowing to one end user, one tag (rows whose tag set holds it), or both."""

    end_user: str = ""
    tag: str = ""

    def __bool__(self) -> bool:
        return bool(self.end_user or self.tag)


# Per (bucket, cache outcome): the sums of a FilterRollup row, histograms last.
_FILTER_SUMS = ("sum(requests), sum(errors), sum(input_tokens), sum(cached_tokens), sum(cache_write_tokens), "
                "sum(output_tokens), sum(cost), sum(saved_cost), sum(routing_saved_cost), "
                f"ARRAY[{_histogram_sums('latency_histogram')}], ARRAY[{_histogram_sums('ttft_histogram')}]")


def _log_histogram(column: str) -> str:
    slot = f"width_bucket({column}, ARRAY[{','.join(str(float(b)) for b in LATENCY_BOUNDS_MS)}]::float8[])"
    return "ARRAY[" + ", ".join(f"count(*) FILTER (WHERE {slot} = {i})" for i in range(HISTOGRAM_SIZE)) + "]"


_LOG_SUMS = ("count(*), count(*) FILTER (WHERE status_code >= 400), sum(input_tokens), sum(cached_tokens), "
             "sum(cache_write_tokens), sum(output_tokens), sum(cost), sum(saved_cost), sum(routing_saved_cost), "
             f"{_log_histogram('latency_ms')}, {_log_histogram('ttft_ms')}")


def _filtered_parts(*, tenant_id: int | None, start: datetime, end: datetime, period: str,
                    narrow: UsageFilter) -> list[tuple[str, list]]:
    """The statements whose rows are (bucket, cache outcome, sums...): whole days from the filter
    rollups when ``period`` is "day", the rest (partial days at the ends, or every hour of a short
    range) from the log on its end-user or tag index."""
    parts: list[tuple[str, list]] = []
    if period == "day":
        first = _day_floor(start) if start == _day_floor(start) else _day_floor(start) + timedelta(days=1)
        last = _day_floor(end)
    else:
        first = last = start
    if first < last:
        where, params = "bucket >= %s AND bucket < %s", [first, last]
        if tenant_id is not None:
            where += " AND tenant_id = %s"
            params.append(tenant_id)
        # A user alone reads its "" rows (each request once); a tag, with or without a user, its own.
        if narrow.end_user:
            where += " AND end_user = %s AND tag = %s"
            params += [narrow.end_user, narrow.tag]
        else:
            where += " AND tag = %s"
            params.append(narrow.tag)
        parts.append((f"SELECT bucket, cache_outcome, {_FILTER_SUMS} FROM reporting_filterrollup "  # noqa: S608  # nosec B608
                      f"WHERE {where} GROUP BY 1, 2", params))
        edges = [(start, first), (last, end)]
    else:
        edges = [(start, end)]
    trunc = "day" if period == "day" else "hour"
    for low, high in edges:
        if low >= high:
            continue
        where, params = "created_at >= %s AND created_at < %s", [low, high]
        if tenant_id is not None:
            where += " AND tenant_id = %s"
            params.append(tenant_id)
        if narrow.end_user:
            where += " AND end_user = %s AND end_user <> ''"
            params.append(narrow.end_user)
        if narrow.tag:
            where += " AND tags @> ARRAY[%s]::varchar[] AND tags <> '{}'"
            params.append(narrow.tag)
        parts.append((f"SELECT date_trunc('{trunc}', created_at, 'UTC'), cache_outcome, {_LOG_SUMS} "  # noqa: S608  # nosec B608
                      f"FROM usage_requestlog WHERE {where} GROUP BY 1, 2", params))
    return parts


def usage_filtered(*, tenant_id: int | None, start: datetime, end: datetime, period: str,
                   narrow: UsageFilter) -> tuple[UsageTotals, list[dict]]:
    """:func:`usage_totals` and :func:`usage_series` of the requests of one end user and/or tag
    only, in one pass: whole days from :class:`~apps.reporting.models.FilterRollup`, partial days
    (and the hours of a range of up to two days) from the log."""
    buckets: dict[datetime, list] = {}
    sums = {"requests": 0, "errors": 0, "input_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0,
            "output_tokens": 0, "cost": Decimal(0), "saved_cost": Decimal(0), "routing_saved_cost": Decimal(0),
            "exact": 0, "semantic": 0, "miss": 0}
    latency, ttft = [0] * HISTOGRAM_SIZE, [0] * HISTOGRAM_SIZE
    with connection.cursor() as cursor:
        for statement, params in _filtered_parts(tenant_id=tenant_id, start=start, end=end, period=period,
                                                 narrow=narrow):
            cursor.execute(statement, params)
            for (bucket, outcome, requests, errors, input_tokens, cached_tokens, cache_write_tokens, output_tokens,
                 cost, saved, routing_saved, lat, first_token) in cursor.fetchall():
                requests, cost, saved, routing_saved = int(requests), Decimal(cost or 0), Decimal(saved or 0), \
                    Decimal(routing_saved or 0)
                for name, value in (("requests", requests), ("errors", int(errors)),
                                    ("input_tokens", int(input_tokens or 0)),
                                    ("cached_tokens", int(cached_tokens or 0)),
                                    ("cache_write_tokens", int(cache_write_tokens or 0)),
                                    ("output_tokens", int(output_tokens or 0)), ("cost", cost), ("saved_cost", saved),
                                    ("routing_saved_cost", routing_saved)):
                    sums[name] += value
                if outcome in ("exact", "semantic", "miss"):
                    sums[outcome] += requests
                latency = [a + int(b) for a, b in zip(latency, lat, strict=True)]
                ttft = [a + int(b) for a, b in zip(ttft, first_token, strict=True)]
                row = buckets.setdefault(bucket, [0, 0, Decimal(0), Decimal(0), Decimal(0), 0, 0])
                hits = requests if outcome in ("exact", "semantic") else 0
                looked_up = requests if outcome in ("exact", "semantic", "miss") else 0
                for index, value in enumerate((requests, int(errors), cost, saved, routing_saved, hits, looked_up)):
                    row[index] += value
    result = UsageTotals(
        requests=sums["requests"], errors=sums["errors"], input_tokens=sums["input_tokens"],
        cached_tokens=sums["cached_tokens"], cache_write_tokens=sums["cache_write_tokens"],
        output_tokens=sums["output_tokens"], cost=sums["cost"], saved_cost=sums["saved_cost"],
        routing_saved_cost=sums["routing_saved_cost"], hits_exact=sums["exact"], hits_semantic=sums["semantic"],
        misses=sums["miss"], latency_p50=histogram_percentile(latency, 50),
        latency_p95=histogram_percentile(latency, 95), ttft_p50=histogram_percentile(ttft, 50),
        ttft_p95=histogram_percentile(ttft, 95))
    series = [{"bucket": bucket, **_figures(*figures)} for bucket, figures in sorted(buckets.items())]
    return result, series
