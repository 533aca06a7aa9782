"""``POST /v1/complete``: the simple form of a completion, for scripts and quick integrations.

    {"prompt": "...", "model": "auto" (default), "use_cache": true, "stream": false}
    -> {"content", "model_used", "cached", "latency_ms", "tokens": {"input", "output"}, "cost"}

A DRF view (its serializer validates the JSON body); the work runs through the same async pipeline
as ``/v1/chat/completions`` (same auth cache, routing, fallbacks, cost and usage row). With
``stream: true`` the answer is Server-Sent Events: ``{"content": "..."}`` per delta, then one
``{"done": true, ...}`` event with the same fields as the JSON answer.
"""

from __future__ import annotations

import time

import orjson
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, StreamingHttpResponse
from rest_framework import serializers
from rest_framework.views import APIView

from apps.core.errors import BadRequest, GatewayError, PayloadTooLarge, error_body
from apps.gateway import pipeline
from apps.gateway.caching import cache_hit_log, cache_lookup, cache_plan, cache_settle, completion_from_stream
from apps.gateway.runtime import runtime
from apps.gateway.validation import body_parse
from apps.providers.transport import UpstreamClientError


class CompleteRequest(serializers.Serializer):
    prompt = serializers.CharField(max_length=1_000_000, trim_whitespace=False)
    model = serializers.CharField(max_length=200, required=False, default="auto")
    use_cache = serializers.BooleanField(required=False, default=True)
    stream = serializers.BooleanField(required=False, default=False)
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    system = serializers.CharField(required=False, allow_blank=True, max_length=100_000)


def _json(payload: dict, status: int = 200, headers: list | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
    for name, value in headers or []:
        response[name.decode()] = value.decode()
    return response


def _error(error: GatewayError) -> HttpResponse:
    response = HttpResponse(error_body(error), status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    return response


def _summary(call, content: str) -> dict:
    return {
        "content": content,
        "model_used": call.model.name if call.model else None,
        "cached": call.cache in ("exact", "semantic"),
        "latency_ms": round((time.perf_counter() - call.started) * 1000, 2),
        "tokens": {"input": call.input_tokens, "output": call.output_tokens},
        "cost": str(call.cost),
        "request_id": call.request_id,
    }


class CompleteView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def post(self, request):
        started = time.perf_counter()
        try:
            # The body is read as the chat door reads it (orjson, with its depth limit), not by
            # DRF's parsers: Python's json recurses, and a deeply nested body would crash it.
            payload = body_parse(request.body)
        except RequestDataTooBig:
            return _error(PayloadTooLarge(f"The request body exceeds {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."))
        except GatewayError as error:
            return _error(error)
        form = CompleteRequest(data=payload)
        if not form.is_valid():
            field, problems = next(iter(form.errors.items()))
            return _error(BadRequest(f"'{field}': {' '.join(str(p) for p in problems)}", param=field))
        data = form.validated_data
        messages = [{"role": "user", "content": data["prompt"]}]
        if data.get("system"):
            messages.insert(0, {"role": "system", "content": data["system"]})
        body = {"model": data["model"], "messages": messages, "stream": data["stream"]}
        if data.get("max_tokens"):
            body["max_tokens"] = data["max_tokens"]
        try:
            return async_to_sync(_complete)(request.headers.get("Authorization"), orjson.dumps(body), started,
                                            data["use_cache"])
        except GatewayError as error:
            return _error(error)
        except UpstreamClientError as exc:
            # The provider refused the request itself: its answer is the client's, as on the chat door.
            return HttpResponse(exc.body, status=exc.status, content_type=exc.content_type)


def _content(answer: dict) -> str:
    return "".join((c.get("message") or {}).get("content") or "" for c in answer.get("choices") or [])


async def _complete(authorization: str | None, raw: bytes, started: float, use_cache: bool):
    await runtime.start()
    key = await runtime.authenticate(authorization)
    call, body = await pipeline.chat_prepare(runtime, key, raw, started=started)
    plan = cache_plan(call, body, cache_control=None if use_cache else "no-store", namespace=None)
    if plan is not None:
        hit = await cache_lookup(runtime, call, plan)
        if hit is not None:
            cache_hit_log(runtime, call, hit)
            if not call.stream:
                return _json(_summary(call, _content(hit.response)), headers=call.headers())
            response = StreamingHttpResponse(_replayed_events(call, hit), content_type="text/event-stream")
            for name, value in call.headers():
                response[name.decode()] = value.decode()
            return response
    stream = None
    try:
        if not call.stream:
            _raw, answer = await pipeline.chat_json(runtime, call, body)
            cache_settle(runtime, call, plan, answer)
            return _json(_summary(call, _content(answer)), headers=call.headers())
        stream = await pipeline.chat_stream_open(runtime, call, body)
    finally:
        if stream is None:
            cache_settle(runtime, call, plan, None)  # failed, or already settled above (a no-op then)
    if plan is not None:
        stream.on_complete = lambda done: cache_settle(
            runtime, call, plan, completion_from_stream(done) if done is not None else None)
    response = StreamingHttpResponse(_simple_events(stream, call), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    for name, value in call.headers():
        response[name.decode()] = value.decode()
    return response


async def _simple_events(stream, call):
    parts: list[str] = []
    async for data in stream:
        for event in data.split(b"\n\n"):
            if not event.startswith(b"data:") or event.startswith(b"data: [DONE]"):
                continue
            chunk = orjson.loads(event[5:])
            if "error" in chunk:
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                return
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    yield b"data: " + orjson.dumps({"content": text}) + b"\n\n"
    yield b"data: " + orjson.dumps({"done": True, **_summary(call, "".join(parts))}) + b"\n\n"


async def _replayed_events(call, hit):
    content = _content(hit.response)
    yield b"data: " + orjson.dumps({"content": content}) + b"\n\n"
    yield b"data: " + orjson.dumps({"done": True, **_summary(call, content)}) + b"\n\n"
