"""What learned routing did over a period, and at what quality: the dashboard's honest savings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection


@dataclass(frozen=True, slots=True)
class LearnedModelRow:
    model: str
    requests: int
    explored: int
    rated: int
    mean_score: float | None  # measured: the feedback on this model's routed answers
    mean_estimate: float | None  # the router's estimate, for the answers without feedback


@dataclass(frozen=True, slots=True)
class LearnedQuality:
    rows: list[LearnedModelRow]
    requests: int
    rated: int
    mean_score: float | None
    unrated_estimate: float | None
    # Per answer, its feedback where there is some and the router's estimate otherwise, summed,
    # against the router's estimate for the best candidate on the same prompts.
    kept: float | None


def learned_quality(*, tenant_id: int | None, start: datetime, end: datetime) -> LearnedQuality:
    """Per model a learned rule chose, over [start, end): requests, explorations, the measured
    quality where feedback exists and the router's estimate where it does not."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT model_name, count(*), count(*) FILTER (WHERE explored), count(score), avg(score), "
            "avg(estimate) FILTER (WHERE score IS NULL), "
            "sum(coalesce(score, estimate)) FILTER (WHERE best_estimate IS NOT NULL "
            "  AND coalesce(score, estimate) IS NOT NULL), "
            "sum(best_estimate) FILTER (WHERE coalesce(score, estimate) IS NOT NULL), "
            "sum(score), sum(estimate) FILTER (WHERE score IS NULL), count(estimate) FILTER (WHERE score IS NULL) "
            "FROM routing_routeoutcome WHERE (%s::bigint IS NULL OR tenant_id = %s) "
            "AND created_at >= %s AND created_at < %s GROUP BY model_name ORDER BY count(*) DESC",
            [tenant_id, tenant_id, start, end])
        raw = cursor.fetchall()
    rows = [LearnedModelRow(name, n, explored, rated, score, estimate)
            for name, n, explored, rated, score, estimate, *_ in raw]
    requests = sum(row.requests for row in rows)
    rated = sum(row.rated for row in rows)
    score_sum = sum(r[8] or 0.0 for r in raw)
    estimate_sum, estimated = sum(r[9] or 0.0 for r in raw), sum(r[10] for r in raw)
    got, best = sum(r[6] or 0.0 for r in raw), sum(r[7] or 0.0 for r in raw)
    return LearnedQuality(rows=rows, requests=requests, rated=rated,
                          mean_score=score_sum / rated if rated else None,
                          unrated_estimate=estimate_sum / estimated if estimated else None,
                          kept=got / best if best > 0 else None)
