"""OpenAI's chat completions, the pipeline's own form: requests go to OpenAI-compatible
providers as they came (the model id swapped, usage always asked of a stream), answers come
back byte for byte; providers of another protocol (Azure OpenAI's URLs, Gemini's API, Bedrock's
Converse) get the chat form through their protocol, which reads their answers back into it. A
native Anthropic provider is sent the request translated to its Messages API, and its answers
(JSON or stream) and refusals come back translated
(:mod:`apps.gateway.dialects.anthropic.from_chat`, :mod:`~apps.gateway.dialects.anthropic.chat_sse`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from apps.core.completions import completion_text
from apps.core.errors import GatewayError, error_body
from apps.gateway.dialects.anthropic.chat_sse import NativeChatStream
from apps.gateway.dialects.anthropic.from_chat import (
    chat_usage,
    completion_of_message,
    json_tool_name,
    messages_request,
    openai_error_body,
)
from apps.gateway.dialects.anthropic.native import message_priced
from apps.gateway.dialects.base import Prepared, UpstreamRequest
from apps.gateway.pipeline.stream import ChatStream
from apps.gateway.snapshot import ModelInfo
from apps.gateway.validation import chat_body_validate
from apps.providers.protocols import chat_payload, chat_protocol
from apps.providers.transport import ANTHROPIC_KIND, UpstreamClientError

if TYPE_CHECKING:
    from apps.gateway.pipeline.call import Call
    from apps.gateway.runtime import Runtime
    from apps.providers.transport import ProviderStream


def chat_upstream(prepared: Prepared, model: ModelInfo, *, stream: bool,
                  drop: tuple[str, ...] = ()) -> UpstreamRequest:
    """The chat form as ``model``'s provider is sent it, in the protocol of its kind
    (:mod:`apps.providers.protocols`): OpenAI's as it is, Azure's at its URLs, Gemini's
    translated, whose answers the protocol reads back into the chat form. The payload is built
    once per model (a retry sends the same bytes)."""
    protocol = chat_protocol(model.provider.kind)
    key = (model.id, model.deployment_id)  # a pooled model's deployments each name it their way
    payload = prepared.payloads.get(key)
    if payload is None:
        payload = prepared.payloads[key] = protocol.payload(prepared.body, model, stream=stream, drop=drop)
    return UpstreamRequest(protocol.path(model, stream=stream), payload,
                           reader=protocol if protocol.translates else None)


def native(model: ModelInfo) -> bool:
    """Whether ``model``'s provider speaks Anthropic's Messages API (reached by translation)."""
    return model.provider.kind == ANTHROPIC_KIND


def event_chunk(event: bytes) -> dict | None:
    """The JSON object of one OpenAI-style SSE event (``data: {...}``), or None for anything else."""
    start = event.find(b"data:")
    if start < 0:
        return None
    try:
        chunk = orjson.loads(event[start + 5:])
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


def completion_from_stream(stream: ChatStream) -> dict:
    """A chat.completion object assembled from a stream that ended normally."""
    call = stream.call
    return {
        "id": f"chatcmpl-{call.request_id}", "object": "chat.completion", "created": int(time.time()),
        "model": call.model.upstream_id if call.model else "",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": stream.streamed_text()},
                     "logprobs": None, "finish_reason": stream.finish_reason or "stop"}],
        "usage": {"prompt_tokens": call.input_tokens, "completion_tokens": call.output_tokens,
                  "total_tokens": call.input_tokens + call.output_tokens},
    }


def replay_parts(content: str, pieces: int = 8) -> list[str]:
    """A cached answer's text cut in about ``pieces`` parts at spaces, for a replayed stream."""
    words = content.split(" ")
    size = max(len(words) // pieces, 1)
    parts = [" ".join(words[i:i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)]
    return [part for part in parts if part]


def replay_sse(response: dict, *, include_usage: bool) -> list[bytes]:
    """A cached chat.completion as SSE events, in several chunks, ending with [DONE] like a live stream."""
    choice = (response.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content") or ""
    head = {"id": response.get("id", "chatcmpl-cached"), "object": "chat.completion.chunk",
            "created": response.get("created", int(time.time())), "model": response.get("model", "")}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]}
               for part in replay_parts(content)]
    events += [{**head, "choices": [{"index": 0, "delta": {"tool_calls": [{**call, "index": index}]},
                                     "finish_reason": None}]}
               for index, call in enumerate((choice.get("message") or {}).get("tool_calls") or [])]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")
                                        or "stop"}]})
    if include_usage and isinstance(response.get("usage"), dict):
        events.append({**head, "choices": [], "usage": response["usage"]})
    return [b"data: " + orjson.dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


def chat_usage_of(call: Call) -> dict:
    """What a finished call used, in chat's shape."""
    return chat_usage(call.input_tokens, call.cached_tokens, call.cache_write_tokens, call.output_tokens)


def native_request(prepared: Prepared, model: ModelInfo, *, stream: bool) -> UpstreamRequest:
    """The request for a native Anthropic provider, translated once per model (and deployment)."""
    key = (model.id, model.deployment_id)
    payload = prepared.payloads.get(key)
    if payload is None:
        payload = prepared.payloads[key] = messages_request(prepared.body, model.upstream_id, stream=stream,
                                                                 max_tokens=model.max_output_tokens)
    return UpstreamRequest("/messages", payload)


class OpenAIChat:
    """``POST /v1/chat/completions`` (and the doors built on it: WebSocket, EventSource,
    ``/v1/complete``, batch lines, and ``/v1/responses`` through its chat form). Every provider
    kind is reachable: a native Anthropic one by translation."""

    name = "openai"
    endpoint = "/v1/chat/completions"

    def prepare(self, body: dict, forwarded: dict[str, str]) -> Prepared:
        chat_body_validate(body)
        return Prepared(body=body, original=body)

    def reachable(self, chain: tuple[ModelInfo, ...], *, requested: str,
                  native_only: str | None) -> tuple[ModelInfo, ...]:
        return chain

    def routed(self, call: Call, prepared: Prepared) -> None:
        return None

    def upstream_request(self, prepared: Prepared, model: ModelInfo, *, stream: bool) -> UpstreamRequest:
        if native(model):
            return native_request(prepared, model, stream=stream)
        return chat_upstream(prepared, model, stream=stream)

    def refusal(self, exc: UpstreamClientError, model: ModelInfo) -> UpstreamClientError:
        if not native(model):
            return exc
        return UpstreamClientError(exc.status, openai_error_body(exc.status, exc.body), "application/json",
                                   model=exc.model, code=exc.code)

    def json_answer(self, call: Call, prepared: Prepared, model: ModelInfo, raw: bytes,
                    parsed: dict) -> tuple[bytes, dict | None]:
        if native(model):
            message_priced(call, prepared.body["messages"], parsed)
            completion = completion_of_message(parsed, completion_id=f"chatcmpl-{call.request_id}",
                                               json_tool=json_tool_name(prepared.body), usage=chat_usage_of(call))
            return orjson.dumps(completion), completion
        usage = parsed.get("usage")
        if isinstance(usage, dict):
            call.set_usage(usage, fallback_prompt=0, fallback_completion=0)
        else:
            call.usage_estimate(prepared.body["messages"], completion_text(parsed))
        return raw, parsed

    def stream_open(self, runtime: Runtime, call: Call, prepared: Prepared, opened: ProviderStream,
                    on_end: Callable[[ChatStream | None], None], *, translator=None,
                    error_event: Callable[[GatewayError], bytes] | None = None) -> ChatStream:
        """The stream over ``opened``: chat chunks, or with ``translator`` the client's own events
        made of them (a translating dialect's)."""
        if native(opened.model):
            return NativeChatStream(runtime, call, prepared.body, opened, usage_of=lambda: chat_usage_of(call),
                                    translator=translator, error_event=error_event, on_end=on_end)
        return ChatStream(runtime, call, prepared.body, opened, translator=translator, error_event=error_event,
                          on_end=on_end)

    def stream_completion(self, stream: ChatStream) -> dict | None:
        if isinstance(stream, NativeChatStream):
            return stream.completion(chat_usage_of(stream.call))
        return completion_from_stream(stream)
    def error_render(self, error: GatewayError, request_id: str | None) -> tuple[int, bytes, list]:
        headers = self.request_id_headers(request_id)
        headers.extend((name.lower().encode(), value.encode()) for name, value in error.headers.items())
        return error.status, error_body(error), headers

    def request_id_headers(self, request_id: str | None) -> list[tuple[bytes, bytes]]:
        return [(b"x-switchyard-request-id", request_id.encode())] if request_id else []


OPENAI_CHAT = OpenAIChat()


__all__ = ["OPENAI_CHAT", "chat_payload", "chat_upstream"]
