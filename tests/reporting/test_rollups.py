"""Rollups equal a direct aggregate over the request log, late rows included, summed once."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from apps.reporting.models import HISTOGRAM_SIZE, LATENCY_BOUNDS_MS, UsageRollup
from apps.reporting.selectors import histogram_percentile, usage_grouped, usage_totals
from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog

START = datetime(2026, 11, 1, tzinfo=UTC)


def _logs(rng, tenants, keys, count, *, hours):
    rows = []
    for _ in range(count):
        index = rng.randrange(len(tenants))
        ttft = rng.choice([None, rng.uniform(0.5, 900)])
        rows.append(RequestLog(
            tenant=tenants[index], api_key=rng.choice([keys[index], None]), request_id=f"r{rng.random()}",
            model_used=rng.choice(["sim-mini", "sim-pro", ""]), cache_outcome=rng.choice(["miss", "exact", "semantic",
                                                                                          "bypass"]),
            input_tokens=rng.randrange(0, 5000), cached_tokens=rng.randrange(0, 100),
            cache_write_tokens=rng.choice([0, rng.randrange(0, 300)]), output_tokens=rng.randrange(500),
            cost=Decimal(rng.randrange(0, 10**7)) / Decimal(10**9), saved_cost=Decimal(rng.randrange(0, 10**6)) / 10**9,
            routing_saved_cost=Decimal(rng.randrange(0, 10**6)) / 10**9,
            latency_ms=rng.choice([0.3, 1.0, rng.uniform(0, 3000), 200000.0]), ttft_ms=ttft,
            overhead_ms=rng.uniform(0, 5), status_code=rng.choice([200, 200, 200, 429, 502]),
            created_at=START + timedelta(hours=rng.uniform(0, hours))))
    RequestLog.objects.bulk_create(rows)


def _direct(period: str) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT date_trunc(%s, created_at, 'UTC'), tenant_id, coalesce(api_key_id, 0), model_used, cache_outcome, "
            "count(*), count(*) FILTER (WHERE status_code >= 400), sum(input_tokens), sum(cached_tokens), "
            "sum(cache_write_tokens), sum(output_tokens), sum(cost), sum(saved_cost), sum(routing_saved_cost), "
            "count(ttft_ms) "
            "FROM usage_requestlog GROUP BY 1, 2, 3, 4, 5", [period])
        return {tuple(row[:5]): tuple(row[5:]) for row in cursor.fetchall()}


def _rolled(period: str) -> dict:
    return {(r.bucket, r.tenant_id, r.api_key_id, r.model_name, r.cache_outcome):
            (r.requests, r.errors, r.input_tokens, r.cached_tokens, r.cache_write_tokens, r.output_tokens, r.cost,
             r.saved_cost, r.routing_saved_cost, r.ttft_count)
            for r in UsageRollup.objects.filter(period=period)}


def _settle() -> None:
    """Two runs: the first notes the log's end, the second sums up to it."""
    usage_rollup()
    usage_rollup()


@pytest.mark.django_db(transaction=True)
def test_it_matches_a_direct_aggregate_including_late_rows(tenant_a, tenant_b, key_a, key_b):
    rng = random.Random(7)
    tenants, keys = [tenant_a, tenant_b], [key_a.api_key, key_b.api_key]
    _logs(rng, tenants, keys, 3000, hours=50)
    _settle()
    assert _rolled("hour") == _direct("hour")
    # Late rows: written after their hours were summed, stamped in those old hours.
    _logs(rng, tenants, keys, 500, hours=50)
    _settle()
    for period in ("hour", "day"):
        assert _rolled(period) == _direct(period)
    # The per-tenant days are the per-key days summed over keys and models.
    per_tenant: dict = {}
    for (bucket, tenant, _key, _model, outcome), values in _direct("day").items():
        total = per_tenant.setdefault((bucket, tenant, 0, "", outcome), [0] * len(values))
        per_tenant[(bucket, tenant, 0, "", outcome)] = [a + b for a, b in zip(total, values, strict=True)]
    assert _rolled("tday") == {k: tuple(v) for k, v in per_tenant.items()}
    # More runs with nothing new change nothing.
    before = _rolled("day")
    _settle()
    assert _rolled("day") == before
    assert sum(r.requests for r in UsageRollup.objects.filter(period="day")) == 3500


