"""Rollup maintenance: sum new RequestLog rows into hourly and daily buckets (and the daily
attribution and filter rollups), exactly once.

Each run, in one transaction holding the watermark row's lock, adds the rows with ids in
(``last_id``, ``candidate_id``] to their buckets (``INSERT ... ON CONFLICT DO UPDATE`` adding
counts, sums and histograms) and moves the watermark, so a run that fails adds nothing and a
second run never adds a row twice. A late row (old ``created_at``, new id) lands in its old
bucket. See :class:`apps.reporting.models.RollupWatermark` for why a run stops at the previous
run's maximum id.
"""

from __future__ import annotations

from django.db import connection, transaction

from apps.reporting.models import LATENCY_BOUNDS_MS, RollupWatermark

_BOUNDS = "ARRAY[" + ",".join(str(float(b)) for b in LATENCY_BOUNDS_MS) + "]::float8[]"
def _histogram_sql(slot: str) -> str:
    """An array of HISTOGRAM_SIZE counts: element i counts the rows whose ``slot`` is i."""
    size = len(LATENCY_BOUNDS_MS) + 1
    return ("ARRAY[" + ", ".join(f"count(*) FILTER (WHERE {slot} = {i})" for i in range(size)) + "]::bigint[]")


_INSERT = f"""
INSERT INTO reporting_usagerollup AS r (
    period, bucket, tenant_id, api_key_id, model_name, cache_outcome, requests, errors, input_tokens,
    cached_tokens, cache_write_tokens, output_tokens, cost, saved_cost, routing_saved_cost, latency_ms_sum,
    ttft_ms_sum, ttft_count, overhead_ms_sum, latency_histogram, ttft_histogram)
SELECT %(period)s, bucket, tenant_id, api_key_id, model_name, cache_outcome, count(*),
       count(*) FILTER (WHERE status_code >= 400), sum(input_tokens), sum(cached_tokens),
       sum(cache_write_tokens), sum(output_tokens),
       sum(cost), sum(saved_cost), sum(routing_saved_cost), sum(latency_ms), coalesce(sum(ttft_ms), 0),
       count(ttft_ms), sum(overhead_ms),
       {_histogram_sql("latency_slot")}, {_histogram_sql("ttft_slot")}
FROM (
    SELECT date_trunc(%(trunc)s, created_at, 'UTC') AS bucket, tenant_id,
           CASE WHEN %(per_key)s THEN coalesce(api_key_id, 0) ELSE 0 END AS api_key_id,
           CASE WHEN %(per_key)s THEN model_used ELSE '' END AS model_name, cache_outcome, status_code,
           input_tokens, cached_tokens, cache_write_tokens, output_tokens, cost, saved_cost, routing_saved_cost,
           latency_ms, ttft_ms, overhead_ms,
           width_bucket(latency_ms, {_BOUNDS}) AS latency_slot,
           width_bucket(ttft_ms, {_BOUNDS}) AS ttft_slot
    FROM usage_requestlog WHERE id > %(low)s AND id <= %(high)s
) AS rows
GROUP BY bucket, tenant_id, api_key_id, model_name, cache_outcome
ON CONFLICT (period, bucket, tenant_id, api_key_id, model_name, cache_outcome) DO UPDATE SET
    requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens, cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens, cost = r.cost + EXCLUDED.cost,
    saved_cost = r.saved_cost + EXCLUDED.saved_cost,
    routing_saved_cost = r.routing_saved_cost + EXCLUDED.routing_saved_cost,
    latency_ms_sum = r.latency_ms_sum + EXCLUDED.latency_ms_sum,
    ttft_ms_sum = r.ttft_ms_sum + EXCLUDED.ttft_ms_sum, ttft_count = r.ttft_count + EXCLUDED.ttft_count,
    overhead_ms_sum = r.overhead_ms_sum + EXCLUDED.overhead_ms_sum,
    latency_histogram = ARRAY(SELECT a + b FROM unnest(r.latency_histogram, EXCLUDED.latency_histogram) AS h(a, b)),
    ttft_histogram = ARRAY(SELECT a + b FROM unnest(r.ttft_histogram, EXCLUDED.ttft_histogram) AS h(a, b))
"""  # noqa: S608  # nosec B608  # only constants are formatted in; values are parameters


