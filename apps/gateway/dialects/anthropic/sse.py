"""An OpenAI chat stream as Anthropic's SSE events, written as bytes.

    message_start, ping                  once, before the first translated event
    content_block_start / _delta / _stop a text block, and a tool_use block per tool call
                                         (``input_json_delta`` with the arguments' fragments)
    message_delta (stop_reason, usage)   at ``[DONE]``, then message_stop
    : comments                           passed through (the ``x-switchyard-cost`` comment)

The hot case, a chunk whose delta is only ``{"content": "..."}``, is rewritten with no parsing
at all: the provider's JSON string (escapes included) is copied between a prefix precomputed for
the open block and a constant suffix. A read holding a run of such chunks is cut by one regex
split on their tails, checked to share one head, and put back together by one join; other
chunks are found one regex search each. Any other event
(role, finish reason, tool calls, usage, an error) is parsed with orjson; there are a few per
stream. An OpenAI-compatible provider reports usage only at the end, so ``message_start``
carries the prompt's tokens as counted here (``start_usage``: an estimate for a live stream,
the stored counts for a cache replay) and ``message_delta`` the provider's own, which the
``anthropic`` SDK merges over the start's.
"""

from __future__ import annotations

import re

import orjson

from apps.gateway.dialects.anthropic.translate import FINISH_TO_STOP, anthropic_usage
from apps.gateway.dialects.openai import event_chunk

_TEXT_DELTA = re.compile(rb'"delta":\s*\{\s*"content"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*\}')
_FINISH_NULL = re.compile(rb'"finish_reason":\s*null')
# The end of an event that is only a text delta, in the compact form providers send: its choice
# not finished, no usage (OpenAI's ``logprobs`` and ``usage`` may stand there as null). The head
# before it (``data: {"id":...,"choices":[{"index":0,``) is the same on every chunk of a stream.
_TEXT_TAIL = re.compile(rb'"delta":\{"content":("[^"\\\n]*(?:\\.[^"\\\n]*)*")\},'
                        rb'(?:"logprobs":null,)?"finish_reason":null\}\](?:,"usage":null)?\}\n\n')
_HEAD_END = b'"choices":[{"index":0,'
_DONE = b"data: [DONE]"
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA_MID = b',"delta":{"type":"text_delta","text":'
_JSON_DELTA_MID = b',"delta":{"type":"input_json_delta","partial_json":'
_DELTA_TAIL = b"}}\n\n"
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def message_start(message_id: str, model: str, usage: dict | None = None) -> bytes:
    """The ``message_start`` event (and a ``ping``, as Anthropic sends)."""
    message = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": usage or {"input_tokens": 0, "output_tokens": 0}}
    return (b"event: message_start\ndata: " + orjson.dumps({"type": "message_start", "message": message})
            + b"\n\n" + _PING)


def _block_start(index: int, block: dict) -> bytes:
    return (b"event: content_block_start\ndata: "
            + orjson.dumps({"type": "content_block_start", "index": index, "content_block": block}) + b"\n\n")


def _block_stop(index: int) -> bytes:
    return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":' + str(index).encode() + b"}\n\n"


