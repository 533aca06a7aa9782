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

from apps.core.completions import completion_text
from apps.core.errors import BadRequest, GatewayError, PayloadTooLarge, error_response
from apps.gateway.dialects.openai import OPENAI_CHAT
from apps.gateway.pipeline.run import ChatRequest, chat
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
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return error_response(PayloadTooLarge(f"The request body exceeds {limit} bytes."))
        except GatewayError as error:
            return error_response(error)
        form = CompleteRequest(data=payload)
        if not form.is_valid():
            field, problems = next(iter(form.errors.items()))
            return error_response(BadRequest(f"'{field}': {' '.join(str(p) for p in problems)}", param=field))
        data = form.validated_data
        messages = [{"role": "user", "content": data["prompt"]}]
        if data.get("system"):
            messages.insert(0, {"role": "system", "content": data["system"]})
        body = {"model": data["model"], "messages": messages, "stream": data["stream"]}
        if data.get("max_tokens"):
            body["max_tokens"] = data["max_tokens"]
        try:
            return async_to_sync(_complete)(request.headers.get("Authorization"), body, started, data["use_cache"])
        except GatewayError as error:
            return error_response(error)
        except UpstreamClientError as exc:
            # The provider refused the request itself: its answer is the client's, as on the chat door.
            return HttpResponse(exc.body, status=exc.status, content_type=exc.content_type)


async def _complete(authorization: str | None, body: dict, started: float, use_cache: bool):
    await runtime.start()
    key = await runtime.authenticate(authorization)
    answer = await chat(runtime, ChatRequest(key, body, OPENAI_CHAT, started,
                                             cache_control=None if use_cache else "no-store"))
    call = answer.call
    if answer.stream is None:
        completion = answer.hit.response if answer.hit is not None else answer.completion
        content = completion_text(completion)
        if not call.stream:
            return _json(_summary(call, content), headers=call.headers())
        events = _replayed_events(call, content)
    else:
        events = _simple_events(answer, call)
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    for name, value in call.headers():
        response[name.decode()] = value.decode()
    return response


async def _simple_events(answer, call):
    parts: list[str] = []
    try:
        async for data in answer.stream:
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
    finally:
        await answer.close()
    yield b"data: " + orjson.dumps({"done": True, **_summary(call, "".join(parts))}) + b"\n\n"


async def _replayed_events(call, content: str):
    yield b"data: " + orjson.dumps({"content": content}) + b"\n\n"
    yield b"data: " + orjson.dumps({"done": True, **_summary(call, content)}) + b"\n\n"