@pytest.mark.django_db(transaction=True)
def test_it_never_sums_past_what_the_previous_run_saw(tenant_a, key_a):
    rng = random.Random(8)
    _logs(rng, [tenant_a], [key_a.api_key], 10, hours=1)
    assert usage_rollup() == 0  # the first run only notes where the log ends
    _logs(rng, [tenant_a], [key_a.api_key], 5, hours=1)
    assert usage_rollup() == 10
    assert usage_rollup() == 5


@pytest.mark.django_db(transaction=True)
def test_it_works_off_a_backlog_in_bounded_slices(tenant_a, key_a):
    _logs(random.Random(9), [tenant_a], [key_a.api_key], 250, hours=3)
    usage_rollup(max_rows=100)
    assert [usage_rollup(max_rows=100) for _ in range(3)] == [100, 100, 50]
    assert _rolled("hour") == _direct("hour")


@pytest.mark.django_db(transaction=True)
def test_it_keeps_percentiles_within_their_histogram_bucket(tenant_a, tenant_b, key_a, key_b):
    rng = random.Random(10)
    _logs(rng, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], 2000, hours=24)
    _settle()
    end = START + timedelta(days=2)
    for tenant in (tenant_a, tenant_b):
        latencies = sorted(RequestLog.objects.filter(tenant=tenant).values_list("latency_ms", flat=True))
        totals = usage_totals(tenant_id=tenant.pk, start=START, end=end)
        for q, reported in ((50, totals.latency_p50), (95, totals.latency_p95)):
            true = latencies[min(int(q / 100 * len(latencies)), len(latencies) - 1)]
            # the estimate lies in the bucket of the true percentile
            lower = max([0.0] + [b for b in LATENCY_BOUNDS_MS if b <= true])
            upper = min([b for b in LATENCY_BOUNDS_MS if b > true], default=None)
            assert lower <= reported <= (upper if upper is not None else lower), (q, true, reported)
        assert totals.requests == len(latencies)


@pytest.mark.django_db(transaction=True)
def test_it_reports_each_tenant_only_its_own_figures(tenant_a, tenant_b, key_a, key_b):
    rng = random.Random(11)
    _logs(rng, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], 600, hours=30)
    _settle()
    end = START + timedelta(days=3)
    for tenant in (tenant_a, tenant_b):
        own = RequestLog.objects.filter(tenant=tenant)
        totals = usage_totals(tenant_id=tenant.pk, start=START, end=end)
        assert totals.requests == own.count()
        assert totals.cost == sum((r.cost for r in own), Decimal(0))
        by_key = usage_grouped(tenant_id=tenant.pk, start=START, end=end, group_by="key")
        other_key = (key_b if tenant == tenant_a else key_a).api_key.pk
        assert other_key not in {row["group"] for row in by_key}
        days = usage_grouped(tenant_id=tenant.pk, start=START, end=end, group_by="day")
        assert sum(row["requests"] for row in days) == own.count()
    everyone = usage_totals(tenant_id=None, start=START, end=end)
    assert everyone.requests == 600


def test_it_reads_percentiles_from_a_histogram():
    histogram = [0] * HISTOGRAM_SIZE
    assert histogram_percentile(histogram, 50) is None
    histogram[3] = 90  # [5, 10) ms
    histogram[8] = 10  # [200, 300) ms
    assert histogram_percentile(histogram, 50) == 7.8  # 45 of the bucket's 90, linearly: 5 + 5 * 45 / 90
    assert histogram_percentile(histogram, 95) == 250.0  # 5 of the 10 in [200, 300)
    assert histogram_percentile(histogram, 100) == 300.0
    histogram[-1] = 1000  # beyond the last bound: reported as that bound
    assert histogram_percentile(histogram, 95) == float(LATENCY_BOUNDS_MS[-1])


def test_it_is_run_by_a_real_celery_worker(celery_worker, tenant_a, key_a):
    import time

    from apps.reporting.tasks import rollup

    _logs(random.Random(12), [tenant_a], [key_a.api_key], 40, hours=2)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and sum(r.requests for r in UsageRollup.objects.filter(period="day")) < 40:
        assert celery_worker.poll() is None, "the worker died"
        rollup.delay()
        time.sleep(0.5)
    assert _rolled("day") == _direct("day")
