"""The calling tenant's own usage, from the rollups, and its request log as a streamed CSV.

    GET /v1/usage?start=2026-11-01&end=2026-11-23&group_by=model|key|day|outcome
        -> {"object": "usage", "start", "end", "totals": {...}, "group_by", "data": [...]}
    GET /v1/usage/export?start=...&end=...      -> text/csv, one line per request, streamed

``start`` is inclusive, ``end`` exclusive; dates (UTC midnight) or ISO 8601 times, from
1970-01-01 to 9999-12-31 (UTC), at most 400 days apart. Without them: the last 30 days. Both
endpoints authenticate with the tenant's API key and read nothing but that tenant's rows.
Rollups lag the log by up to two rollup periods (20 s by default).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import orjson
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework.views import APIView

from apps.core.errors import BadRequest, GatewayError, error_response
from apps.reporting.selectors import (
    ATTRIBUTION_GROUPS,
    GROUPS,
    REPORT_EARLIEST,
    REPORT_LATEST,
    attribution_grouped,
    usage_grouped,
    usage_totals,
)
from apps.tenants.selectors import key_for_authorization, key_prefixes
from apps.tenants.services import key_use_note
from apps.usage.selectors import request_log_rows

MAX_RANGE = timedelta(days=400)
EXPORT_COLUMNS = ["created_at", "request_id", "api_key_prefix", "endpoint", "requested_model", "model_used",
                  "cache_outcome", "input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "cost",
                  "saved_cost", "routing_saved_cost",
                  "latency_ms", "ttft_ms", "status_code", "error_code", "end_user", "tags", "session_id"]
# The log's fields behind the columns (api_key_id becomes the key's visible prefix).
_FIELDS = ["created_at", "request_id", "api_key_id", "endpoint", "requested_model", "model_used", "cache_outcome",
           "input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "cost", "saved_cost",
           "routing_saved_cost", "latency_ms",
           "ttft_ms", "status_code", "error_code", "end_user", "tags", "session_id"]


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    except ValueError:
        moment = None
    if moment is None:
        raise BadRequest(f"'{name}' must be a date (2026-11-01) or an ISO 8601 time", param=name)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    # Compared before any conversion: year 1 with a positive offset, or 9999-12-31 with a
    # negative one, has no UTC datetime.
    if not REPORT_EARLIEST <= moment <= REPORT_LATEST:
        raise BadRequest(f"'{name}' must be between {REPORT_EARLIEST:%Y-%m-%d} and {REPORT_LATEST:%Y-%m-%d} (UTC)",
                         param=name)
    return moment


def _midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _range(params) -> tuple[datetime, datetime]:
    end = _when(params.get("end"), "end") or datetime.now(UTC)
    start = _when(params.get("start"), "start") or max(end - timedelta(days=30), REPORT_EARLIEST)
    if start >= end:
        raise BadRequest("'start' must be before 'end'", param="start")
    if end - start > MAX_RANGE:
        raise BadRequest(f"the range may span at most {MAX_RANGE.days} days", param="start")
    return start, end


def _tenant_key(request):
    key = key_for_authorization(request.headers.get("Authorization"))
    key_use_note(api_key=key)
    return key


class UsageView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request):
        try:
            key = _tenant_key(request)
            start, end = _range(request.query_params)
            group_by = request.query_params.get("group_by") or "day"
            if group_by not in GROUPS and group_by not in ATTRIBUTION_GROUPS:
                raise BadRequest(f"'group_by' must be one of {', '.join([*GROUPS, *ATTRIBUTION_GROUPS])}",
                                 param="group_by")
        except GatewayError as error:
            return error_response(error)
        tenant_id = key.tenant_id
        # Whole days are read from the daily rollups (24 times fewer rows), anything else hourly.
        period = "day" if start == _midnight(start) and end == _midnight(end) else "hour"
        if group_by in ATTRIBUTION_GROUPS:
            data = attribution_grouped(tenant_id=tenant_id, start=start, end=end, group_by=group_by)
        else:
            data = usage_grouped(tenant_id=tenant_id, start=start, end=end, group_by=group_by, period=period)
        for row in data:
            for money in ("cost", "saved_cost", "routing_saved_cost"):
                if money in row:
                    row[money] = str(row[money])
            if isinstance(row["group"], datetime):
                row["group"] = row["group"].date().isoformat()
        body = {"object": "usage", "start": start.isoformat(), "end": end.isoformat(),
                "totals": usage_totals(tenant_id=tenant_id, start=start, end=end, period=period).as_dict(),
                "group_by": group_by, "data": data}
        return HttpResponse(orjson.dumps(body), content_type="application/json")


class _Lines:
    """A file-like object collecting what csv.writer writes, taken out chunk by chunk."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, value: str) -> None:
        self.parts.append(value)

    def take(self) -> bytes:
        chunk, self.parts = "".join(self.parts).encode(), []
        return chunk


def csv_chunks(rows, prefixes: dict[int, str], *, lines_per_chunk: int = 1000):
    """The header, then the rows as CSV, ``lines_per_chunk`` lines a chunk (an iterator over a
    server-side cursor: memory stays constant whatever the range)."""
    out = _Lines()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    for count, (created_at, request_id, key_id, *middle, latency, ttft, status, error, end_user, tags,
                session) in enumerate(rows, 1):
        writer.writerow([created_at.isoformat(), request_id, prefixes.get(key_id, ""), *middle, f"{latency:.2f}",
                         "" if ttft is None else f"{ttft:.2f}", status, error, end_user, ",".join(tags or ()),
                         session])
        if count % lines_per_chunk == 0:
            yield out.take()
    yield out.take()


class UsageExportView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request):
        try:
            key = _tenant_key(request)
            start, end = _range(request.query_params)
        except GatewayError as error:
            return error_response(error)
        rows = request_log_rows(tenant_id=key.tenant_id, start=start, end=end, fields=_FIELDS)
        response = StreamingHttpResponse(csv_chunks(rows, key_prefixes(tenant_id=key.tenant_id)),
                                         content_type="text/csv")
        response["Content-Disposition"] = (f'attachment; filename="usage-{key.tenant.slug}-{start:%Y%m%d}-'
                                           f'{end:%Y%m%d}.csv"')
        return response
