"""Windows and periods: the minute a rate limit counts in, the budget period a cost counts in.

Budget periods start at midnight in the scope's own time zone (day), on Monday (week) or on
the 1st (month); ``never`` is one period from the epoch on. Times are epoch seconds.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

NEVER_ENDS = math.inf


def minute_window(now: float) -> tuple[int, float]:
    """The minute ``now`` falls in (its number since the epoch) and when it ends."""
    window = int(now // 60)
    return window, (window + 1) * 60.0


def _midnight(day: date, tz: ZoneInfo) -> float:
    return datetime.combine(day, time(), tzinfo=tz).timestamp()


def period_bounds(period: str, tz: ZoneInfo, now: float) -> tuple[int, float]:
    """Start (epoch seconds, the period's id) and end of the budget period holding ``now``."""
    if period == "never":
        return 0, NEVER_ENDS
    today = datetime.fromtimestamp(now, tz).date()
    if period == "day":
        start, end = today, today + timedelta(days=1)
    elif period == "week":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return int(_midnight(start, tz)), _midnight(end, tz)
