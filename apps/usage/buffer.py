"""Usage rows leave the hot path through an in-process buffer flushed in bulk.

A request appends a plain dict (no model instance, no I/O). A background task flushes the
buffer every second, or as soon as it holds ``max_rows``, with one ``COPY`` in a worker
thread. :meth:`UsageBuffer.close` flushes what is left; the ASGI lifespan calls it on
shutdown, after the server has finished its in-flight requests, so a SIGTERM loses no row
(a flush under way when the server stops is finished first, never cut off).
A failed flush keeps its rows and retries them on the next round.

Each flush also writes the API keys' last use (:mod:`apps.tenants.last_used`): requests note
their key in :attr:`UsageBuffer.keys_used`, and a key's ``last_used_at`` is written at most once
a minute, in one statement, never on the request's path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import orjson
import psycopg
from asgiref.sync import sync_to_async
from django.db import DataError, IntegrityError, close_old_connections, transaction

from apps.core.flushing import flush_timer_stop
from apps.core.redact import redact, redact_text
from apps.tenants.last_used import KeysUsed
from apps.tenants.services import keys_last_used_record
from apps.usage.models import RequestBody, RequestLog

logger = logging.getLogger(__name__)


# A row's request body, for tenants that keep them (apps.gateway.pipeline.call.Call.body): a dict
# with tenant_id, request_id, prompt, answer and the tenant's patterns, redacted and written to
# RequestBody with the row's batch. Not a column of the row.
BODY = "_body"

_OPTIONAL_REFERENCES = ("api_key_id", "model_id", "provider_id", "deployment_id", "routing_rule_id", "price_id")


def _copy_columns():
    fields = [f for f in RequestLog._meta.concrete_fields if not f.primary_key]
    return RequestLog._meta.db_table, fields


def _rows_copy(rows: list[dict]) -> None:
    """One ``COPY ... FROM STDIN``: several times cheaper in CPU than building model instances."""
    from django.db import connection, transaction
    from django.db.models import JSONField
    from psycopg import sql
    from psycopg.types.json import Jsonb

    table, fields = _copy_columns()
    defaults = {f.attname: f.get_default() for f in fields}
    names = [f.attname for f in fields]
    json_at = [index for index, f in enumerate(fields) if isinstance(f, JSONField)]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(f.column) for f in fields))
    with transaction.atomic():
        with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
            for row in rows:
                values = [row[name] if name in row else defaults[name] for name in names]
                for index in json_at:
                    if values[index] is not None:
                        values[index] = Jsonb(values[index])
                copy.write_row(values)
        kept = [row for row in rows if row.get(BODY) is not None]
        if kept:
            _bodies_copy([row[BODY] for row in kept], created_at=[row["created_at"] for row in kept])


def _body_redacted(body: dict) -> tuple:
    """The body's prompt and answer with what the patterns match replaced: this is what is stored."""
    patterns = tuple(body.get("patterns") or ())
    return redact(body.get("prompt"), patterns), redact_text(body.get("answer") or "", patterns)


def _json_dumps(value) -> bytes:
    """``value`` as JSON: orjson's (several times faster), the standard library's for what orjson
    refuses (an integer past 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value).encode()


def _bodies_copy(bodies: list[dict], *, created_at: list) -> None:
    """The rows' request bodies, redacted, in one ``COPY`` (inside the rows' transaction)."""
    from django.db import connection
    from psycopg.types.json import Jsonb

    with connection.cursor() as cursor, cursor.cursor.copy(
            "COPY usage_requestbody (tenant_id, request_id, prompt, answer, created_at) FROM STDIN") as copy:
        for index, (body, when) in enumerate(zip(bodies, created_at, strict=True)):
            prompt, answer = _body_redacted(body)
            copy.write_row([body["tenant_id"], body["request_id"],
                            None if prompt is None else Jsonb(prompt, dumps=_json_dumps),
                            answer.replace("\x00", ""), when])
            if index % 16 == 15:
                # Let the event loop's thread have the GIL: without this it would wait for the
                # interpreter's switch interval (5 ms) each time it wakes while the bodies redact.
                time.sleep(0)


def _without_nul(row: dict) -> dict:
    return {name: value.replace("\x00", "") if isinstance(value, str) else value for name, value in row.items()}


def _rows_write(rows: list[dict]) -> None:
    close_old_connections()
    try:
        _rows_copy(rows)
        return
    except (IntegrityError, DataError, psycopg.DataError, psycopg.IntegrityError):
        pass  # COPY's own refusals come from psycopg, unwrapped by Django
    # A key, model or rule was deleted between the request and the flush, or a string the
    # client sent (the model it asked for) holds a NUL, which Postgres text cannot: write the
    # rows one by one, without NULs, dropping references that no longer resolve, so one row
    # cannot sink the batch (a batch kept for the next round would fail again, forever).
    for row in map(_without_nul, rows):
        body = row.pop(BODY, None)
        try:
            with transaction.atomic():
                RequestLog.objects.create(**row)
                if body is not None:
                    prompt, answer = _body_redacted(body)
                    RequestBody.objects.create(tenant_id=body["tenant_id"], request_id=body["request_id"],
                                               prompt=prompt, answer=answer, created_at=row["created_at"])
        except (IntegrityError, DataError):
            try:
                with transaction.atomic():
                    RequestLog.objects.create(**{**row, **dict.fromkeys(_OPTIONAL_REFERENCES)})
            except (IntegrityError, DataError):
                logger.error("usage row %s dropped: its tenant no longer exists or it holds bad data",
                             row.get("request_id"))


def _keys_write(used: dict[int, float]) -> None:
    close_old_connections()
    keys_last_used_record(used=used)


class UsageBuffer:
    def __init__(self, *, interval: float = 1.0, max_rows: int = 500) -> None:
        self.interval = interval
        self.max_rows = max_rows
        self._rows: list[dict] = []
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.written = 0
        # Called with each batch before it is written (metrics); must be quick and never raise.
        self.observer = None
        self.keys_used = KeysUsed()

    def __len__(self) -> int:
        return len(self._rows)

    def pending(self) -> list[dict]:
        """The rows not yet written, oldest first."""
        return list(self._rows)

    def append(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.max_rows:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-buffer")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self, *, closing: bool = False) -> int:
        """Write everything buffered so far; returns the number of rows written."""
        async with self._flush_lock:
            await self._keys_flush(everything=closing)
            if not self._rows:
                return 0
            rows, self._rows = self._rows, []
            if self.observer is not None:
                try:
                    self.observer(rows)
                except Exception:
                    logger.exception("usage observer failed")
            try:
                await sync_to_async(_rows_write, thread_sensitive=False)(rows)
            except Exception:
                logger.exception("usage flush failed; %d rows kept for the next round", len(rows))
                self._rows[:0] = rows
                return 0
            self.written += len(rows)
            return len(rows)

    async def _keys_flush(self, *, everything: bool) -> None:
        used = self.keys_used.due(everything=everything)
        if not used:
            return
        try:
            await sync_to_async(_keys_write, thread_sensitive=False)(used)
        except Exception:
            logger.exception("writing %d keys' last use failed; kept for the next round", len(used))
            self.keys_used.retry(used)

    async def close(self) -> None:
        if self._task is not None:
            await flush_timer_stop(self._task, self._flush_lock)
            self._task = None
        for _attempt in range(3):
            await self.flush(closing=True)
            if not self._rows:
                return
            await asyncio.sleep(0.5)
        logger.error("usage buffer closed with %d unwritten rows", len(self._rows))
