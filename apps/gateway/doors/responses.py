"""The Responses doors: ``POST /v1/responses`` (JSON or SSE) through the pipeline, and the
stored responses of the key's tenant: ``GET`` / ``DELETE /v1/responses/{id}``,
``POST /v1/responses/{id}/cancel``, ``GET /v1/responses/{id}/input_items``.

A response is stored (``store``, true unless sent false) before its answer's last byte leaves,
so a client may retrieve or continue it the moment it has read it. Another tenant's response
is answered exactly as an unknown id. A ``background: true`` request runs off the request
(:mod:`.background`): it can be followed with ``GET ...?stream=true`` and cancelled.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

import orjson
from django.conf import settings

from apps.core.errors import BadRequest, MethodNotAllowed, NotFound
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.dialects.responses.dialect import RESPONSES, Responses
from apps.gateway.dialects.responses.translate import items_stored, response_id_of
from apps.gateway.doors.background import ENDS, RUNS, BackgroundRun, Following, follow, sse, stale_fail
from apps.gateway.doors.exchange import Exchange, Route, chat_options
from apps.gateway.pipeline.run import ChatRequest, chat
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo
from apps.gateway.validation import body_parse, invalid_type
from apps.responses.store import Stored, response_delete, response_end, response_find, response_save

PREFIX = "/v1/responses/"
ITEM = "/v1/responses/<response_id>"
CANCEL = "/v1/responses/<response_id>/cancel"
INPUT_ITEMS = "/v1/responses/<response_id>/input_items"
_MAX_ID = 64


def route_path(path: str) -> str | None:
    """The :data:`ROUTES` key serving a ``/v1/responses/...`` path, or None."""
    if not path.startswith(PREFIX):
        return None
    parts = path[len(PREFIX):].split("/")
    if len(parts) == 1 and parts[0]:
        return ITEM
    if len(parts) == 2 and parts[0] and parts[1] in ("cancel", "input_items"):
        return CANCEL if parts[1] == "cancel" else INPUT_ITEMS
    return None


def _method(scope, *allowed: str) -> None:
    if scope["method"] not in allowed:
        raise MethodNotAllowed(allowed=allowed)


class _Saving:
    """A pipeline stream that stores its response before the event carrying it goes out."""

    def __init__(self, stream, save) -> None:
        self.stream = stream
        self.save = save

    def client_left(self) -> None:
        self.stream.client_left()

    async def __aiter__(self):
        pieces = self.stream.__aiter__()
        # A translated stream's translator builds the response; a relayed one reads it itself.
        source = self.stream.translator or self.stream
        saved = False
        try:
            async for data in pieces:
                if not saved and source.response is not None:
                    saved = True
                    await self.save(source.response)
                yield data
        finally:
            await pieces.aclose()


async def responses_create(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    scope, send = x.scope, x.send
    _method(scope, "POST")
    body = body_parse(await body_read(x.receive))
    dialect = RESPONSES.of(body)
    history: list = []
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise invalid_type("previous_response_id", "a string", previous)
        stored = await _find(runtime, key, previous)
        if stored is None:
            raise BadRequest(f"Previous response with id '{previous[:_MAX_ID]}' not found.",
                             param="previous_response_id", code="previous_response_not_found")
        if stored.status in ("queued", "in_progress"):
            raise BadRequest(f"Previous response with id '{previous[:_MAX_ID]}' is still {stored.status}: "
                             "continue it once it has finished.", param="previous_response_id",
                             code="previous_response_in_progress")
        history = stored.context
        dialect = dialect.continuing(previous, history)
    if body.get("background") is True:
        await _background_create(runtime, x, key, body, dialect, history)
        return
    x.chat = ChatRequest(key, body, dialect, x.started,
                         **chat_options(scope))
    answer = await chat(runtime, x.chat)
    call = answer.call
    store = body.get("store") is not False

    async def save(response: dict) -> None:
        if not store:
            return
        items = items_stored(body["input"], response_id_of(call.request_id).removeprefix("resp_"))
        await response_save(runtime.cache.pool, tenant_id=key.tenant_id, api_key_id=key.id,
                            request_id=call.request_id, response=response, input_items=items,
                            context=history + items + response["output"])

    try:
        if answer.stream is not None:
            await stream_relay(_Saving(answer.stream, save), x.receive, send, call.headers())
        elif answer.hit is None:
            await save(orjson.loads(answer.raw))
            await json_send(send, 200, answer.raw, call.headers())
        elif call.stream:
            chunks, response = dialect.replay_events(call, body, answer.hit.response)
            await save(response)
            await chunks_send(send, call.headers(), chunks)
        else:
            response = dialect.replay_response(call, body, answer.hit.response)
            await save(response)
            await json_send(send, 200, orjson.dumps(response), call.headers())
    finally:
        await answer.close()


async def _background_create(runtime: Runtime, x: Exchange, key: KeyInfo, body: dict, dialect: Responses,
                             history: list) -> None:
    """Start the run; once the pipeline accepts the request, store it queued and answer it (its
    events, with ``stream: true``). A refusal before then is this request's answer."""
    run = BackgroundRun(runtime, tenant_id=key.tenant_id, context=history)
    # Always a stream from the provider, so that its events can be replayed and followed.
    run.request = x.chat = ChatRequest(key, {**body, "stream": True}, dialect.in_background(run.accept), x.started,
                                       **chat_options(x.scope))
    task = run.start()
    try:
        await asyncio.wait({run.accepted, task}, return_when=asyncio.FIRST_COMPLETED)
        call = run.accepted.result()  # the pipeline's refusal, raised
        response_id = response_id_of(call.request_id)
        items = items_stored(body["input"], response_id.removeprefix("resp_"))
        model = call.chain[0].name if call.chain else str(body.get("model"))
        response = {**dialect.shell(call, run.request.body, model), "status": "queued"}
        created = {"type": "response.created", "response": response, "sequence_number": 0}
        await response_save(runtime.cache.pool, tenant_id=key.tenant_id, api_key_id=key.id,
                            request_id=call.request_id, response=response, input_items=items,
                            context=history + items, background=True, events=[created],
                            stale_seconds=settings.RESPONSES_BACKGROUND_STALE)
        run.input_items, run.response, run.events = items, response, [created]
    finally:
        run.stored.set()  # the run goes on (or, unstored because this request failed or left, ends)
    if not body.get("stream"):
        await json_send(x.send, 200, orjson.dumps(response), call.headers())
        return
    events = follow(runtime, tenant_id=key.tenant_id, response_id=response_id, after=0)
    await stream_relay(Following(events, first=sse(created)), x.receive, x.send, call.headers())


