"""``/v1/messages`` through the shared pipeline: the same Call, routing, limits, fallbacks,
cost and usage row as ``/v1/chat/completions``; only the bodies differ.

    prepare   validate and translate the Anthropic body to the chat form, route it (an alias
              or ``auto`` routes as on the chat door), reserve limits
    answer    per attempt, by the model's provider: a native Anthropic provider gets the
              client's body (the model id swapped) and its answer goes back byte for byte; an
              OpenAI-compatible one gets the chat form and its answer is translated
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
from django.conf import settings

from apps.core import tokens
from apps.core.errors import GatewayError
from apps.gateway import pipeline
from apps.gateway.limits import limits_reserve
from apps.gateway.messages.errors import error_event, upstream_error_translate
from apps.gateway.messages.native import NativeMessagesStream
from apps.gateway.messages.sse import AnthropicFromOpenAI
from apps.gateway.messages.translate import (
    anthropic_usage,
    chat_payload,
    completion_from_message,
    message_from_completion,
    messages_body_translate,
    native_payload,
    replayable,
)
from apps.gateway.pipeline import Call, ChatStream
from apps.gateway.validation import body_parse
from apps.providers.transport import ANTHROPIC_KIND, UpstreamClientError, open_stream, post_json, with_fallbacks

ENDPOINT = "/v1/messages"
# Client headers a native provider should see (the API version, and opt-ins to beta features).
FORWARDED_HEADERS = (b"anthropic-version", b"anthropic-beta")


@dataclass(slots=True)
class MessagesRequest:
    call: Call
    original: dict  # the client's Anthropic body
    body: dict  # its chat form: what routing, limits and the cache see
    forwarded: dict[str, str] = field(default_factory=dict)
    payloads: dict[int, bytes] = field(default_factory=dict)  # per model id, serialized once

    def payload(self, model, *, stream: bool) -> bytes:
        body = self.payloads.get(model.id)
        if body is None:
            if model.provider.kind == ANTHROPIC_KIND:
                body = native_payload(self.original, model.upstream_id)
            else:
                body = chat_payload(self.body, model.upstream_id, stream=stream)
            self.payloads[model.id] = body
        return body


def _native(model) -> bool:
    return model.provider.kind == ANTHROPIC_KIND


def forwarded_headers(scope) -> dict[str, str]:
    return {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in FORWARDED_HEADERS}


async def messages_prepare(runtime, key, raw: bytes, *, started: float, tags_header: str | None,
                           forwarded: dict[str, str]) -> MessagesRequest:
    """Validate, translate and route a Messages request; reserve its limits."""
    call = Call(key=key, endpoint=ENDPOINT, started=started)
    original = body_parse(raw)
    try:
        body, unsupported = messages_body_translate(original)
        call.stream = bool(body.get("stream"))
        pipeline.call_route(runtime, call, body, tags_header, mode="chat", dialect="anthropic",
                            native_only=", ".join(unsupported) if unsupported else None)
        await limits_reserve(runtime, call, body)
        if call.stream and call.chain and not _native(call.chain[0]):
            # A translated stream's message_start carries this count: made while the provider
            # thinks (the callback runs once this request waits on it), not after its first bytes.
            asyncio.get_running_loop().call_soon(call.prompt_tokens_count, body["messages"])
    except GatewayError as exc:
        call.requested_model = call.requested_model or str(original.get("model") or "")[:200]
        call.status, call.error_code = exc.status, exc.code
        call.overhead_ms = (time.perf_counter() - call.started) * 1000
        call.log(runtime)
        raise
    return MessagesRequest(call=call, original=original, body=body, forwarded=forwarded)


def _attempt(runtime, request: MessagesRequest, send, *, stream: bool):
    """One upstream attempt per model, by ``send`` (``post_json`` or ``open_stream``): the client's
    body to a native provider, its chat form to any other (whose 4xx is rewritten in Anthropic's
    shape)."""
    async def attempt(model):
        if _native(model):
            return await send(runtime.pool, model, "/messages", request.payload(model, stream=stream),
                              request.forwarded)
        try:
            return await send(runtime.pool, model, "/chat/completions", request.payload(model, stream=stream))
        except UpstreamClientError as exc:
            raise UpstreamClientError(exc.status, upstream_error_translate(exc.status, exc.body),
                                      "application/json", model=exc.model, code=exc.code) from None

    return attempt


async def messages_json(runtime, request: MessagesRequest) -> tuple[bytes, dict | None]:
    """The answer's bytes, and its chat.completion form for the cache (None: not cacheable)."""
    call = request.call
    attempt = _attempt(runtime, request, post_json, stream=False)
    model, raw, parsed = await pipeline.upstream_json(runtime, call, attempt)
    if _native(model):
        usage = parsed.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
            call.set_usage_anthropic(usage, fallback_prompt=0, fallback_completion=0)
        else:
            text = "".join(b.get("text") or "" for b in parsed.get("content") or [] if isinstance(b, dict))
            call.set_usage_anthropic(None, fallback_prompt=call.prompt_tokens_count(request.body["messages"]),
                                     fallback_completion=tokens.text_tokens(text))
        pipeline.call_done(runtime, call)
        cacheable = parsed.get("type") == "message" and replayable(parsed)
        return raw, completion_from_message(parsed, completion_id=f"chatcmpl-{call.request_id}") if cacheable else None
    usage = parsed.get("usage")
    if isinstance(usage, dict):
        call.set_usage(usage, fallback_prompt=0, fallback_completion=0)
    else:
        text = "".join((c.get("message") or {}).get("content") or "" for c in parsed.get("choices") or []
                       if isinstance(c, dict))
        call.set_usage(None, fallback_prompt=call.prompt_tokens_count(request.body["messages"]),
                       fallback_completion=tokens.text_tokens(text))
        parsed["usage"] = {"prompt_tokens": call.input_tokens, "completion_tokens": call.output_tokens,
                           "total_tokens": call.input_tokens + call.output_tokens}
    answer = orjson.dumps(message_from_completion(parsed, message_id=f"msg_{call.request_id}"))
    pipeline.call_done(runtime, call)
    return answer, parsed


