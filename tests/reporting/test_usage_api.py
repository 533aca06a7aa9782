"""GET /v1/usage and /v1/usage/export: a tenant's own figures only, clear errors, constant memory."""

from __future__ import annotations

import csv
import http.client
import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode, urlparse

import psutil
import psycopg
import pytest

from apps.gateway.database import conninfo
from apps.reporting.api.usage import EXPORT_COLUMNS
from apps.reporting.services import usage_rollup
from apps.usage.models import RequestLog
from tests.gateway.conftest import gateway_process  # noqa: F401 (fixture)
from tests.reporting.test_rollups import START, _logs

END = START + timedelta(days=3)


def _get(client, path, key, **params):
    return client.get(path, params, HTTP_AUTHORIZATION=f"Bearer {key.secret}")


@pytest.fixture
def logged(transactional_db, tenant_a, tenant_b, key_a, key_b):
    _logs(random.Random(21), [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], 400, hours=48)
    usage_rollup()
    usage_rollup()


@pytest.mark.parametrize("group_by", ["model", "key", "day", "outcome"])
def test_it_gives_a_tenant_its_own_usage_only(client, logged, tenant_a, tenant_b, key_a, key_b, group_by):
    for tenant, key, other in ((tenant_a, key_a, key_b), (tenant_b, key_b, key_a)):
        response = _get(client, "/v1/usage", key, start="2026-11-01", end="2026-11-04", group_by=group_by)
        assert response.status_code == 200
        body = response.json()
        own = RequestLog.objects.filter(tenant=tenant)
        assert body["totals"]["requests"] == own.count()
        assert Decimal(body["totals"]["cost"]) == sum((r.cost for r in own), Decimal(0))
        assert body["totals"]["cache_write_tokens"] == sum(r.cache_write_tokens for r in own) > 0
        assert sum(row["cache_write_tokens"] for row in body["data"]) == body["totals"]["cache_write_tokens"]
        assert sum(row["requests"] for row in body["data"]) == own.count()
        if group_by == "key":
            assert other.api_key.pk not in {row["group"] for row in body["data"]}
        if group_by == "day":
            assert [row["group"] for row in body["data"]] == ["2026-11-01", "2026-11-02"]  # 48 hours of rows


