"""A native Anthropic stream as OpenAI chat chunks, written as bytes (the reverse of :mod:`.sse`).

    message_start                          the role chunk (``{"role": "assistant", "content": ""}``)
    content_block_delta text_delta         a content chunk
    content_block_start tool_use           a tool call's first chunk (its id and name), then
    content_block_delta input_json_delta   its arguments' fragments (with a ``json_schema``
                                           response format, the forced tool's input is content)
    message_delta                          the finish chunk (``finish_reason`` from stop_reason)
    message_stop                           the usage chunk (when asked), ``x-switchyard-cost``, [DONE]
    error                                  an OpenAI error event
    ping, content_block_stop, thinking     nothing

A text delta is rewritten without parsing: the provider's JSON string (escapes included) is
copied between a head precomputed for the stream and a constant tail. The stream is read for
usage and its end by :class:`~apps.gateway.dialects.anthropic.native.NativeMessagesStream`;
:class:`NativeChatStream` is that stream written for an OpenAI client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import orjson

from apps.gateway.dialects.anthropic.from_chat import json_tool_name, openai_error_body
from apps.gateway.dialects.anthropic.native import NativeMessagesStream, event_data
from apps.gateway.dialects.anthropic.translate import STOP_TO_FINISH
from apps.gateway.pipeline.stream import TranslatorChain

_TEXT_DELTA = re.compile(rb'"delta":\s*\{\s*"type":\s*"text_delta",\s*"text":\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*\}')
_BLOCK_DELTA = b"event: content_block_delta"
_COST = b": x-switchyard-cost"
_TAIL = b',"finish_reason":null}]}\n\n'
_DONE = b"data: [DONE]\n\n"


class ChatFromAnthropic:
    """The translation of one stream; feed it whole SSE events with :meth:`translate`.

    ``usage_of`` gives the chat usage at ``message_stop`` (the stream's reader has settled the
    call by then); the usage chunk is written only when ``include_usage``.
    """

    def __init__(self, *, completion_id: str, model: str, created: int, usage_of: Callable[[], dict],
                 include_usage: bool, json_tool: str | None) -> None:
        self.usage_of = usage_of
        self.include_usage = include_usage
        self.json_tool = json_tool
        self.started = False
        self.finish_reason: str | None = None
        self.tool_calls: list[dict] = []  # {"id", "name", "arguments": [fragments]}
        self.json_parts: list[str] = []  # the forced tool's input, the answer's text
        self._calls: dict[int, int] = {}  # Anthropic block index -> tool call index
        self._json_blocks: set[int] = set()
        self._held = b""  # the cost comment, which goes out just before [DONE]
        self._frame = (b'data: {"id":' + orjson.dumps(completion_id) + b',"object":"chat.completion.chunk",'
                       b'"created":' + str(created).encode() + b',"model":' + orjson.dumps(model))
        self._head = self._frame + b',"choices":[{"index":0,"delta":'
        self._text_head = self._head + b'{"content":'

    @property
    def tools(self) -> bool:
        return bool(self.tool_calls)

    def content_started(self) -> bool:
        return self.started

    def translate(self, data: bytes) -> bytes:
        """Whole Anthropic SSE events in, OpenAI chat chunks out."""
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(_BLOCK_DELTA):
                match = _TEXT_DELTA.search(event)
                if match is not None:
                    self.started = True
                    out.append(self._text_head + match.group(1) + b"}" + _TAIL)
                    continue
            if event[:1] == b":":
                if event.startswith(_COST):
                    self._held += event + b"\n\n"
                else:
                    out.append(event + b"\n\n")
                continue
            self._slow(event, out)
        return b"".join(out)

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        if finish is None:
            return self._head + orjson.dumps(delta) + _TAIL
        return self._head + orjson.dumps(delta) + b',"finish_reason":' + orjson.dumps(finish) + b"}]}\n\n"

    def _slow(self, event: bytes, out: list[bytes]) -> None:
        name = event[7:event.find(b"\n")] if event.startswith(b"event: ") else b""
        data = event_data(event) or {}
        if name == b"message_start":
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif name == b"content_block_start":
            self._block_start(data, out)
        elif name == b"content_block_delta":
            self._block_delta(data, out)
        elif name == b"message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            finish = STOP_TO_FINISH.get(stop, "stop")
            if self.json_tool is not None and finish == "tool_calls":
                finish = "stop"
            self.finish_reason = finish
            self.started = True
            out.append(self._chunk({}, finish))
        elif name == b"message_stop":
            if self.include_usage:
                out.append(self._frame + b',"choices":[],"usage":' + orjson.dumps(self.usage_of()) + b"}\n\n")
            out.append(self._held + _DONE)
            self._held = b""
        elif name == b"error":
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            body = orjson.dumps({"type": "error", "error": error})
            out.append(b"data: " + openai_error_body(500, body) + b"\n\n")

    def _block_start(self, data: dict, out: list[bytes]) -> None:
        block = data.get("content_block") or {}
        index = data.get("index", 0)
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            self.started = True
            out.append(self._chunk({"content": block["text"]}))
        elif kind == "tool_use" and self.json_tool is not None:
            self._json_blocks.add(index)
        elif kind == "tool_use":
            position = self._calls[index] = len(self.tool_calls)
            call = {"id": block.get("id") or f"call_{position}", "name": block.get("name") or "", "arguments": []}
            self.tool_calls.append(call)
            self.started = True
            out.append(self._chunk({"tool_calls": [{"index": position, "id": call["id"], "type": "function",
                                                    "function": {"name": call["name"], "arguments": ""}}]}))

    def _block_delta(self, data: dict, out: list[bytes]) -> None:
        delta = data.get("delta") or {}
        index = data.get("index", 0)
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            self.started = True
            out.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            fragment = delta["partial_json"]
            if not fragment:
                return
            if index in self._json_blocks:
                self.json_parts.append(fragment)
                out.append(self._chunk({"content": fragment}))
            elif index in self._calls:
                position = self._calls[index]
                self.tool_calls[position]["arguments"].append(fragment)
                out.append(self._chunk({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]}))


class NativeChatStream(NativeMessagesStream):
    """A native Anthropic stream for an OpenAI client: read as :class:`NativeMessagesStream`
    reads it (usage, the end, the cost), written as chat chunks, and then, with ``translator``,
    as the client's own events (the Responses API's)."""

    def __init__(self, runtime, call, body: dict, opened, *, usage_of: Callable[[], dict], translator=None,
                 **options) -> None:
        stream_options = body.get("stream_options")
        self.chat = ChatFromAnthropic(
            completion_id=f"chatcmpl-{call.request_id}", model=opened.model.upstream_id, created=int(time.time()),
            usage_of=usage_of, json_tool=json_tool_name(body),
            include_usage=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")))
        super().__init__(runtime, call, body, opened,
                         translator=self.chat if translator is None else TranslatorChain(self.chat, translator),
                         **options)

    def completion(self, usage: dict) -> dict:
        """The chat.completion a stream that ended normally gave (what the cache keeps)."""
        chat = self.chat
        text = self.streamed_text() + "".join(chat.json_parts)
        message: dict = {"role": "assistant", "content": text}
        if chat.tool_calls:
            message["content"] = text or None
            message["tool_calls"] = [{"id": call["id"], "type": "function", "function": {
                "name": call["name"], "arguments": "".join(call["arguments"])}} for call in chat.tool_calls]
        return {"id": f"chatcmpl-{self.call.request_id}", "object": "chat.completion", "created": int(time.time()),
                "model": self.call.model.upstream_id if self.call.model else "",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": chat.finish_reason or "stop"}], "usage": usage}

