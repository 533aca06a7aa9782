"""Anthropic's Message Batches API on the SIMULATED upstream.

    POST /v1/messages/batches               ``{"requests": [{"custom_id", "params"}]}``
    GET  /v1/messages/batches               the batches, newest first (``limit``)
    GET  /v1/messages/batches/{id}          the batch: ``processing_status`` (in_progress,
                                            canceling, ended), ``request_counts``, and once
                                            ended ``results_url``
    GET  /v1/messages/batches/{id}/results  JSONL, one ``{"custom_id", "result"}`` a request

Every endpoint needs ``x-api-key`` (401 without) and ``anthropic-version`` (400 without), as
Anthropic's API does. A ``custom_id`` must match ``^[a-zA-Z0-9_-]{1,64}$`` and be unique in its
batch. A batch is ``in_progress`` for the store's delay (and while held), then each request is
answered by this server's own ``POST /v1/messages`` over HTTP (so each answer, its usage and its
prompt-cache reads and writes are exactly the live API's), up to 16 at a time: ``succeeded``
with the message, or ``errored`` with Anthropic's error body; then ``ended``.

Control (tests) is the Files and Batch API's (``POST /_sim/batches``: ``hold``, ``delay_ms``),
plus ``{"expire_next": true}``: every request of the next batch ends ``expired``. The control's
answer counts these batches as ``message_batches``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import orjson
from aiohttp import web

from apps.simulator.batches import BatchStore
from apps.simulator.control import HEADERS
from apps.simulator.messages import error_response

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
CONCURRENCY = 16


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class MessageBatch:
    id: str
    requests: list[dict]
    created_at: float
    status: str = "in_progress"
    results: bytes | None = None
    ended_at: float | None = None
    counts: dict = field(default_factory=lambda: {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0,
                                                   "expired": 0})

    def as_json(self, origin: str) -> dict:
        return {"id": self.id, "type": "message_batch", "processing_status": self.status,
                "request_counts": dict(self.counts), "ended_at": _iso(self.ended_at),
                "created_at": _iso(self.created_at), "expires_at": _iso(self.created_at + 86400),
                "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"{origin}/v1/messages/batches/{self.id}/results" if self.results is not None else None}


class MessageBatchApi:
    """The handlers; the batches live in the simulator's :class:`BatchStore`."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store

    @staticmethod
    def _refused(request: web.Request) -> web.Response | None:
        if not request.headers.get("x-api-key"):
            return error_response(401, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return error_response(400, "anthropic-version: header is required")
        return None

    async def create(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "The request body is not valid JSON.")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests or len(requests) > MAX_REQUESTS:
            return error_response(400, f"requests: a list of 1 to {MAX_REQUESTS} requests is required")
        seen = set()
        for number, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return error_response(400, f"requests.{number}.custom_id: String should match pattern "
                                           "'^[a-zA-Z0-9_-]{1,64}$'")
            if custom_id in seen:
                return error_response(400, f"requests.{number}.custom_id: duplicate custom_id {custom_id!r}")
            seen.add(custom_id)
            if not isinstance(item.get("params"), dict):
                return error_response(400, f"requests.{number}.params: Field required")
        batch = MessageBatch(f"msgbatch_sim{secrets.token_hex(10)}", requests, time.time())
        batch.counts["processing"] = len(requests)
        self.store.message_batches[batch.id] = batch
        expire, self.store.expire_next = self.store.expire_next, False
        headers = {"x-api-key": request.headers["x-api-key"], "anthropic-version": request.headers["anthropic-version"]}
        task = asyncio.ensure_future(self._run(batch, str(request.url.origin()), headers, expire))
        self.store.tasks.add(task)
        task.add_done_callback(self.store.tasks.discard)
        return web.json_response(batch.as_json(str(request.url.origin())), headers=HEADERS)

    def _batch(self, request: web.Request) -> MessageBatch | None:
        return self.store.message_batches.get(request.match_info["batch_id"])

    async def get(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        batch = self._batch(request)
        if batch is None:
            return error_response(404, "No such message batch.")
        return web.json_response(batch.as_json(str(request.url.origin())), headers=HEADERS)

    async def list(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 1000)
        except ValueError:
            return error_response(400, "limit: Input should be a valid integer")
        batches = sorted(self.store.message_batches.values(), key=lambda b: b.created_at, reverse=True)[:limit]
        data = [b.as_json(str(request.url.origin())) for b in batches]
        return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None}, headers=HEADERS)

    async def results(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        batch = self._batch(request)
        if batch is None:
            return error_response(404, "No such message batch.")
        if batch.results is None:
            return error_response(400, "The message batch is still processing; its results are not ready.")
        return web.Response(body=batch.results, content_type="application/binary", headers=HEADERS)

    async def _run(self, batch: MessageBatch, origin: str, headers: dict, expire: bool) -> None:
        await asyncio.sleep(self.store.delay_ms / 1000)
        await self.store.released.wait()
        results: list[bytes | None] = [None] * len(batch.requests)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def answer(session: aiohttp.ClientSession, number: int, item: dict) -> None:
            if expire:
                result = {"type": "expired"}
            else:
                async with limit, session.post(origin + "/v1/messages", json=item["params"],
                                               headers=headers) as response:
                    raw, status = await response.read(), response.status
                parsed = orjson.loads(raw)
                result = ({"type": "succeeded", "message": parsed} if status == 200
                          else {"type": "errored", "error": parsed})
            batch.counts["processing"] -= 1
            batch.counts[result["type"]] += 1
            results[number] = orjson.dumps({"custom_id": item["custom_id"], "result": result})

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(answer(session, n, item) for n, item in enumerate(batch.requests)))
        batch.results = b"\n".join(results) + b"\n"
        batch.status, batch.ended_at = "ended", time.time()


def message_batch_routes(app: web.Application, store: BatchStore) -> None:
    api = MessageBatchApi(store)
    app.router.add_post("/v1/messages/batches", api.create)
    app.router.add_get("/v1/messages/batches", api.list)
    app.router.add_get("/v1/messages/batches/{batch_id}", api.get)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", api.results)
