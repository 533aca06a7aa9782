"""The request log's admin searches and filters are each served by an index (bench/search.py
measures them on 10 million rows; here the plans are checked on a small log, with sequential
scans priced out so the planner shows which index it would use), and a search narrowed to one
tenant finds that tenant's rows only."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from apps.usage.admin import RequestLogAdmin
from apps.usage.models import RequestLog


@pytest.fixture
def logged(db, tenant_a, tenant_b, key_a, key_b):
    rows = []
    for n in range(400):
        tenant, key = ((tenant_a, key_a), (tenant_b, key_b))[n % 2]
        rows.append(RequestLog(tenant=tenant, api_key=key.api_key, request_id=f"s{n}", model_used="sim-mini",
                               cost=Decimal("0.001"), status_code=502 if n % 10 == 0 else 200,
                               error_code="upstream_error" if n % 10 == 0 else "",
                               end_user=f"user-{n % 4}", tags=["eval"] if n % 3 == 0 else []))
    RequestLog.objects.bulk_create(rows)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE usage_requestlog")


def _plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.parametrize(("filters", "index"), [
    ({"status_code": 502}, "request_log_status_error"),
    ({"status_code__gte": 500, "status_code__lt": 600}, "request_log_status_error"),
    ({"end_user": "user-1"}, "request_log_end_user_tenant"),
    ({"error_code": "upstream_error"}, "request_log_error_code"),
])
def test_each_filter_is_served_by_an_index(logged, filters, index):
    queryset = RequestLog.objects.filter(**filters)
    if "end_user" in filters:
        queryset = queryset.exclude(end_user="")
    if "error_code" in filters:
        queryset = queryset.exclude(error_code="")
    assert index in _plan(queryset.order_by().values("id")[:10001])


def test_a_tenants_end_user_is_one_index_probe_not_two(logged, tenant_a):
    plan = _plan(RequestLog.objects.filter(tenant=tenant_a, end_user="user-1").exclude(end_user="")
                 .order_by("-created_at")[:100])
    assert "request_log_end_user_tenant" in plan and "BitmapAnd" not in plan


def test_the_changelist_search_by_user_within_a_tenant_shows_that_tenants_rows(client, logged, tenant_a, tenant_b):
    staff = get_user_model().objects.create_superuser("operator", password="a-long-password-1")
    client.force_login(staff)
    page = client.get("/admin/usage/requestlog/", {"q": "user:user-0", "tenant__id__exact": tenant_a.pk})
    assert page.status_code == 200
    shown = set(page.context["cl"].result_list.values_list("tenant_id", "end_user"))
    assert shown == {(tenant_a.pk, "user-0")}
    # user-1's rows are all tenant B's (odd n): narrowed to A, none.
    page = client.get("/admin/usage/requestlog/", {"q": "user:user-1", "tenant__id__exact": tenant_a.pk})
    assert list(page.context["cl"].result_list) == []
    assert RequestLogAdmin.search_help_text


def test_a_search_with_a_status_filter_reads_the_searchs_index_alone(client, logged, tenant_a):
    from django.test.utils import CaptureQueriesContext

    staff = get_user_model().objects.create_superuser("operator", password="a-long-password-1")
    client.force_login(staff)
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/admin/usage/requestlog/", {"q": "tag:eval", "status_code": "502"})
    shown = list(page.context["cl"].result_list)
    expected = RequestLog.objects.filter(tags__contains=["eval"], status_code=502)
    assert {row.pk for row in shown} == set(expected.values_list("pk", flat=True)) and shown
    listing = next(q["sql"] for q in queries.captured_queries if q["sql"].startswith('SELECT "usage_requestlog"."id"'))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {listing}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "request_log_tags" in plan and "request_log_status_error" not in plan
    # Without a search, the status filter is served by the errors' index.
    with CaptureQueriesContext(connection) as queries:
        client.get("/admin/usage/requestlog/", {"status_code": "502"})
    counted = next(q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT COUNT(*)"))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {counted}")
        assert "request_log_status_error" in "\n".join(row[0] for row in cursor.fetchall())