class AnthropicFromOpenAI:
    """The translation of one stream; feed it whole SSE events with :meth:`translate`.

    ``usage_of`` is called at ``[DONE]`` for the usage to report (Anthropic's shape) when the
    stream itself carried none the translator saw.
    """

    __slots__ = ("_block", "_next", "_text_prefix", "finish_reason", "message_id", "model", "start_usage",
                 "started", "stop_sequence", "tools", "usage", "usage_of")

    def __init__(self, *, message_id: str, model: str, usage_of=None, start_usage: dict | None = None) -> None:
        self.message_id = message_id
        self.model = model
        self.usage_of = usage_of
        self.start_usage = start_usage
        self.started = False
        self.finish_reason: str | None = None
        self.stop_sequence = None
        self.usage: dict | None = None  # Anthropic-shaped, from a usage chunk when one passes
        self._block: int | None = None  # the open block's index
        self._next = 0
        self._text_prefix: bytes | None = None  # set while the open block is text
        self.tools: dict[int, int] = {}  # OpenAI tool call index -> block index

    def content_started(self) -> bool:
        """Whether a content block was opened (or the message ended) in what was translated."""
        return self._next > 0 or self.finish_reason is not None

    def translate(self, data: bytes) -> bytes:
        """Whole OpenAI SSE events in, Anthropic SSE events out."""
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(message_start(self.message_id, self.model, self.start_usage))
        parts = _TEXT_TAIL.split(data)
        if len(parts) > 1:
            # parts: [events and the first head, text, head, text, ..., head, text, the rest]
            first = parts[0]
            cut = first.rfind(b"\n\n") + 2 if b"\n\n" in first else 0
            head = first[cut:]
            heads = parts[2:-1:2]
            if (head.startswith(b"data: {") and head.endswith(_HEAD_END) and b"\n" not in head
                    and b'"usage":{' not in head and heads.count(head) == len(heads)):
                # A run of plain text deltas, with other events before and after it: the run is
                # rewritten by one split and one join, without a step per event in Python.
                self._events(first[:cut], out)
                prefix = self._text_prefix or self._open_text(out)
                out.append(prefix + (_DELTA_TAIL + prefix).join(parts[1::2]) + _DELTA_TAIL)
                self._events(parts[-1], out)
                return b"".join(out)
        self._events(data, out)
        return b"".join(out)

    def _events(self, data: bytes, out: list[bytes]) -> None:
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if event[:1] == b":":
                out.append(event + b"\n\n")
                continue
            if event.startswith(_DONE):
                self._finish(out)
                continue
            match = _TEXT_DELTA.search(event)
            if match is not None and _FINISH_NULL.search(event) and b'"usage":{' not in event:
                prefix = self._text_prefix or self._open_text(out)
                out.append(prefix + match.group(1) + _DELTA_TAIL)
                continue
            self._slow(event, out)

    def _open_text(self, out: list[bytes]) -> bytes:
        self._close(out)
        index = self._block = self._next
        self._next += 1
        out.append(_block_start(index, {"type": "text", "text": ""}))
        self._text_prefix = _DELTA_HEAD + str(index).encode() + _TEXT_DELTA_MID
        return self._text_prefix

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(_block_stop(self._block))
            self._block = None
            self._text_prefix = None

    def _slow(self, event: bytes, out: list[bytes]) -> None:
        chunk = event_chunk(event)
        if chunk is None:
            return
        if isinstance(chunk.get("usage"), dict):
            self.usage = anthropic_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                prefix = self._text_prefix or self._open_text(out)
                out.append(prefix + orjson.dumps(text) + _DELTA_TAIL)
            for call in delta.get("tool_calls") or ():
                self._tool_delta(call, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _tool_delta(self, call: dict, out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        index = self.tools.get(position)
        if index is None:
            self._close(out)
            index = self._block = self.tools[position] = self._next
            self._next += 1
            out.append(_block_start(index, {"type": "tool_use", "id": call.get("id") or f"toolu_{index}",
                                            "name": function.get("name") or "", "input": {}}))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(_DELTA_HEAD + str(index).encode() + _JSON_DELTA_MID + orjson.dumps(arguments) + _DELTA_TAIL)

    def _finish(self, out: list[bytes]) -> None:
        self._close(out)
        usage = self.usage or (self.usage_of() if self.usage_of is not None else None) or {"output_tokens": 0}
        stop = FINISH_TO_STOP.get(self.finish_reason or "stop", "end_turn")
        if self.tools and stop == "end_turn":
            stop = "tool_use"
        out.append(b"event: message_delta\ndata: " + orjson.dumps(
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage})
            + b"\n\n")
        out.append(_MESSAGE_STOP)