@pytest.mark.parametrize(("params", "param"), [
    ({"start": "yesterday"}, "start"),
    ({"start": "2026-11-05", "end": "2026-11-01"}, "start"),
    ({"start": "2020-01-01", "end": "2026-11-01"}, "start"),
    ({"group_by": "colour"}, "group_by"),
])
def test_it_refuses_bad_parameters_with_an_openai_error(client, logged, key_a, params, param):
    response = _get(client, "/v1/usage", key_a, **params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/usage/export"])
def test_it_refuses_a_missing_or_wrong_key(client, db, path):
    assert client.get(path).status_code == 401
    response = client.get(path, HTTP_AUTHORIZATION="Bearer sk-sy-not-a-key")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_it_exports_a_tenants_own_rows_as_csv(client, logged, tenant_a, key_a, key_b):
    response = _get(client, "/v1/usage/export", key_a, start="2026-11-01", end="2026-11-04")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    own = RequestLog.objects.filter(tenant=tenant_a)
    assert sorted(r["request_id"] for r in rows) == sorted(own.values_list("request_id", flat=True))
    assert {r["api_key_prefix"] for r in rows} <= {"", key_a.api_key.prefix}
    assert sum(Decimal(r["cost"]) for r in rows) == sum((r.cost for r in own), Decimal(0))
    assert sum(int(r["cache_write_tokens"]) for r in rows) == sum(r.cache_write_tokens for r in own) > 0


@pytest.mark.django_db(transaction=True)
def test_it_streams_a_large_export_in_constant_memory(client, tenant_a, tenant_b, key_a):
    # 400,000 rows (about 150 bytes of CSV each): after the first 100,000 lines settle the
    # process, the other 300,000 are about 45 MB, over twice the 20 MB the process may grow by,
    # so an export that kept its lines or rows would fail. More rows would only take longer
    # (a million took about 40 s, most of it inserting and formatting rows).
    rows = 400_000
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_requestlog (tenant_id, api_key_id, request_id, endpoint, requested_model, model_used, "
            "cache_outcome, input_tokens, cached_tokens, output_tokens, tokens_estimated, cost, saved_cost, "
            "latency_ms, overhead_ms, is_stream, status_code, error_code, created_at) "
            "SELECT %s, %s, 'req-' || n, '/v1/chat/completions', 'auto', 'sim-mini', 'miss', 100, 0, 50, false, "
            "0.0001, 0, 12.5, 0.1, false, 200, '', %s + n * interval '200 milliseconds' "
            "FROM generate_series(1, %s) AS n", [tenant_a.pk, key_a.api_key.pk, START, rows])
        conn.execute(
            "INSERT INTO usage_requestlog (tenant_id, request_id, endpoint, requested_model, model_used, "
            "cache_outcome, input_tokens, cached_tokens, output_tokens, tokens_estimated, cost, saved_cost, "
            "latency_ms, overhead_ms, is_stream, status_code, error_code, created_at) VALUES (%s, 'other-tenant', "
            "'/v1/chat/completions', 'auto', 'sim-mini', 'miss', 1, 0, 1, false, 0.5, 0, 1, 0.1, false, 200, '', %s)",
            [tenant_b.pk, START])
    process = psutil.Process()
    response = _get(client, "/v1/usage/export", key_a, start="2026-11-01", end="2026-11-04")
    chunks = iter(response.streaming_content)
    lines = size = 0
    for chunk in chunks:  # the first 100,000 lines: the cursor's batches and buffers are in place
        lines += chunk.count(b"\n")
        size += len(chunk)
        if lines >= 100_000:
            break
    settled = process.memory_info().rss
    grown = 0
    for chunk in chunks:
        lines += chunk.count(b"\n")
        size += len(chunk)
        grown = max(grown, process.memory_info().rss - settled) if lines % 50_000 < 1000 else grown
    grown = max(grown, process.memory_info().rss - settled)
    assert lines == rows + 1  # the header and every row of tenant A, none of tenant B
    assert size > 50_000_000
    # Streaming the other 300,000 lines (about 45 MB of CSV) holds a chunk and the cursor's
    # batch at a time: the process does not grow with the export.
    assert grown < 20 * 2**20, grown


def test_it_reads_dates_as_utc_midnight(client, logged, tenant_a, key_a):
    day = datetime(2026, 11, 2, tzinfo=UTC)
    body = _get(client, "/v1/usage", key_a, start="2026-11-02", end="2026-11-03", group_by="day").json()
    assert body["start"] == day.isoformat()
    expected = RequestLog.objects.filter(tenant=tenant_a, created_at__gte=day, created_at__lt=day + timedelta(days=1))
    assert body["totals"]["requests"] == expected.count()


def _live_get(gateway, path: str, secret: str, params: dict) -> tuple[int, str, bytes]:
    """GET over a real socket to the live server: status, content type, body."""
    url = urlparse(gateway.base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request("GET", f"{path}?{urlencode(params)}", headers={"Authorization": f"Bearer {secret}"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


OUT_OF_RANGE = "between 1970-01-01 and 9999-12-31 (UTC)"
DATE_EDGES = [
    # (query, status, the parameter named, words the message must hold)
    ({"end": "0001-01-05"}, 400, "end", OUT_OF_RANGE),
    ({"start": "0001-01-01T00:00:00+05:00", "end": "1970-01-03"}, 400, "start", OUT_OF_RANGE),
    ({"start": "0001-01-01T00:00:00+05:00"}, 400, "start", OUT_OF_RANGE),
    ({"start": "0001-01-01", "end": "1970-01-02"}, 400, "start", OUT_OF_RANGE),
    ({"start": "0001-01-01T00:00:00+05:00", "end": "0001-01-05"}, 400, "end", OUT_OF_RANGE),
    ({"start": "9999-12-01", "end": "9999-12-31T23:00:00-05:00"}, 400, "end", OUT_OF_RANGE),
    ({"end": "9999-12-31T23:00:00-05:00"}, 400, "end", OUT_OF_RANGE),
    ({"start": "9999-12-30", "end": "9999-12-31T23:59:59.999999"}, 400, "end", OUT_OF_RANGE),
    ({"start": "9999-12-30T23:00:00-05:00", "end": "9999-12-31"}, 400, "start", OUT_OF_RANGE),
    ({"start": "1969-12-31T23:59:59Z", "end": "1970-01-02"}, 400, "start", OUT_OF_RANGE),
    ({"end": "1970-01-01"}, 400, "start", "before 'end'"),
    ({"start": "2026-11-05", "end": "2026-11-01"}, 400, "start", "before 'end'"),
    ({"start": "1970-01-01", "end": "9999-12-31"}, 400, "start", "400 days"),
    ({"start": "2026-02-30"}, 400, "start", "ISO 8601"),
    ({"end": "2026-11-01T24:61:00"}, 400, "end", "ISO 8601"),
    ({"end": "2026-11-01T00:00:00+99:00"}, 400, "end", "ISO 8601"),
    ({"end": "10000-01-01"}, 400, "end", "ISO 8601"),
    ({"end": "-0001-01-01"}, 400, "end", "ISO 8601"),
    ({"start": "\x00"}, 400, "start", "ISO 8601"),
    ({"start": "9" * 4096}, 400, "start", "ISO 8601"),
    # The edges themselves are answered.
    ({"end": "1970-01-05"}, 200, None, ""),
    ({"start": "1970-01-01T05:00:00+05:00", "end": "1970-01-02"}, 200, None, ""),
    ({"start": "9999-12-01", "end": "9999-12-31"}, 200, None, ""),
    ({"start": "9999-12-30T18:00:00-05:00", "end": "9999-12-31"}, 200, None, ""),
]


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/usage/export"])
def test_it_answers_date_edges_with_400_naming_the_range_never_500(gateway_process, transactional_db,  # noqa: F811
                                                                     key_a, path):
    for query, status, param, words in DATE_EDGES:
        got, content_type, body = _live_get(gateway_process, path, key_a.secret, query)
        assert got == status, (query, got, body[:300])
        if status == 400:
            error = json.loads(body)["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request",
                                                                      param), query
            assert words in error["message"], (query, error)
        elif path == "/v1/usage":
            assert json.loads(body)["totals"]["requests"] == 0, query
        else:
            assert content_type == "text/csv" and body.decode().splitlines() == [",".join(EXPORT_COLUMNS)], query
