"""The OpenAI doors: ``/v1/chat/completions`` (JSON and SSE), ``/v1/embeddings``, ``/v1/models``
and the tenant's cache endpoints. Each parses, asks the pipeline, and renders."""

from __future__ import annotations

import orjson

from apps.core.errors import MethodNotAllowed
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.dialects.openai import OPENAI_CHAT, replay_sse
from apps.gateway.doors.exchange import Exchange, Route
from apps.gateway.pipeline.run import ChatRequest, chat, embeddings
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo
from apps.gateway.validation import body_parse


def _method(scope, allowed: str) -> None:
    if scope["method"] != allowed:
        raise MethodNotAllowed(allowed=(allowed,))


async def chat_completions(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    scope, receive, send = x.scope, x.receive, x.send
    _method(scope, "POST")
    x.chat = ChatRequest(key, body_parse(await body_read(receive)), OPENAI_CHAT, x.started,
                         cache_control=header(scope, b"cache-control"),
                         namespace=header(scope, b"x-switchyard-cache-namespace"),
                         tags=header(scope, b"x-switchyard-tags"))
    answer = await chat(runtime, x.chat)
    call = answer.call
    try:
        if answer.stream is not None:
            await stream_relay(answer.stream, receive, send, call.headers())
        elif answer.hit is None:
            await json_send(send, 200, answer.raw, call.headers())
        elif call.stream:
            options = answer.prepared.body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            await chunks_send(send, call.headers(), replay_sse(answer.hit.response, include_usage=include_usage))
        else:
            await json_send(send, 200, orjson.dumps(answer.hit.response), call.headers())
    finally:
        await answer.close()


async def embeddings_create(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    _method(x.scope, "POST")
    call, answer = await embeddings(runtime, key, body_parse(await body_read(x.receive)), started=x.started)
    await json_send(x.send, 200, answer, call.headers())


async def models_list(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """``GET /v1/models``: the models this key may use, with their prices per 1M tokens."""
    _method(x.scope, "GET")
    allowed = key.allowed_models
    data = [{
        "id": "auto", "object": "model", "created": 0, "owned_by": "switchyard",
        "switchyard": {"mode": "chat", "routing": "picks the cheapest model that fits the prompt"},
    }]
    for model in sorted(runtime.snapshot.models.values(), key=lambda m: m.name):
        if allowed is not None and model.name not in allowed:
            continue
        data.append({
            "id": model.name, "object": "model", "created": 0, "owned_by": model.provider.name,
            "switchyard": {
                "mode": model.mode, "tier": model.tier, "context_window": model.context_window,
                "max_output_tokens": model.max_output_tokens,
                "pricing_per_million_tokens": {
                    "input": str(model.input_price), "cached_input": str(model.cached_input_price),
                    "output": str(model.output_price),
                },
            },
        })
    await json_send(x.send, 200, orjson.dumps({"object": "list", "data": data}))


async def cache_stats(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    _method(x.scope, "GET")
    stats = await runtime.cache.stats(key.tenant_id)
    stats["semantic_ready"] = runtime.semantic_ready(key)
    await json_send(x.send, 200, orjson.dumps(stats))


async def cache_clear(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    _method(x.scope, "POST")
    deleted = await runtime.cache.clear(key.tenant_id)
    await json_send(x.send, 200, orjson.dumps({"object": "cache.cleared", "deleted": deleted}))


def _bearer(scope) -> str | None:
    return header(scope, b"authorization")


ROUTES = {
    path: Route(handler, OPENAI_CHAT, _bearer) for path, handler in (
        ("/v1/chat/completions", chat_completions),
        ("/v1/embeddings", embeddings_create),
        ("/v1/models", models_list),
        ("/v1/cache/stats", cache_stats),
        ("/v1/cache/clear", cache_clear),
    )
}
