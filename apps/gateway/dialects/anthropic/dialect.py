"""Anthropic's Messages API as a dialect: the same routing, limits, cache, fallbacks, cost and
usage row as ``/v1/chat/completions``; only the bodies differ.

    prepare   validate and translate the Anthropic body to the chat form (an alias or ``auto``
              routes as on the chat door)
    answer    per attempt, by the model's provider: a native Anthropic provider gets the
              client's body (the model id swapped) and its answer goes back byte for byte; an
              OpenAI-compatible one gets the chat form and its answer is translated
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from django.conf import settings

from apps.core import tokens
from apps.core.errors import AuthenticationFailed, BadRequest, GatewayError
from apps.gateway.dialects.anthropic.errors import error_event, error_render, upstream_error_translate
from apps.gateway.dialects.anthropic.native import NativeMessagesStream, message_priced
from apps.gateway.dialects.anthropic.sse import AnthropicFromOpenAI
from apps.gateway.dialects.anthropic.translate import (
    anthropic_usage,
    completion_from_message,
    message_from_completion,
    messages_body_translate,
    native_payload,
    replayable,
)
from apps.gateway.dialects.base import Prepared, UpstreamRequest
from apps.gateway.dialects.openai import OPENAI_CHAT, chat_upstream, completion_from_stream, replay_parts
from apps.gateway.pipeline.call import Call
from apps.gateway.pipeline.route import call_route
from apps.gateway.pipeline.stream import ChatStream
from apps.gateway.snapshot import ModelInfo
from apps.providers.transport import ANTHROPIC_KIND, UpstreamClientError, with_fallbacks

if TYPE_CHECKING:
    from apps.gateway.runtime import Runtime
    from apps.providers.transport import ProviderStream

ENDPOINT = "/v1/messages"
# Client headers a native provider should see (the API version, and opt-ins to beta features).
FORWARDED_HEADERS = (b"anthropic-version", b"anthropic-beta")
_NO_KEY = "Missing or invalid API key. Send 'x-api-key: <key>' or 'Authorization: Bearer <key>'."


def _native(model: ModelInfo) -> bool:
    return model.provider.kind == ANTHROPIC_KIND


def forwarded_headers(scope) -> dict[str, str]:
    return {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in FORWARDED_HEADERS}


def anthropic_usage_of(call: Call) -> dict:
    """What a finished call used, in Anthropic's shape."""
    return {"input_tokens": max(call.input_tokens - call.cached_tokens - call.cache_write_tokens, 0),
            "cache_creation_input_tokens": call.cache_write_tokens, "cache_read_input_tokens": call.cached_tokens,
            "output_tokens": call.output_tokens}


