"""OpenAI's Files and Batch API on the SIMULATED upstream.

    POST /v1/files                  multipart ``file`` and ``purpose`` (``batch``)
    GET  /v1/files/{id}             the file object
    GET  /v1/files/{id}/content     its bytes (an input, or a batch's output or error file)
    POST /v1/batches                ``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``
    GET  /v1/batches                the batches, newest first (``limit``)
    GET  /v1/batches/{id}           the batch object, with ``request_counts`` and, once
                                    completed, ``output_file_id`` and ``error_file_id``

A batch is ``validating``, then ``in_progress`` after ``--batch-delay-ms``, then every line is
answered by this server's own ``POST /v1/chat/completions`` (or ``/v1/embeddings``) over HTTP,
so each line's answer and usage are exactly the live API's; lines answered 200 go to the output
file, others to the error file, in OpenAI's line format; then ``completed``.

Control (tests): ``POST /_sim/batches`` with ``{"hold": true}`` keeps new and running batches in
progress until ``{"hold": false}``; ``{"fail_next": "message"}`` makes the next batch end
``failed`` with that message; ``{"delay_ms": N}`` sets the delay (for Anthropic's message
batches too, :mod:`apps.simulator.message_batches`, whose own control is ``expire_next``). ``POST /_sim/reset`` clears
these, and forgets every file and batch.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from apps.simulator.control import HEADERS


def _error(status: int, message: str, *, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return web.json_response(body, status=status, headers=HEADERS)


@dataclass
class SimFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def as_json(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclass
class SimBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict | None = None
    counts: dict = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    stamps: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "in_progress_at": self.stamps.get("in_progress"),
                "expires_at": self.created_at + 86400, "finalizing_at": self.stamps.get("finalizing"),
                "completed_at": self.stamps.get("completed"), "failed_at": self.stamps.get("failed"),
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": dict(self.counts), "metadata": self.metadata}


@dataclass
class BatchStore:
    """The files and batches of one simulated upstream, and the test controls."""

    delay_ms: float = 1000.0
    default_delay_ms: float = 1000.0
    released: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while batches are held
    fail_next: str | None = None
    expire_next: bool = False  # Anthropic's message batches (apps.simulator.message_batches)
    files: dict[str, SimFile] = field(default_factory=dict)
    batches: dict[str, SimBatch] = field(default_factory=dict)
    message_batches: dict = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.released.set()

    @property
    def hold(self) -> bool:
        return not self.released.is_set()

    def hold_set(self, hold: bool) -> None:
        if hold:
            self.released.clear()
        else:
            self.released.set()

    def reset(self) -> None:
        self.delay_ms, self.fail_next, self.expire_next = self.default_delay_ms, None, False
        self.hold_set(False)
        self.files.clear()
        self.batches.clear()
        self.message_batches.clear()

    def file_add(self, *, filename: str, purpose: str, data: bytes) -> SimFile:
        file = SimFile(f"file-sim{secrets.token_hex(8)}", filename, purpose, data, int(time.time()))
        self.files[file.id] = file
        return file


class BatchApi:
    """The handlers of the Files and Batch API."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store

    async def file_create(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except ValueError:
            return _error(400, "Send the file as multipart/form-data.")
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            return _error(400, "'purpose' must be 'batch'.", param="purpose")
        if not isinstance(upload, web.FileField):
            return _error(400, "'file' is required.", param="file")
        file = self.store.file_add(filename=upload.filename or "upload.jsonl", purpose="batch",
                                   data=upload.file.read())
        return web.json_response(file.as_json(), headers=HEADERS)

    def _file(self, request: web.Request) -> SimFile | None:
        return self.store.files.get(request.match_info["file_id"])

    async def file_get(self, request: web.Request) -> web.Response:
        file = self._file(request)
        if file is None:
            return _error(404, "No such file.")
        return web.json_response(file.as_json(), headers=HEADERS)

    async def file_content(self, request: web.Request) -> web.Response:
        file = self._file(request)
        if file is None:
            return _error(404, "No such file.")
        return web.Response(body=file.data, content_type="application/octet-stream", headers=HEADERS)

    async def batch_create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not JSON.")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        file = self.store.files.get(body.get("input_file_id"))
        if file is None:
            return _error(400, "'input_file_id' names no file.", param="input_file_id")
        if body.get("endpoint") not in ("/v1/chat/completions", "/v1/embeddings"):
            return _error(400, "'endpoint' must be /v1/chat/completions or /v1/embeddings.", param="endpoint")
        batch = SimBatch(f"batch_sim{secrets.token_hex(8)}", file.id, body["endpoint"],
                         str(body.get("completion_window") or "24h"), body.get("metadata"), int(time.time()))
        self.store.batches[batch.id] = batch
        fail, self.store.fail_next = self.store.fail_next, None
        task = asyncio.ensure_future(self._run(batch, file, str(request.url.origin()), fail))
        self.store.tasks.add(task)
        task.add_done_callback(self.store.tasks.discard)
        return web.json_response(batch.as_json(), headers=HEADERS)

    async def batch_get(self, request: web.Request) -> web.Response:
        batch = self.store.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such batch.")
        return web.json_response(batch.as_json(), headers=HEADERS)

    async def batch_list(self, request: web.Request) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 100)
        except ValueError:
            return _error(400, "'limit' must be a number.", param="limit")
        batches = sorted(self.store.batches.values(), key=lambda b: b.created_at, reverse=True)[:limit]
        data = [b.as_json() for b in batches]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None}, headers=HEADERS)

    async def control(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not JSON.")
        if "hold" in body:
            self.store.hold_set(bool(body["hold"]))
        if "fail_next" in body:
            self.store.fail_next = body["fail_next"] or None
        if "expire_next" in body:
            self.store.expire_next = bool(body["expire_next"])
        if isinstance(body.get("delay_ms"), int | float):
            self.store.delay_ms = float(body["delay_ms"])
        return web.json_response({"hold": self.store.hold, "fail_next": self.store.fail_next,
                                  "expire_next": self.store.expire_next, "delay_ms": self.store.delay_ms,
                                  "batches": len(self.store.batches),
                                  "message_batches": len(self.store.message_batches)}, headers=HEADERS)

    async def _run(self, batch: SimBatch, file: SimFile, origin: str, fail: str | None) -> None:
        await asyncio.sleep(self.store.delay_ms / 1000)
        lines = [line for line in file.data.splitlines() if line.strip()]
        batch.counts["total"] = len(lines)
        if fail is not None:
            batch.status, batch.stamps["failed"] = "failed", int(time.time())
            batch.errors = {"object": "list", "data": [{"code": "simulated_failure", "message": fail,
                                                        "param": None, "line": None}]}
            return
        batch.status, batch.stamps["in_progress"] = "in_progress", int(time.time())
        await self.store.released.wait()
        output, errors = [], []
        async with aiohttp.ClientSession() as session:
            for number, raw in enumerate(lines):
                out, ok = await self._line(session, origin, batch, number, raw)
                (output if ok else errors).append(orjson.dumps(out))
                batch.counts["completed" if ok else "failed"] += 1
        batch.status, batch.stamps["finalizing"] = "finalizing", int(time.time())
        if output:
            batch.output_file_id = self.store.file_add(filename=f"{batch.id}_output.jsonl", purpose="batch_output",
                                                       data=b"\n".join(output) + b"\n").id
        if errors:
            batch.error_file_id = self.store.file_add(filename=f"{batch.id}_error.jsonl", purpose="batch_output",
                                                      data=b"\n".join(errors) + b"\n").id
        batch.status, batch.stamps["completed"] = "completed", int(time.time())

    async def _line(self, session: aiohttp.ClientSession, origin: str, batch: SimBatch, number: int,
                    raw: bytes) -> tuple[dict, bool]:
        line_id = f"batch_req_sim{batch.id[-8:]}{number}"
        try:
            item = orjson.loads(raw)
            custom_id, body = item["custom_id"], item["body"]
            if item.get("url") != batch.endpoint or not isinstance(body, dict):
                raise ValueError
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return {"id": line_id, "custom_id": None, "response": None,
                    "error": {"code": "invalid_request", "message": "The line is not a request of this batch."}}, False
        async with session.post(origin + batch.endpoint, json=body) as response:
            answer = await response.read()
            status, request_id = response.status, response.headers.get("x-request-id", line_id)
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            parsed = {"error": {"message": answer.decode(errors="replace")[:500], "type": "server_error"}}
        return {"id": line_id, "custom_id": custom_id,
                "response": {"status_code": status, "request_id": request_id, "body": parsed}, "error": None}, (
            status == 200)


def batch_routes(app: web.Application, store: BatchStore) -> None:
    api = BatchApi(store)
    app.router.add_post("/v1/files", api.file_create)
    app.router.add_get("/v1/files/{file_id}", api.file_get)
    app.router.add_get("/v1/files/{file_id}/content", api.file_content)
    app.router.add_post("/v1/batches", api.batch_create)
    app.router.add_get("/v1/batches", api.batch_list)
    app.router.add_get("/v1/batches/{batch_id}", api.batch_get)
    app.router.add_post("/_sim/batches", api.control)