def anthropic_usage_of(call: Call) -> dict:
    """What a finished call used, in Anthropic's shape."""
    return {"input_tokens": max(call.input_tokens - call.cached_tokens - call.cache_write_tokens, 0),
            "cache_creation_input_tokens": call.cache_write_tokens, "cache_read_input_tokens": call.cached_tokens,
            "output_tokens": call.output_tokens}


async def messages_stream_open(runtime, request: MessagesRequest) -> ChatStream:
    """Open the stream (falling back until one upstream sends its first bytes)."""
    call = request.call
    opened = await pipeline.upstream_stream_open(runtime, call, _attempt(runtime, request, open_stream, stream=True))
    if _native(opened.model):
        return NativeMessagesStream(runtime, call, request.body, opened)
    stream = ChatStream(runtime, call, request.body, opened)
    # The provider counts the prompt only at the end; message_start carries this count of it.
    estimate = {"input_tokens": call.prompt_tokens_count(request.body["messages"]), "output_tokens": 0}
    translator = AnthropicFromOpenAI(message_id=f"msg_{call.request_id}", model=opened.model.upstream_id,
                                     usage_of=lambda: anthropic_usage_of(call), start_usage=estimate)
    stream.transform = translator.translate
    stream.content_started = translator.content_started
    stream.translator = translator
    stream.error_event = lambda error: error_event(error, call.request_id)
    return stream


def replay_chunks(request_id: str, completion: dict, *, pieces: int = 8) -> list[bytes]:
    """A cached chat.completion as an Anthropic stream in several chunks: the answer is cut into
    OpenAI chunks (text in ``pieces`` parts, then its tool calls), each then passed through the
    translator a live stream uses."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    words = text.split(" ")
    size = max(len(words) // pieces, 1)
    parts = [" ".join(words[i:i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)]
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": part} for part in parts if part]
    deltas += [{"tool_calls": [{**call, "index": index}]} for index, call in enumerate(message.get("tool_calls") or [])]
    events = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]})
    if isinstance(completion.get("usage"), dict):
        events.append({"choices": [], "usage": completion["usage"]})
    usage = completion.get("usage")
    start_usage = {**anthropic_usage(usage), "output_tokens": 0} if isinstance(usage, dict) else None
    translator = AnthropicFromOpenAI(message_id=f"msg_{request_id}", model=completion.get("model") or "",
                                     start_usage=start_usage)
    chunks = [translator.translate(b"data: " + orjson.dumps(event) + b"\n\n") for event in events]
    chunks.append(translator.translate(b"data: [DONE]\n\n"))
    return [chunk for chunk in chunks if chunk]


async def count_tokens(runtime, key, raw: bytes, *, forwarded: dict[str, str]) -> bytes:
    """``POST /v1/messages/count_tokens``: asked of the provider when it is native Anthropic,
    counted here (o200k, as for usage estimates) otherwise. No usage row: nothing is billed."""
    original = body_parse(raw)
    body, unsupported = messages_body_translate(original, count_only=True)
    call = Call(key=key, endpoint=ENDPOINT + "/count_tokens", started=time.perf_counter())
    pipeline.call_route(runtime, call, body, None, mode="chat", dialect="anthropic",
                        native_only=", ".join(unsupported) if unsupported else None)
    native = tuple(model for model in call.chain if _native(model))
    if native and _native(call.chain[0]):
        async def attempt(model):
            return await post_json(runtime.pool, model, "/messages/count_tokens",
                                   native_payload(original, model.upstream_id), forwarded)

        _model, (answer, _parsed), _failures = await with_fallbacks(
            native, attempt, retries=settings.GATEWAY_RETRIES, backoff=settings.GATEWAY_RETRY_BACKOFF,
            breakers=runtime.breakers)
        return answer
    counted = tokens.messages_tokens(body["messages"])
    if body.get("tools"):
        counted += tokens.text_tokens(orjson.dumps(body["tools"]).decode())
    return orjson.dumps({"input_tokens": counted})
