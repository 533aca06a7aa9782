"""A provider serving OpenAI's Responses API itself: the client's request passes through.

    request   the client's body with the model id swapped, ``store: false`` (this gateway keeps
              the response, so the provider need not), no ``background`` (this gateway runs it)
              and, for a request continuing a stored conversation, its items put before
              ``input`` in place of ``previous_response_id`` (which names a response only this
              gateway holds)
    answer    the provider's ``response`` with its id, ``store`` and ``previous_response_id``
              as this gateway answers them, so the client retrieves and continues it here;
              usage (input, cached, output tokens) priced from it
    stream    relayed as it arrives, sequence numbers intact: only the few events carrying the
              whole response (``response.created``, ``.in_progress``, ``.completed``,
              ``.incomplete``, ``.failed``) are parsed and rewritten as above; a text delta is
              never touched. The ``x-switchyard-cost`` comment goes before the last event.
"""

from __future__ import annotations

import re

import orjson

from apps.core.errors import GatewayError
from apps.gateway.pipeline.stream import ChatStream
from apps.gateway.snapshot import ModelInfo

_NATIVE_KINDS = frozenset({"openai", "simulated"})
_RESPONSE_OBJECT = b'"response":{'
_ENDS = {b"response.completed", b"response.incomplete", b"response.failed"}
_ERROR = b"event: error"
_SEQUENCE = re.compile(rb'"sequence_number":\s*(\d+)')
_ITEM_FIELDS = ("id", "status")  # ids of items the provider never stored; it is sent store: false


def serves_responses(model: ModelInfo) -> bool:
    """Whether ``model``'s provider serves the Responses API itself."""
    return model.provider.responses_api and model.provider.kind in _NATIVE_KINDS


def native_payload(original: dict, history: list[dict] | None, upstream_id: str) -> bytes:
    """The client's body as the provider is sent it."""
    body = dict(original)
    body["model"] = upstream_id
    body["store"] = False
    body.pop("previous_response_id", None)
    body.pop("background", None)  # this gateway runs a background response itself
    if history:
        given = body.get("input")
        given = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        body["input"] = [{k: v for k, v in item.items() if k not in _ITEM_FIELDS} for item in history] + given
    return orjson.dumps(body)


def usage_chat(usage) -> dict | None:
    """A response's usage in chat's shape (what :meth:`Call.set_usage` reads), or None."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    details = usage.get("input_tokens_details")
    cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage.get("output_tokens") or 0,
            "prompt_tokens_details": {"cached_tokens": cached}}


def response_text(response: dict) -> str:
    """The text of a response's message items."""
    return "".join(part.get("text") or "" for item in response.get("output") or () if isinstance(item, dict)
                   and item.get("type") == "message" for part in item.get("content") or ()
                   if isinstance(part, dict) and part.get("type") == "output_text")


def completion_of_response(response: dict, *, completion_id: str, usage: dict) -> dict | None:
    """A finished response as the chat.completion the cache keeps; None when it holds items a
    replay cannot rebuild (anything but text, function calls and reasoning, which is dropped) or
    did not finish (but for ``max_output_tokens``, kept as a chat answer cut by its length)."""
    status = response.get("status")
    cut = status == "incomplete" and (response.get("incomplete_details") or {}).get("reason") == "max_output_tokens"
    if status != "completed" and not cut:
        return None
    calls = []
    for item in response.get("output") or ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})
        elif kind == "message":
            parts = item.get("content") or ()
            if any(not isinstance(part, dict) or part.get("type") != "output_text" for part in parts):
                return None
        elif kind != "reasoning":
            return None
    message: dict = {"role": "assistant", "content": response_text(response) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {"id": completion_id, "object": "chat.completion", "created": response.get("created_at") or 0,
            "model": response.get("model") or "", "usage": usage,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calls else "length" if cut else "stop"}]}


def response_rewritten(response: dict, *, response_id: str, store: bool, previous_response_id: str | None,
                       background: bool = False) -> dict:
    """The provider's response as this gateway answers it."""
    response["id"] = response_id
    response["store"] = store
    response["background"] = background
    response["previous_response_id"] = previous_response_id
    return response


class NativeResponsesStream(ChatStream):
    """Responses events in, the same events out (the response objects rewritten); usage and the
    finished response read on the way."""

    def __init__(self, runtime, call, body: dict, opened, *, rewrite, **options) -> None:
        super().__init__(runtime, call, body, opened, **options)
        self.rewrite = rewrite  # the provider's response object -> this gateway's (in place)
        self.response: dict | None = None  # the finished response, once its event is read
        self.error_event = self._error_event

    def _error_event(self, error: GatewayError) -> bytes:
        """The ``error`` event of a stream failing mid-way, numbered after the provider's last event."""
        sequence = 0
        for data in reversed(self.kept):
            found = _SEQUENCE.findall(data)
            if found:
                sequence = int(found[-1]) + 1
                break
        fields = {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                  "sequence_number": sequence}
        return b"event: error\ndata: " + orjson.dumps(fields) + b"\n\n"

    def _read(self, out: bytes) -> bytes:
        if _RESPONSE_OBJECT in out or _ERROR in out:
            return self._events(out)
        return out

    def _events(self, out: bytes) -> bytes:
        pieces: list[bytes] = []
        for event in out.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(_ERROR):
                self._failed()
            elif _RESPONSE_OBJECT in event:
                event = self._response_event(event)
            pieces.append(event + b"\n\n")
        return b"".join(pieces)

    def _response_event(self, event: bytes) -> bytes:
        start = event.find(b"data:")
        kind = event[7:event.find(b"\n")].strip() if event.startswith(b"event:") else b""
        try:
            data = orjson.loads(event[start + 5:]) if start >= 0 else None
        except orjson.JSONDecodeError:
            return event
        if not isinstance(data, dict) or not isinstance(data.get("response"), dict):
            return event
        kind = kind or str(data.get("type") or "").encode()
        response = self.rewrite(data["response"])
        head = event[:start] + b"data: " + orjson.dumps(data)
        if kind not in _ENDS:
            return head
        self.done = True
        if kind == b"response.failed":
            self._failed()
            return head
        self.usage = usage_chat(response.get("usage"))
        self.response = response
        return self._cost_comment() + head

    def _failed(self) -> None:
        self.upstream_failed = True
        self.done = True  # the provider ended it; nothing more will come
        self.call.status, self.call.error_code = 502, "upstream_stream_error"
        self._settle()

    def _settle(self) -> None:
        if self.usage is not None:
            self.call.set_usage(self.usage, fallback_prompt=0, fallback_completion=0)
        else:
            self.call.usage_estimate(self.body["messages"], self.streamed_text())

    def streamed_text(self) -> str:
        """The text streamed so far: the finished response's, else the kept text deltas."""
        if self.response is not None:
            return response_text(self.response)
        parts: list[str] = []
        for event in b"".join(self.kept).split(b"\n\n"):
            if b"response.output_text.delta" in event[:40]:
                start = event.find(b"data:")
                try:
                    data = orjson.loads(event[start + 5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict) and isinstance(data.get("delta"), str):
                    parts.append(data["delta"])
        return "".join(parts)
