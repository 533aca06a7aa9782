"""The Responses API as a dialect: the same routing, limits, cache, fallbacks, cost and usage
row as ``/v1/chat/completions``; only the bodies differ. Per attempt, by the model's provider: one
serving the Responses API itself (``Provider.responses_api``) is sent the client's body and its
answer relayed (:mod:`.native`); any other is sent the chat form as the chat dialect sends it (a
native Anthropic provider by translation, its answers read back as chat) and the chat answer is
written as a response.

A request continuing a stored conversation (``previous_response_id``) is prepared by a dialect
made for it (:meth:`Responses.continuing`), holding the conversation's items: the door reads
them from the store before it hands the request to the pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from apps.core.errors import GatewayError
from apps.gateway.dialects.base import Prepared, UpstreamRequest
from apps.gateway.dialects.openai import (
    OPENAI_CHAT,
    chat_upstream,
    native,
    native_request,
    replay_parts,
)
from apps.gateway.dialects.responses.native import (
    NativeResponsesStream,
    completion_of_response,
    native_payload,
    response_rewritten,
    response_text,
    serves_responses,
    usage_chat,
)
from apps.gateway.dialects.responses.sse import ResponsesFromOpenAI
from apps.gateway.dialects.responses.translate import (
    chat_param,
    response_from_completion,
    response_id_of,
    response_shell,
    response_usage,
    responses_body_translate,
    usage_from_chat,
)
from apps.gateway.pipeline.stream import ChatStream
from apps.gateway.snapshot import ModelInfo
from apps.providers.transport import UpstreamClientError

if TYPE_CHECKING:
    from apps.gateway.pipeline.call import Call
    from apps.gateway.runtime import Runtime
    from apps.providers.transport import ProviderStream

ENDPOINT = "/v1/responses"


def usage_of(call: Call) -> dict:
    """What a finished call used, in the Responses shape."""
    return response_usage(call.input_tokens, call.cached_tokens, call.output_tokens,
                          written=call.cache_write_tokens)


class Responses:
    """``POST /v1/responses``."""

    name = "responses"
    endpoint = ENDPOINT

    def __init__(self, *, history: list[dict] | None = None, previous_response_id: str | None = None,
                 body: dict | None = None, on_routed: Callable[[Call], None] | None = None) -> None:
        self.history = history
        self.previous_response_id = previous_response_id
        self.body = body  # the client's request: its errors name its fields
        self.on_routed = on_routed  # a background response's: the door answers once it is accepted

    def of(self, body: dict) -> Responses:
        """The dialect of the request ``body`` (which names its errors' fields)."""
        return Responses(history=self.history, previous_response_id=self.previous_response_id, body=body)

    def continuing(self, previous_response_id: str, history: list[dict]) -> Responses:
        """The dialect of a request continuing the conversation whose items are ``history``."""
        return Responses(history=history, previous_response_id=previous_response_id, body=self.body)

    def in_background(self, on_routed: Callable[[Call], None]) -> Responses:
        """This request's dialect run in the background: ``on_routed`` is told when the pipeline
        has accepted it (validated, routed, within its limits)."""
        return Responses(history=self.history, previous_response_id=self.previous_response_id, body=self.body,
                         on_routed=on_routed)

    def shell(self, call: Call, original: dict, model: str) -> dict:
        return response_shell(original, response_id=response_id_of(call.request_id), model=model,
                              previous_response_id=self.previous_response_id)

    def prepare(self, body: dict, forwarded: dict[str, str]) -> Prepared:
        return Prepared(body=responses_body_translate(body, self.history), original=body)

    def reachable(self, chain: tuple[ModelInfo, ...], *, requested: str,
                  native_only: str | None) -> tuple[ModelInfo, ...]:
        return chain

    def routed(self, call: Call, prepared: Prepared) -> None:
        if self.on_routed is not None:
            self.on_routed(call)

    def rewrite(self, call: Call, original: dict):
        """What makes a provider's own response object this gateway's answer (in place)."""
        response_id = response_id_of(call.request_id)
        store = original.get("store") is not False
        background = original.get("background") is True
        return lambda response: response_rewritten(response, response_id=response_id, store=store,
                                                   previous_response_id=self.previous_response_id,
                                                   background=background)

    def upstream_request(self, prepared: Prepared, model: ModelInfo, *, stream: bool) -> UpstreamRequest:
        if serves_responses(model):
            key = (model.id, model.deployment_id)  # a pooled model's deployments each name it their way
            payload = prepared.payloads.get(key)
            if payload is None:
                payload = prepared.payloads[key] = native_payload(prepared.original, self.history, model.upstream_id)
            return UpstreamRequest("/responses", payload)
        if native(model):
            return native_request(prepared, model, stream=stream)
        return chat_upstream(prepared, model, stream=stream, drop=("metadata",))

    def refusal(self, exc: UpstreamClientError, model: ModelInfo) -> UpstreamClientError:
        return OPENAI_CHAT.refusal(exc, model)

    def json_answer(self, call: Call, prepared: Prepared, model: ModelInfo, raw: bytes,
                    parsed: dict) -> tuple[bytes, dict | None]:
        if serves_responses(model):
            usage = usage_chat(parsed.get("usage"))
            if usage is not None:
                call.set_usage(usage, fallback_prompt=0, fallback_completion=0)
            else:
                call.usage_estimate(prepared.body["messages"], response_text(parsed))
            response = self.rewrite(call, prepared.original)(parsed)
            completion = completion_of_response(response, completion_id=f"chatcmpl-{call.request_id}",
                                                usage=usage or {"prompt_tokens": call.input_tokens,
                                                                "completion_tokens": call.output_tokens})
            return orjson.dumps(response), completion
        _chat, completion = OPENAI_CHAT.json_answer(call, prepared, model, raw, parsed)  # prices it
        usage = usage_of(call)
        reported = usage_from_chat(completion.get("usage"))
        usage["output_tokens_details"] = reported["output_tokens_details"]
        response = response_from_completion(completion, self.shell(call, prepared.original, model.name), usage=usage)
        return orjson.dumps(response), completion

    def stream_open(self, runtime: Runtime, call: Call, prepared: Prepared, opened: ProviderStream,
                    on_end: Callable[[ChatStream | None], None]) -> ChatStream:
        if serves_responses(opened.model):
            return NativeResponsesStream(runtime, call, prepared.body, opened,
                                         rewrite=self.rewrite(call, prepared.original), on_end=on_end)
        translator = ResponsesFromOpenAI(frame=self.shell(call, prepared.original, opened.model.name),
                                         usage_of=lambda: usage_of(call))
        return OPENAI_CHAT.stream_open(runtime, call, prepared, opened, on_end, translator=translator,
                                       error_event=translator.error)

    def stream_completion(self, stream: ChatStream) -> dict | None:
        """Made of the response the stream ended with (its events are not read again); None when
        the stream called tools (what a text replay cannot rebuild)."""
        source = stream.translator if stream.translator is not None else stream
        response = getattr(source, "response", None)
        if response is None:
            return None if isinstance(stream, NativeResponsesStream) else OPENAI_CHAT.stream_completion(stream)
        if any(not isinstance(item, dict) or item.get("type") != "message" for item in response.get("output") or ()):
            return None
        call = stream.call
        return completion_of_response(response, completion_id=f"chatcmpl-{call.request_id}", usage={
            "prompt_tokens": call.input_tokens, "completion_tokens": call.output_tokens,
            "total_tokens": call.input_tokens + call.output_tokens})

    def error_render(self, error: GatewayError, request_id: str | None) -> tuple[int, bytes, list]:
        """OpenAI's error shape, its ``param`` the Responses field (the pipeline names the chat form's)."""
        if error.param is not None and self.body is not None:
            param = chat_param(error.param, self.body, self.history)
            if param != error.param:
                error = _renamed(error, param)
        return OPENAI_CHAT.error_render(error, request_id)

    def request_id_headers(self, request_id: str | None) -> list[tuple[bytes, bytes]]:
        return OPENAI_CHAT.request_id_headers(request_id)

    def replay_response(self, call: Call, original: dict, completion: dict) -> dict:
        """A cached chat.completion as this request's response object."""
        return response_from_completion(completion, self.shell(call, original, call.model.name if call.model
                                                               else completion.get("model") or ""))

    def replay_events(self, call: Call, original: dict, completion: dict) -> tuple[list[bytes], dict]:
        """A cached chat.completion as a Responses stream in several chunks (the text in parts,
        then its tool calls), each passed through the translator a live stream uses; and the
        response the stream ends with."""
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        deltas: list[dict] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": part} for part in replay_parts(message.get("content") or "")]
        deltas += [{"tool_calls": [{**tool_call, "index": index}]}
                   for index, tool_call in enumerate(message.get("tool_calls") or [])]
        events = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]})
        usage = usage_from_chat(completion.get("usage"))
        model = call.model.name if call.model else completion.get("model") or ""
        translator = ResponsesFromOpenAI(frame=self.shell(call, original, model), usage_of=lambda: dict(usage))
        chunks = [translator.translate(b"data: " + orjson.dumps(event) + b"\n\n") for event in events]
        chunks.append(translator.translate(b"data: [DONE]\n\n"))
        return [chunk for chunk in chunks if chunk], translator.response


def _renamed(error: GatewayError, param: str) -> GatewayError:
    """``error`` naming ``param`` (in its message too, where it names the chat field in brackets)."""
    renamed = copy.copy(error)
    renamed.message = error.message.replace(f"({error.param})", f"({param})")
    renamed.param = param
    return renamed


RESPONSES = Responses()
