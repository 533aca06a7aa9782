"""Stored responses on the hot path, through the gateway's async Postgres pool. Every read and
write names its tenant: another tenant's response is as unknown as a made-up id.

A background response's row is written as its run goes (:func:`response_progress`): its events
so far, its status and the response as it stands. Only a row still ``queued`` or
``in_progress`` is written, so a run finds out it was cancelled (or failed as stale) when its
write changes nothing; cancelling and failing such a row append the stream's last event
(``response.cancelled`` / ``response.failed``) numbered after the events written."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from psycopg.types.json import Jsonb


@dataclass(frozen=True, slots=True)
class Stored:
    response_id: str
    response: dict
    input_items: list
    context: list
    background: bool = False
    status: str = ""
    stale: bool = False  # queued or in progress, but unwritten for longer than a run lets pass


def _without_nul(value):
    """``value`` with NUL characters taken out of its strings: Postgres's jsonb cannot hold them."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _jsonb(value) -> Jsonb:
    dumped = orjson.dumps(value)
    if b"\\u0000" in dumped:
        dumped = orjson.dumps(_without_nul(value))
    return Jsonb(dumped.decode(), dumps=lambda text: text)


def _id_ok(response_id: str) -> bool:
    return len(response_id) <= 64 and "\x00" not in response_id


async def response_save(pool, *, tenant_id: int, api_key_id: int | None, request_id: str, response: dict,
                        input_items: list, context: list, background: bool = False,
                        events: list | None = None, stale_seconds: float = 0.0) -> None:
    """Store a response; a background one (``background``, with its first ``events``) is taken
    for dead unless its run writes it again within ``stale_seconds``."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO responses_storedresponse (tenant_id, api_key_id, response_id, request_id, "
            "previous_response_id, model, status, response, input_items, context, background, events, created_at, "
            "stale_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), "
            "CASE WHEN %s THEN now() + make_interval(secs => %s) END)",
            [tenant_id, api_key_id, response["id"], request_id, response.get("previous_response_id") or "",
             str(response.get("model") or "")[:200], str(response.get("status") or "")[:20], _jsonb(response),
             _jsonb(input_items), _jsonb(context), background, _jsonb(events or []), background, stale_seconds])


async def response_find(pool, *, tenant_id: int, response_id: str) -> Stored | None:
    """The tenant's response; ``stale``: a background one still running whose run has not written
    it by its ``stale_at``."""
    if not _id_ok(response_id):
        return None
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT response_id, response, input_items, context, background, status, "
            "background AND status IN ('queued', 'in_progress') AND stale_at < now() "
            "FROM responses_storedresponse WHERE tenant_id = %s AND response_id = %s",
            [tenant_id, response_id])).fetchone()
    return Stored(*row) if row is not None else None


async def response_events(pool, *, tenant_id: int, response_id: str) -> tuple[str, list, bool] | None:
    """A background response's status, its events written so far, and whether it is stale (still
    running, but its run has not written it by its ``stale_at``)."""
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT status, events, status IN ('queued', 'in_progress') AND stale_at < now() "
            "FROM responses_storedresponse WHERE tenant_id = %s AND response_id = %s",
            [tenant_id, response_id])).fetchone()
    return (row[0], row[1], bool(row[2])) if row is not None else None


async def response_progress(pool, *, tenant_id: int, response_id: str, events: list, status: str,
                            stale_seconds: float, response: dict | None = None, context: list | None = None) -> bool:
    """Append ``events`` to a running background response and set its status (and its response
    and conversation, when given), to be written again within ``stale_seconds``; False when it
    no longer runs (cancelled, or failed as stale)."""
    async with pool.connection() as conn:
        written = await conn.execute(
            "UPDATE responses_storedresponse SET events = events || %s, status = %s, "
            "response = COALESCE(%s, response), context = COALESCE(%s, context), "
            "model = COALESCE(%s, model), stale_at = now() + make_interval(secs => %s) "
            "WHERE tenant_id = %s AND response_id = %s AND status IN ('queued', 'in_progress')",
            [_jsonb(events), status[:20], _jsonb(response) if response is not None else None,
             _jsonb(context) if context is not None else None,
             str(response.get("model") or "")[:200] if response is not None else None, stale_seconds, tenant_id,
             response_id])
    return written.rowcount > 0


async def response_end(pool, *, tenant_id: int, response_id: str, status: str, error: dict | None = None,
                       stale: bool = False) -> dict | None:
    """End a running background response as ``cancelled`` or ``failed`` (with ``error``) from its
    row alone (its run is not in this process): the response as it now stands, or None when it
    was not running (or, with ``stale``, its run was not taken for dead)."""
    patch = {"status": status, **({"error": error} if error is not None else {})}
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "UPDATE responses_storedresponse SET status = %s, response = response || %s, "
            "events = events || jsonb_build_array(jsonb_build_object('type', %s::text, 'response', response || %s, "
            "'sequence_number', COALESCE((events -> -1 ->> 'sequence_number')::int + 1, 0))), stale_at = NULL "
            "WHERE tenant_id = %s AND response_id = %s AND background AND status IN ('queued', 'in_progress') "
            "AND (NOT %s OR stale_at < now()) RETURNING response",
            [status, _jsonb(patch), f"response.{status}", _jsonb(patch), tenant_id, response_id, stale])).fetchone()
    return row[0] if row is not None else None


async def response_delete(pool, *, tenant_id: int, response_id: str) -> bool:
    if not _id_ok(response_id):
        return False
    async with pool.connection() as conn:
        deleted = await conn.execute("DELETE FROM responses_storedresponse WHERE tenant_id = %s AND response_id = %s",
                                     [tenant_id, response_id])
    return deleted.rowcount > 0
