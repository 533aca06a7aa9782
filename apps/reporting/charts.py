"""The dashboard's charts as data: one entry per bucket of a time axis, empty buckets as zeros.

The page draws them with Chart.js (``static/reporting/dashboard.js``) from this data, sent as
JSON in the page. The axis has every hour of a range of up to two days, every day of a longer
one up to ``MAX_DAYS``; a longer range (a custom one, up to the whole calendar) spans only the
days from the first to the last with requests, and months when those are still too many.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

MAX_DAYS = 92
SUMS = ("requests", "errors", "cost", "saved_cost", "routing_saved_cost", "hits", "lookups")


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(moment: datetime) -> datetime:
    return moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1)


def _steps(first: datetime, end: datetime, step: str) -> Iterator[datetime]:
    while first < end:
        yield first
        first = _next_month(first) if step == "month" else first + timedelta(**{f"{step}s": 1})


def _labels(bucket: datetime, step: str) -> tuple[str, str]:
    """The axis label and the tooltip's title of a bucket."""
    if step == "hour":
        title = f"{bucket:%a %Y-%m-%d %H}:00 to {bucket + timedelta(hours=1):%H}:00 UTC"
        # A day's first hour is labelled with the day, so that two days of hours read without a doubt.
        return (f"{bucket:%b} {bucket.day}" if bucket.hour == 0 else f"{bucket:%H}:00"), title
    if step == "day":
        return f"{bucket:%b} {bucket.day}", f"{bucket:%a %Y-%m-%d} (UTC)"
    return f"{bucket:%b %Y}", f"{bucket:%B %Y}"


def chart_data(series: list[dict], *, start: datetime, end: datetime, period: str) -> dict | None:
    """The per-bucket figures of ``series`` (from :func:`~apps.reporting.selectors.usage_series`
    over [start, end) with ``period``) on a full axis; None when the range has no rows."""
    if not series:
        return None
    step, first, last = period, start, end
    if period == "day" and end - start > timedelta(days=MAX_DAYS):
        first, last = series[0]["bucket"], series[-1]["bucket"] + timedelta(days=1)
        if last - first > timedelta(days=MAX_DAYS):
            step, first, last = "month", _month_start(first), _next_month(_month_start(series[-1]["bucket"]))
    buckets = list(_steps(first, last, step))
    index = {bucket: n for n, bucket in enumerate(buckets)}
    sums = {name: [0] * len(buckets) for name in SUMS}
    for row in series:
        n = index[_month_start(row["bucket"]) if step == "month" else row["bucket"]]
        for name in SUMS:
            sums[name][n] += row[name]
    labels = [_labels(bucket, step) for bucket in buckets]
    return {
        "step": step, "whole_range": (first, last) == (start, end),
        "labels": [label for label, _ in labels], "titles": [title for _, title in labels],
        "requests": sums["requests"], "errors": sums["errors"],
        # Dollars as numbers for the chart (the cards above show the exact sums).
        "spend": [float(value) for value in sums["cost"]],
        "cache_saved": [float(value) for value in sums["saved_cost"]],
        "routing_saved": [float(value) for value in sums["routing_saved_cost"]],
        "hits": sums["hits"], "lookups": sums["lookups"],
        "hit_rate": [hits / lookups if lookups else 0.0 for hits, lookups in zip(sums["hits"], sums["lookups"],
                                                                               strict=True)],
    }
