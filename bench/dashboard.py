"""The dashboard on a big request log, measured.

    python bench/dashboard.py [--rows 10000000] [--tenants 50] [--write docs/benchmarks.md]

1. Loads ``--rows`` request log rows spread over 30 days, ``--tenants`` tenants with five keys
   each and four models, end users, tags and sessions (``INSERT ... SELECT`` from
   ``generate_series`` in the database, so the load is minutes, not hours). Kept for the next
   run when the count matches (``bench/search.py`` shares it).
2. Rolls them up from scratch with the same service the Celery task runs, slice by slice, and
   reports rows summed per second: the rate the rollups can follow ingest at.
3. Times the dashboard page (server time, Django's test client in this process, staff user)
   for 30 days of all tenants and of one tenant, of one tenant filtered by end user, by tag and
   by both, and ``/v1/usage`` for one tenant.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import section_write  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")

MARK_START, MARK_END = "<!-- bench/dashboard.py:start -->", "<!-- bench/dashboard.py:end -->"


def _load(rows: int, tenants: int) -> float:
    from django.db import connection

    from apps.tenants.models import ApiKey, Tenant
    from apps.tenants.services import key_create, tenant_create

    ids = []
    for n in range(tenants):
        tenant = Tenant.objects.filter(slug=f"bench-dash-{n}").first() or tenant_create(
            name=f"Bench dashboard {n}", slug=f"bench-dash-{n}")
        keys = list(ApiKey.objects.filter(tenant=tenant).values_list("pk", flat=True))
        keys += [key_create(tenant=tenant, name=f"k{i}").api_key.pk for i in range(5 - len(keys))]
        ids.append((tenant.pk, keys[:5]))
    tenant_ids = [t for t, _ in ids]
    key_ids = [k for _, keys in ids for k in keys]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_requestlog WHERE tenant_id = ANY(%s)", [tenant_ids])
        if cursor.fetchone()[0] == rows:
            return 0.0
        cursor.execute("DELETE FROM usage_requestlog WHERE tenant_id = ANY(%s)", [tenant_ids])
        started = time.perf_counter()
        end = datetime.now(UTC)
        step = 1_000_000
        for offset in range(0, rows, step):
            cursor.execute(
                "INSERT INTO usage_requestlog (tenant_id, api_key_id, request_id, endpoint, requested_model, "
                "model_used, cache_outcome, input_tokens, cached_tokens, output_tokens, tokens_estimated, cost, "
                "saved_cost, latency_ms, ttft_ms, overhead_ms, is_stream, status_code, error_code, end_user, tags, "
                "session_id, created_at) "
                "SELECT (%(tenants)s::bigint[])[1 + n %% %(t)s], (%(keys)s::bigint[])[1 + n %% (%(t)s * 5)], "
                "'bench-' || n, '/v1/chat/completions', 'auto', "
                "(ARRAY['sim-mini', 'sim-standard', 'sim-premium', 'sim-embed'])[1 + (n / 7) %% 4], "
                "(ARRAY['miss', 'miss', 'exact', 'semantic', 'bypass'])[1 + (n / 3) %% 5], 200 + n %% 900, n %% 50, "
                "20 + n %% 400, false, (n %% 1000) * 0.000001, CASE WHEN n %% 5 IN (2, 3) THEN 0.0004 ELSE 0 END, "
                "5 + (n %% 997) * 1.3, 3 + (n %% 991) * 0.5, 0.1 + (n %% 13) * 0.01, n %% 2 = 0, "
                "CASE WHEN n %% 97 = 0 THEN 502 ELSE 200 END, '', "
                # Attribution as the search bench reads it: 3 in 4 rows name one of 2,000 end users
                # (each of one tenant), tag sets from none to two tags (a common one and one of 500
                # rarer ones), and 1 in 3 rows a session of ten requests.
                "CASE WHEN n %% 4 = 0 THEN '' ELSE 'user-' || n %% 2000 END, "
                "CASE n %% 3 WHEN 0 THEN '{}'::varchar[] WHEN 1 THEN ARRAY['prod']::varchar[] "
                "ELSE ARRAY['prod', 'team-' || n %% 500]::varchar[] END, "
                "CASE WHEN n %% 3 = 0 THEN 'sess-' || n / 30 ELSE '' END, "
                "%(end)s - (n::float8 / %(rows)s) * interval '30 days' "
                "FROM generate_series(%(low)s, %(high)s) AS n",
                {"tenants": tenant_ids, "keys": key_ids, "t": tenants, "rows": rows, "end": end,
                 "low": offset, "high": min(offset + step, rows) - 1})
            print(f"  loaded {min(offset + step, rows):,} rows", file=sys.stderr)
        cursor.execute("ANALYZE usage_requestlog")
    return time.perf_counter() - started


def _rollup_all() -> tuple[int, float]:
    from apps.reporting.models import AttributionRollup, FilterRollup, RollupWatermark, UsageRollup
    from apps.reporting.services import usage_rollup

    for rollup in (UsageRollup, AttributionRollup, FilterRollup):
        rollup.objects.all()._raw_delete(rollup.objects.db)
    RollupWatermark.objects.all().delete()
    usage_rollup()  # notes where the log ends
    started, summed = time.perf_counter(), 0
    while True:
        done = usage_rollup(max_rows=500_000)
        if not done:
            break
        summed += done
    elapsed = time.perf_counter() - started
    from django.db import connection

    with connection.cursor() as cursor:  # what autovacuum would do soon after
        cursor.execute("ANALYZE reporting_usagerollup")
        cursor.execute("ANALYZE reporting_filterrollup")
    return summed, elapsed


def _timed(client, path: str, params: dict, runs: int = 7, **headers) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path, params, **headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    return statistics.median(times[1:]), max(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from apps.tenants.models import Tenant
    from apps.tenants.services import key_create

    loaded = _load(args.rows, args.tenants)
    summed, rollup_seconds = _rollup_all()
    user = get_user_model().objects.filter(username="bench-operator").first() or get_user_model().objects.create_user(
        "bench-operator", password=os.urandom(16).hex(), is_staff=True)
    client = Client()
    client.force_login(user)
    one = Tenant.objects.get(slug="bench-dash-0")
    all_p50, all_max = _timed(client, "/admin/dashboard/", {"range": "30d"})
    one_p50, one_max = _timed(client, "/admin/dashboard/", {"range": "30d", "tenant": one.pk})
    # Filtered by an end user of that tenant (user-0: tenant 0), by a tag, and by both.
    user_p50, user_max = _timed(client, "/admin/dashboard/", {"range": "30d", "tenant": one.pk, "user": "user-0"})
    tag_p50, tag_max = _timed(client, "/admin/dashboard/", {"range": "30d", "tenant": one.pk, "tag": "prod"})
    both_p50, both_max = _timed(client, "/admin/dashboard/", {"range": "30d", "tenant": one.pk, "user": "user-50",
                                                              "tag": "team-50"})
    secret = key_create(tenant=one, name="bench-usage").secret
    api_p50, api_max = _timed(client, "/v1/usage", {"group_by": "model"}, HTTP_AUTHORIZATION=f"Bearer {secret}")
    rate = summed / rollup_seconds if rollup_seconds else 0.0
    body = "\n".join([
        "| measure | result |", "|---|---|",
        f"| request log rows (30 days, {args.tenants} tenants) | {args.rows:,}"
        + (f", loaded in {loaded:.0f} s |" if loaded else " (already loaded) |"),
        f"| rollup from scratch | {summed:,} rows in {rollup_seconds:.0f} s: {rate:,.0f} rows/s |",
        f"| dashboard, 30 days, all tenants (server time) | median {all_p50:.0f} ms, max {all_max:.0f} ms |",
        f"| dashboard, 30 days, one tenant | median {one_p50:.0f} ms, max {one_max:.0f} ms |",
        f"| dashboard, 30 days, one tenant, `user=` filter | median {user_p50:.0f} ms, max {user_max:.0f} ms |",
        f"| dashboard, 30 days, one tenant, `tag=` filter (a tag on 2 in 3 rows) | median {tag_p50:.0f} ms, "
        f"max {tag_max:.0f} ms |",
        f"| dashboard, 30 days, one tenant, `user=` and `tag=` | median {both_p50:.0f} ms, max {both_max:.0f} ms |",
        f"| `GET /v1/usage?group_by=model`, one tenant, 30 days | median {api_p50:.0f} ms, max {api_max:.0f} ms |",
        "", "| target | result | measured |", "|---|---|---|",
        f"| dashboard under 300 ms for 30 days of all tenants | {'PASS' if all_p50 < 300 else 'FAIL'} | "
        f"{all_p50:.0f} ms |",
        f"| rollups keep up with 1,000 requests/s of ingest | {'PASS' if rate >= 1000 else 'FAIL'} | "
        f"{rate:,.0f} rows/s |",
    ])
    print(body)
    if args.write:
        section = (f"{MARK_START}\n## Dashboard on a big log (`bench/dashboard.py`)\n\nCommand: `python "
                   f"bench/dashboard.py --rows {args.rows} --tenants {args.tenants} --write {args.write}`. Run "
                   f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, 15-minute load average "
                   f"{os.getloadavg()[2]:.1f} at the end (other work shared them).\n\n{body}\n{MARK_END}\n")
        section_write(args.write, "bench/dashboard.py", section)


if __name__ == "__main__":
    main()