# The same slice of the log by day, end user and tag set (apps.reporting.models.AttributionRollup).
_ATTRIBUTION = """
INSERT INTO reporting_attributionrollup AS r (
    bucket, tenant_id, end_user, tags, requests, errors, input_tokens, cached_tokens, output_tokens, cost, saved_cost)
SELECT date_trunc('day', created_at, 'UTC'), tenant_id, end_user, tags, count(*),
       count(*) FILTER (WHERE status_code >= 400), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       sum(cost), sum(saved_cost)
FROM usage_requestlog WHERE id > %(low)s AND id <= %(high)s
GROUP BY 1, tenant_id, end_user, tags
ON CONFLICT (bucket, tenant_id, end_user, tags) DO UPDATE SET
    requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens, cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens, cost = r.cost + EXCLUDED.cost,
    saved_cost = r.saved_cost + EXCLUDED.saved_cost
"""


# The same slice by day, end user and single tag (apps.reporting.models.FilterRollup): a request
# under each of its tags, and under "" when it names an end user.
FILTER_ROLLUP_SQL = f"""
INSERT INTO reporting_filterrollup AS r (
    bucket, tenant_id, end_user, tag, cache_outcome, requests, errors, input_tokens, cached_tokens,
    cache_write_tokens, output_tokens, cost, saved_cost, routing_saved_cost, latency_histogram, ttft_histogram)
SELECT bucket, tenant_id, end_user, tag, cache_outcome, count(*), count(*) FILTER (WHERE status_code >= 400),
       sum(input_tokens), sum(cached_tokens), sum(cache_write_tokens), sum(output_tokens), sum(cost),
       sum(saved_cost), sum(routing_saved_cost), {_histogram_sql("latency_slot")}, {_histogram_sql("ttft_slot")}
FROM (
    SELECT date_trunc('day', created_at, 'UTC') AS bucket, tenant_id, end_user,
           unnest(CASE WHEN end_user <> '' THEN array_prepend(''::varchar, tags) ELSE tags END) AS tag,
           cache_outcome, status_code, input_tokens, cached_tokens, cache_write_tokens, output_tokens, cost,
           saved_cost, routing_saved_cost,
           width_bucket(latency_ms, {_BOUNDS}) AS latency_slot, width_bucket(ttft_ms, {_BOUNDS}) AS ttft_slot
    FROM usage_requestlog WHERE id > %(low)s AND id <= %(high)s AND (end_user <> '' OR tags <> '{{}}')
) AS rows
GROUP BY bucket, tenant_id, end_user, tag, cache_outcome
ON CONFLICT (bucket, tenant_id, end_user, tag, cache_outcome) DO UPDATE SET
    requests = r.requests + EXCLUDED.requests, errors = r.errors + EXCLUDED.errors,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens, cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens, cost = r.cost + EXCLUDED.cost,
    saved_cost = r.saved_cost + EXCLUDED.saved_cost,
    routing_saved_cost = r.routing_saved_cost + EXCLUDED.routing_saved_cost,
    latency_histogram = ARRAY(SELECT a + b FROM unnest(r.latency_histogram, EXCLUDED.latency_histogram) AS h(a, b)),
    ttft_histogram = ARRAY(SELECT a + b FROM unnest(r.ttft_histogram, EXCLUDED.ttft_histogram) AS h(a, b))
"""  # noqa: S608  # nosec B608  # only constants are formatted in; values are parameters


@transaction.atomic
def usage_rollup(*, max_rows: int = 200_000) -> int:
    """Sum the next slice of RequestLog into the rollups; returns how many log rows it summed.

    A slice is at most ``max_rows`` rows, so a backlog (a restart after hours) is worked off in
    bounded transactions by consecutive runs."""
    mark, _ = RollupWatermark.objects.get_or_create(name="request_log")
    mark = RollupWatermark.objects.select_for_update().get(pk=mark.pk)
    low, high, summed = mark.last_id, mark.candidate_id, 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM usage_requestlog WHERE id > %s AND id <= %s ORDER BY id OFFSET %s LIMIT 1",
                       [low, high, max_rows - 1])
        row = cursor.fetchone()
        if row is not None:
            high = row[0]  # a slice of max_rows rows
        if high > low:
            for period, trunc, per_key in (("hour", "hour", True), ("day", "day", True), ("tday", "day", False)):
                cursor.execute(_INSERT, {"period": period, "trunc": trunc, "per_key": per_key, "low": low,
                                         "high": high})
            cursor.execute(_ATTRIBUTION, {"low": low, "high": high})
            cursor.execute(FILTER_ROLLUP_SQL, {"low": low, "high": high})
            cursor.execute("SELECT count(*) FROM usage_requestlog WHERE id > %s AND id <= %s", [low, high])
            summed = cursor.fetchone()[0]
            mark.last_id = high
        cursor.execute("SELECT coalesce(max(id), 0) FROM usage_requestlog")
        mark.candidate_id = max(cursor.fetchone()[0], mark.last_id)
    mark.save(update_fields=["last_id", "candidate_id", "updated_at"])
    return summed
