"""The Responses doors: ``POST /v1/responses`` (JSON or SSE) through the pipeline, and the
stored responses of the key's tenant: ``GET`` / ``DELETE /v1/responses/{id}``,
``POST /v1/responses/{id}/cancel``, ``GET /v1/responses/{id}/input_items``.

A response is stored (``store``, true unless sent false) before its answer's last byte leaves,
so a client may retrieve or continue it the moment it has read it. Another tenant's response
is answered exactly as an unknown id.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson

from apps.core.errors import BadRequest, MethodNotAllowed, NotFound
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.dialects.responses.dialect import RESPONSES
from apps.gateway.dialects.responses.translate import items_stored, response_id_of
from apps.gateway.doors.exchange import Exchange, Route, chat_options
from apps.gateway.pipeline.run import ChatRequest, chat
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo
from apps.gateway.validation import body_parse, invalid_type
from apps.responses.store import Stored, response_delete, response_find, response_save

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
        history = stored.context
        dialect = dialect.continuing(previous, history)
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
    return response_id, stored


async def response_item(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """``GET`` (the response as it was answered) or ``DELETE`` a stored response."""
    _method(x.scope, "GET", "DELETE")
    response_id = x.scope["path"][len(PREFIX):]
    if x.scope["method"] == "GET":
        _, stored = await _stored(runtime, x, key)
        await json_send(x.send, 200, orjson.dumps(stored.response))
        return
    if not await response_delete(runtime.cache.pool, tenant_id=key.tenant_id, response_id=response_id):
        raise _not_found(response_id)
    await json_send(x.send, 200, orjson.dumps({"id": response_id, "object": "response", "deleted": True}))


async def response_cancel(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """Only a background response can be cancelled, and this gateway runs none: a stored one
    has finished, and is refused as OpenAI refuses a finished response."""
    _method(x.scope, "POST")
    await _stored(runtime, x, key)
    raise BadRequest("Only responses created with background=true can be cancelled.", code="response_not_cancellable")


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