async def _find(runtime: Runtime, key: KeyInfo, response_id: str) -> Stored | None:
    return await response_find(runtime.cache.pool, tenant_id=key.tenant_id, response_id=response_id)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id[:_MAX_ID]}' not found.", param="response_id",
                    code="response_not_found")


async def _stored(runtime: Runtime, x: Exchange, key: KeyInfo) -> tuple[str, Stored]:
    response_id = x.scope["path"][len(PREFIX):].split("/")[0]
    stored = await _find(runtime, key, response_id)
    if stored is None:
        raise _not_found(response_id)
    if stored.stale:  # its run died with its process
        failed = await stale_fail(runtime, tenant_id=key.tenant_id, response_id=response_id)
        if failed is not None:
            stored = Stored(stored.response_id, failed, stored.input_items, stored.context, True, "failed")
    return response_id, stored


def _run_of(key: KeyInfo, response_id: str) -> BackgroundRun | None:
    run = RUNS.get(response_id)
    return run if run is not None and run.tenant_id == key.tenant_id else None


def _starting_after(query: dict[str, str]) -> int:
    """``starting_after``: a sequence number (-1, every event, when absent)."""
    value = query.get("starting_after")
    if value is None:
        return -1
    try:
        after = int(value)
    except ValueError:
        after = -1
    if after < 0:
        raise BadRequest("Invalid 'starting_after': expected a sequence number (an integer from 0).",
                         param="starting_after", code="invalid_value")
    return after


