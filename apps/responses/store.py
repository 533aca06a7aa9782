"""Stored responses on the hot path, through the gateway's async Postgres pool. Every read and
write names its tenant: another tenant's response is as unknown as a made-up id."""

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
                        input_items: list, context: list) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO responses_storedresponse (tenant_id, api_key_id, response_id, request_id, "
            "previous_response_id, model, status, response, input_items, context, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())",
            [tenant_id, api_key_id, response["id"], request_id, response.get("previous_response_id") or "",
             str(response.get("model") or "")[:200], str(response.get("status") or "")[:20], _jsonb(response),
             _jsonb(input_items), _jsonb(context)])


async def response_find(pool, *, tenant_id: int, response_id: str) -> Stored | None:
    if not _id_ok(response_id):
        return None
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT response_id, response, input_items, context FROM responses_storedresponse "
            "WHERE tenant_id = %s AND response_id = %s", [tenant_id, response_id])).fetchone()
    return Stored(*row) if row is not None else None


async def response_delete(pool, *, tenant_id: int, response_id: str) -> bool:
    if not _id_ok(response_id):
        return False
    async with pool.connection() as conn:
        deleted = await conn.execute("DELETE FROM responses_storedresponse WHERE tenant_id = %s AND response_id = %s",
                                     [tenant_id, response_id])
    return deleted.rowcount > 0
