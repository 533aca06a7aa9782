"""The dashboard's chart axis: every bucket of the range, empty ones as zeros, and a long range
cut to the days (or months) that have requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from apps.reporting.charts import chart_data

DAY = datetime(2026, 11, 2, tzinfo=UTC)


def _row(bucket: datetime, *, cost: str = "0.25", hits: int = 1, lookups: int = 2) -> dict:
    return {"bucket": bucket, "requests": 3, "errors": 1, "cost": Decimal(cost), "saved_cost": Decimal("0.5"),
            "routing_saved_cost": Decimal("0.125"), "hits": hits, "lookups": lookups,
            "hit_rate": hits / lookups if lookups else 0.0}


def test_it_has_no_chart_for_a_range_without_requests():
    assert chart_data([], start=DAY, end=DAY + timedelta(days=7), period="day") is None


def test_it_puts_every_day_of_the_range_on_the_axis_with_zeros_for_empty_ones():
    data = chart_data([_row(DAY + timedelta(days=2))], start=DAY, end=DAY + timedelta(days=7), period="day")
    assert data["step"] == "day" and data["whole_range"]
    assert data["labels"] == ["Nov 2", "Nov 3", "Nov 4", "Nov 5", "Nov 6", "Nov 7", "Nov 8"]
    assert data["titles"][2] == "Wed 2026-11-04 (UTC)"
    assert data["spend"] == [0, 0, 0.25, 0, 0, 0, 0]
    assert data["cache_saved"][2] == 0.5 and data["routing_saved"][2] == 0.125
    assert data["hit_rate"] == [0, 0, 0.5, 0, 0, 0, 0] and data["lookups"][2] == 2 and data["errors"][2] == 1


def test_it_puts_every_hour_of_a_day_on_the_axis_and_names_the_day_at_its_first_hour():
    data = chart_data([_row(DAY + timedelta(hours=5))], start=DAY, end=DAY + timedelta(days=1), period="hour")
    assert data["step"] == "hour" and len(data["labels"]) == 24
    assert data["labels"][:2] == ["Nov 2", "01:00"] and data["labels"][23] == "23:00"
    assert data["titles"][5] == "Mon 2026-11-02 05:00 to 06:00 UTC"
    assert data["requests"] == [0] * 5 + [3] + [0] * 18


def test_it_spans_only_the_days_with_requests_in_a_very_long_range():
    rows = [_row(DAY), _row(DAY + timedelta(days=9))]
    data = chart_data(rows, start=datetime(1970, 1, 1, tzinfo=UTC), end=datetime(9999, 12, 31, tzinfo=UTC),
                      period="day")
    assert data["step"] == "day" and not data["whole_range"]
    assert len(data["labels"]) == 10 and data["labels"][0] == "Nov 2" and data["labels"][-1] == "Nov 11"


def test_it_sums_months_when_the_days_with_requests_are_too_many():
    rows = [_row(DAY, cost="1"), _row(DAY + timedelta(days=3), cost="2", hits=2, lookups=2),
            _row(datetime(2027, 6, 30, tzinfo=UTC), cost="4")]
    data = chart_data(rows, start=datetime(2000, 1, 1, tzinfo=UTC), end=datetime(2030, 1, 1, tzinfo=UTC),
                      period="day")
    assert data["step"] == "month" and not data["whole_range"]
    assert data["labels"][0] == "Nov 2026" and data["labels"][-1] == "Jun 2027" and len(data["labels"]) == 8
    assert data["titles"][1] == "December 2026"
    assert data["spend"] == [3.0, 0, 0, 0, 0, 0, 0, 4.0]
    assert data["requests"][0] == 6 and data["hit_rate"][0] == 0.75  # 3 hits of 4 lookups