class AnthropicMessages:
    """``POST /v1/messages``."""

    name = "anthropic"
    endpoint = ENDPOINT

    def prepare(self, body: dict, forwarded: dict[str, str]) -> Prepared:
        chat, unsupported = messages_body_translate(body)
        return Prepared(body=chat, original=body, native_only=", ".join(unsupported) if unsupported else None,
                        forwarded=forwarded)

    def reachable(self, chain: tuple[ModelInfo, ...], *, requested: str,
                  native_only: str | None) -> tuple[ModelInfo, ...]:
        if not native_only:
            return chain
        native = tuple(m for m in chain if _native(m))
        if not native:
            raise BadRequest(f"This request uses {native_only}, which only a native Anthropic provider takes; "
                             f"the model '{requested}' is served through an OpenAI-compatible one.", param="model")
        return native

    def routed(self, call: Call, prepared: Prepared) -> None:
        """Routed: a translated stream's message_start carries the prompt's count, made while the
        provider thinks (the callback runs once this request waits on it), not after its first bytes."""
        if call.stream and call.chain and not _native(call.chain[0]):
            asyncio.get_running_loop().call_soon(call.prompt_tokens_count, prepared.body["messages"])

    def upstream_request(self, prepared: Prepared, model: ModelInfo, *, stream: bool) -> UpstreamRequest:
        if not _native(model):
            return chat_upstream(prepared, model, stream=stream, drop=("metadata", "native_parameters"))
        key = (model.id, model.deployment_id)  # a pooled model's deployments each name it their way
        payload = prepared.payloads.get(key)
        if payload is None:
            payload = prepared.payloads[key] = native_payload(prepared.original, model.upstream_id)
        return UpstreamRequest("/messages", payload, prepared.forwarded)

    def refusal(self, exc: UpstreamClientError, model: ModelInfo) -> UpstreamClientError:
        if _native(model):
            return exc  # already in Anthropic's shape
        return UpstreamClientError(exc.status, upstream_error_translate(exc.status, exc.body), "application/json",
                                   model=exc.model, code=exc.code)

    def json_answer(self, call: Call, prepared: Prepared, model: ModelInfo, raw: bytes,
                    parsed: dict) -> tuple[bytes, dict | None]:
        if _native(model):
            message_priced(call, prepared.body["messages"], parsed)
            cacheable = parsed.get("type") == "message" and replayable(parsed)
            completion = completion_from_message(parsed, completion_id=f"chatcmpl-{call.request_id}")
            return raw, completion if cacheable else None
        OPENAI_CHAT.json_answer(call, prepared, model, raw, parsed)  # prices it
        if not isinstance(parsed.get("usage"), dict):
            parsed["usage"] = {"prompt_tokens": call.input_tokens, "completion_tokens": call.output_tokens,
                               "total_tokens": call.input_tokens + call.output_tokens}
        return orjson.dumps(message_from_completion(parsed, message_id=f"msg_{call.request_id}")), parsed

    def stream_open(self, runtime: Runtime, call: Call, prepared: Prepared, opened: ProviderStream,
                    on_end: Callable[[ChatStream | None], None]) -> ChatStream:
        events = lambda error: error_event(error, call.request_id)  # noqa: E731
        if _native(opened.model):
            return NativeMessagesStream(runtime, call, prepared.body, opened, error_event=events, on_end=on_end)
        # The provider counts the prompt only at the end; message_start carries this count of it.
        estimate = {"input_tokens": call.prompt_tokens_count(prepared.body["messages"]), "output_tokens": 0}
        translator = AnthropicFromOpenAI(message_id=f"msg_{call.request_id}", model=opened.model.upstream_id,
                                         usage_of=lambda: anthropic_usage_of(call), start_usage=estimate)
        return ChatStream(runtime, call, prepared.body, opened, translator=translator, error_event=events,
                          on_end=on_end)

    def stream_completion(self, stream: ChatStream) -> dict | None:
        """None when the stream held blocks a replay cannot rebuild."""
        completion = completion_from_stream(stream)
        translator = stream.translator
        if not getattr(stream, "replayable", True) or (translator is not None and translator.tools):
            return None
        return completion

    def error_render(self, error: GatewayError, request_id: str | None) -> tuple[int, bytes, list]:
        if isinstance(error, AuthenticationFailed) and error.code == "invalid_api_key":
            error = AuthenticationFailed(_NO_KEY)  # Anthropic's SDKs send x-api-key
        status, body, headers = error_render(error, request_id)
        return status, body, headers + self.request_id_headers(request_id)

    def request_id_headers(self, request_id: str | None) -> list[tuple[bytes, bytes]]:
        return [(b"request-id", request_id.encode())] if request_id else []


ANTHROPIC_MESSAGES = AnthropicMessages()


def replay_chunks(request_id: str, completion: dict) -> list[bytes]:
    """A cached chat.completion as an Anthropic stream in several chunks: the answer is cut into
    OpenAI chunks (text in parts, then its tool calls), each then passed through the translator
    a live stream uses."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": part} for part in replay_parts(message.get("content") or "")]
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


async def count_tokens(runtime: Runtime, key, original: dict, *, forwarded: dict[str, str]) -> bytes:
    """``POST /v1/messages/count_tokens``: asked of the provider when it is native Anthropic,
    counted here (o200k, as for usage estimates) otherwise. No usage row: nothing is billed."""
    body, unsupported = messages_body_translate(original, count_only=True)
    call = Call(key=key, endpoint=ENDPOINT + "/count_tokens", started=0.0)
    call_route(runtime, call, body, None, mode="chat", dialect=ANTHROPIC_MESSAGES,
               native_only=", ".join(unsupported) if unsupported else None, fit=False)
    native = tuple(model for model in call.chain if _native(model))
    if native and _native(call.chain[0]):
        async def attempt(model):
            return await runtime.transport.post_json(model, "/messages/count_tokens",
                                                     native_payload(original, model.upstream_id), forwarded)

        _model, (answer, _parsed), _failures = await with_fallbacks(
            native, attempt, retries=settings.GATEWAY_RETRIES, backoff=settings.GATEWAY_RETRY_BACKOFF,
            breakers=runtime.breakers)
        return answer
    counted = tokens.messages_tokens(body["messages"])
    if body.get("tools"):
        counted += tokens.text_tokens(orjson.dumps(body["tools"]).decode())
    return orjson.dumps({"input_tokens": counted})