async def response_item(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """``GET`` (the response as it stands; with ``stream=true``, a background response's events
    after ``starting_after``, followed until it ends) or ``DELETE`` a stored response."""
    _method(x.scope, "GET", "DELETE")
    response_id = x.scope["path"][len(PREFIX):]
    if x.scope["method"] == "GET":
        query = _query(x.scope)
        streamed = query.get("stream", "false").lower()
        if streamed not in ("true", "false", "1", "0"):
            raise BadRequest("Invalid 'stream': expected true or false.", param="stream", code="invalid_value")
        after = _starting_after(query)
        _, stored = await _stored(runtime, x, key)
        if streamed in ("false", "0"):
            await json_send(x.send, 200, orjson.dumps(stored.response))
            return
        if not stored.background:
            raise BadRequest("Only responses created with background=true can be streamed again.", param="stream",
                             code="invalid_value")
        events = follow(runtime, tenant_id=key.tenant_id, response_id=response_id, after=after)
        await stream_relay(Following(events), x.receive, x.send, [])
        return
    run = _run_of(key, response_id)
    if run is not None:
        await run.cancel()  # a deleted response stops running
    if not await response_delete(runtime.cache.pool, tenant_id=key.tenant_id, response_id=response_id):
        raise _not_found(response_id)
    await json_send(x.send, 200, orjson.dumps({"id": response_id, "object": "response", "deleted": True}))


async def response_cancel(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """Cancel a background response still queued or in progress: it stops, and is answered
    ``cancelled`` (again, for one already cancelled). A response that was not created in the
    background, or has finished, is refused as OpenAI refuses it."""
    _method(x.scope, "POST")
    response_id, stored = await _stored(runtime, x, key)
    if not stored.background:
        raise BadRequest("Only responses created with background=true can be cancelled.",
                         code="response_not_cancellable")
    response = stored.response
    if stored.status not in ENDS:
        run = _run_of(key, response_id)
        if run is not None:
            response = await run.cancel()
        else:  # running in another process (or stopped with it): its run sees the row cancelled
            response = await response_end(runtime.cache.pool, tenant_id=key.tenant_id, response_id=response_id,
                                          status="cancelled")
            if response is None:
                _, stored = await _stored(runtime, x, key)
                response = stored.response
    if response.get("status") != "cancelled":
        raise BadRequest(f"Cannot cancel a response that has {response.get('status')}: only a queued or "
                         "in-progress background response can be cancelled.", code="response_not_cancellable")
    await json_send(x.send, 200, orjson.dumps(response))


def _query(scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


async def response_input_items(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """``GET /v1/responses/{id}/input_items``: the request's input items, paginated as OpenAI's
    lists are (``limit`` 1-100, default 20; ``order`` desc by default; ``after`` / ``before``
    an item id)."""
    _method(x.scope, "GET")
    query = _query(x.scope)
    limit = query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise BadRequest("Invalid 'limit': expected an integer from 1 to 100.", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("Invalid 'order': expected 'asc' or 'desc'.", param="order", code="invalid_value")
    _, stored = await _stored(runtime, x, key)
    items = list(stored.input_items)
    if order == "desc":
        items.reverse()
    for name in ("after", "before"):
        anchor = query.get(name)
        if anchor is not None:
            ids = [item.get("id") for item in items]
            if anchor not in ids:
                raise BadRequest(f"Invalid '{name}': no input item '{anchor[:_MAX_ID]}' in this response.",
                                 param=name, code="invalid_value")
            at = ids.index(anchor)
            items = items[at + 1:] if name == "after" else items[:at]
    page = items[:int(limit)]
    await json_send(x.send, 200, orjson.dumps({
        "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None, "has_more": len(items) > len(page)}))


def _bearer(scope) -> str | None:
    return header(scope, b"authorization")


ROUTES = {
    "/v1/responses": Route(responses_create, RESPONSES, _bearer),
    ITEM: Route(response_item, RESPONSES, _bearer),
    CANCEL: Route(response_cancel, RESPONSES, _bearer),
    INPUT_ITEMS: Route(response_input_items, RESPONSES, _bearer),
}
