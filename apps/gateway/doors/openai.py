"""The OpenAI doors: ``/v1/chat/completions`` (JSON and SSE), ``/v1/embeddings``, ``/v1/models``,
the tenant's cache endpoints and feedback on a request. Each parses, asks the pipeline (or the
store), and renders."""

from __future__ import annotations

import orjson
from django.conf import settings

from apps.core.errors import BadRequest, MethodNotAllowed
from apps.gateway.asgi_io import body_read, chunks_send, header, json_send, stream_relay
from apps.gateway.dialects.openai import OPENAI_CHAT, replay_sse
from apps.gateway.doors.exchange import Exchange, Route, chat_options
from apps.gateway.pipeline.run import ChatRequest, chat, embeddings
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo
from apps.gateway.validation import body_parse
from apps.usage.feedback import feedback_parse, feedback_save, row_wait, usage_row_find


def _method(scope, allowed: str) -> None:
    if scope["method"] != allowed:
        raise MethodNotAllowed(allowed=(allowed,))


async def chat_completions(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    scope, receive, send = x.scope, x.receive, x.send
    _method(scope, "POST")
    x.chat = ChatRequest(key, body_parse(await body_read(receive)), OPENAI_CHAT, x.started,
                         **chat_options(scope))
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
    call, answer = await embeddings(runtime, key, body_parse(await body_read(x.receive)), started=x.started,
                                    traceparent=header(x.scope, b"traceparent"))
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
    stats["semantic_ready"] = runtime.semantic_ready(key, cache=True)
    await json_send(x.send, 200, orjson.dumps(stats))


async def cache_clear(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    _method(x.scope, "POST")
    deleted = await runtime.cache.clear(key.tenant_id)
    await json_send(x.send, 200, orjson.dumps({"object": "cache.cleared", "deleted": deleted}))


async def _feedback(runtime: Runtime, x: Exchange, key: KeyInfo, kind: str):
    _method(x.scope, "POST")
    body = feedback_parse(body_parse(await body_read(x.receive)), kind=kind)
    row = await usage_row_find(runtime.cache.pool, tenant_id=key.tenant_id, request_id=body.request_id,
                               wait=row_wait(body.request_id, settings.USAGE_FLUSH_INTERVAL))
    return body, row


async def cache_feedback(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """``POST /v1/cache/feedback``: was a cache hit the answer to its prompt? A wrong exact hit
    removes its entry; a wrong semantic hit raises the entry's bar above that hit's similarity."""
    body, row = await _feedback(runtime, x, key, "cache")
    if row.cache_outcome not in ("exact", "semantic"):
        raise BadRequest(f"request '{row.request_id}' was not answered from the cache (cache: {row.cache_outcome})",
                         param="request_id", code="not_a_cache_hit")
    action = "recorded"
    if body.score == 0:
        action = "entry_unknown" if row.cache_entry_id is None else await runtime.cache.wrong_hit(
            tenant_id=key.tenant_id, entry_id=row.cache_entry_id, outcome=row.cache_outcome,
            similarity=row.cache_similarity)
    await feedback_save(runtime.cache.pool, tenant_id=key.tenant_id, api_key_id=key.id, kind="cache", body=body,
                        row=row, action=action)
    await json_send(x.send, 200, orjson.dumps({
        "object": "cache.feedback", "request_id": row.request_id, "correct": body.score == 1,
        "cache": row.cache_outcome, "similarity": row.cache_similarity, "action": action}))


async def outcome_feedback(runtime: Runtime, x: Exchange, key: KeyInfo) -> None:
    """``POST /v1/feedback``: how good an answer was, kept against its usage row, and scored for
    the tenant's learned router when a learned rule routed the request."""
    body, row = await _feedback(runtime, x, key, "outcome")
    await feedback_save(runtime.cache.pool, tenant_id=key.tenant_id, api_key_id=key.id, kind="outcome", body=body,
                        row=row, action="")
    learned = await runtime.routers.score(tenant_id=key.tenant_id, request_id=row.request_id,
                                          model_name=row.model_used, score=body.score)
    await json_send(x.send, 200, orjson.dumps({
        "object": "feedback", "request_id": row.request_id, "score": body.score, "model": row.model_used,
        "learned_routing": learned}))


def _bearer(scope) -> str | None:
    return header(scope, b"authorization")


ROUTES = {
    path: Route(handler, OPENAI_CHAT, _bearer) for path, handler in (
        ("/v1/chat/completions", chat_completions),
        ("/v1/embeddings", embeddings_create),
        ("/v1/models", models_list),
        ("/v1/cache/stats", cache_stats),
        ("/v1/cache/clear", cache_clear),
        ("/v1/cache/feedback", cache_feedback),
        ("/v1/feedback", outcome_feedback),
    )
}
