"""The Messages doors: ``POST /v1/messages`` (JSON or SSE) and ``POST /v1/messages/count_tokens``,
for Anthropic's SDKs (``x-api-key`` or ``Authorization: Bearer``); errors leave in Anthropic's shape."""

from __future__ import annotations

import orjson

from apps.core.errors import MethodNotAllowed
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.dialects.anthropic.dialect import ANTHROPIC_MESSAGES, count_tokens, forwarded_headers, replay_chunks
from apps.gateway.dialects.anthropic.translate import message_from_completion
from apps.gateway.doors.exchange import Exchange, Route, chat_options
from apps.gateway.pipeline.run import ChatRequest, chat
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo
from apps.gateway.validation import body_parse


def _credentials(scope) -> str | None:
    api_key = header(scope, b"x-api-key")
    if api_key:
        return "Bearer " + api_key.strip()
    return header(scope, b"authorization")


async def messages_create(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    scope, send = x.scope, x.send
    if scope["method"] != "POST":
        raise MethodNotAllowed(allowed=("POST",))
    x.chat = ChatRequest(key, body_parse(await body_read(x.receive)), ANTHROPIC_MESSAGES, x.started,
                         forwarded=forwarded_headers(scope), **chat_options(scope))
    answer = await chat(runtime, x.chat)
    call = answer.call
    headers = [(b"request-id", call.request_id.encode()), *call.headers()]
    try:
        if answer.stream is not None:
            await stream_relay(answer.stream, x.receive, send, headers)
        elif answer.hit is None:
            await json_send(send, 200, answer.raw, headers)
        elif call.stream:
            await chunks_send(send, headers, replay_chunks(call.request_id, answer.hit.response))
        else:
            message = message_from_completion(answer.hit.response, message_id=f"msg_{call.request_id}")
            await json_send(send, 200, orjson.dumps(message), headers)
    finally:
        await answer.close()


async def tokens_count(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    if x.scope["method"] != "POST":
        raise MethodNotAllowed(allowed=("POST",))
    body = body_parse(await body_read(x.receive))
    await json_send(x.send, 200, await count_tokens(runtime, key, body, forwarded=forwarded_headers(x.scope)))


ROUTES = {
    "/v1/messages": Route(messages_create, ANTHROPIC_MESSAGES, _credentials),
    "/v1/messages/count_tokens": Route(tokens_count, ANTHROPIC_MESSAGES, _credentials),
}
