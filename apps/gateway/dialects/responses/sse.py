"""An OpenAI chat stream as the Responses API's typed SSE events, written as bytes.

    response.created, response.in_progress           once, before the first translated event
    response.output_item.added                       an assistant message (text) or a
                                                     function_call item, as each begins
    response.content_part.added                      the message's output_text part
    response.output_text.delta                       each text fragment
    response.function_call_arguments.delta           each fragment of a call's arguments
    ...text.done / content_part.done / ...arguments.done / output_item.done
                                                     as an item ends (the next begins, or the
                                                     stream ends)
    response.completed (response.incomplete when the answer was cut by ``max_output_tokens``)
                                                     at ``[DONE]``, with the whole response and
                                                     its usage
    error                                            a stream that fails after it started
    : comments                                       passed through (``x-switchyard-cost``)

Every event carries its ``sequence_number``. A chunk that is only a text delta is rewritten
without parsing: the provider's JSON string (escapes included) is copied into the event, and
kept as it came to be decoded once (all of them in one go) when the item ends. A read holding a
run of such chunks is cut by one regex split on their tails, checked to share one head, and
each text put between a precomputed head and its sequence number, with no other step per event.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from apps.core.errors import GatewayError
from apps.gateway.dialects.openai import event_chunk
from apps.gateway.dialects.responses.translate import function_call_item, message_item

_TEXT_DELTA = re.compile(rb'"delta":\s*\{\s*"content"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*\}')
# The end of an event that is only a text delta, in the compact form providers send (as the
# Messages translation reads it): the head before it is the same on every chunk of a stream.
_TEXT_TAIL = re.compile(rb'"delta":\{"content":("[^"\\\n]*(?:\\.[^"\\\n]*)*")\},'
                        rb'(?:"logprobs":null,)?"finish_reason":null\}\](?:,"usage":null)?\}\n\n')
_HEAD_END = b'"choices":[{"index":0,'
_SEQUENCE = b',"sequence_number":'
_EVENT_END = b"}\n\n"
_NUMBERS = tuple(str(number).encode() for number in range(4096))
_FINISH_NULL = re.compile(rb'"finish_reason":\s*null')
_DONE = b"data: [DONE]"
_STATUS_BY_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _Item:
    __slots__ = ("call", "fragments", "id", "index", "kind")

    def __init__(self, kind: str, item_id: str, index: int, call: dict | None = None) -> None:
        self.kind = kind  # "message" or "function_call"
        self.id = item_id
        self.index = index  # its output_index
        self.call = call  # a function call's id and name
        self.fragments: list[bytes] = []  # JSON string literals as they came (text) or arguments (calls)

    def text(self) -> str:
        if self.kind == "message":
            return "".join(orjson.loads(b"[" + b",".join(self.fragments) + b"]"))
        return "".join(fragment.decode() for fragment in self.fragments)

    def done(self) -> dict:
        if self.kind == "message":
            return message_item(self.id, self.text())
        return function_call_item(self.id, {**self.call, "function": {**self.call["function"],
                                                                      "arguments": self.text()}})


class ResponsesFromOpenAI:
    """The translation of one stream; feed it whole SSE events with :meth:`translate`.

    ``frame`` is the response object with no output (:func:`.translate.response_shell`);
    ``usage_of`` gives the Responses-shaped usage at ``[DONE]``.
    """

    def __init__(self, *, frame: dict, usage_of: Callable[[], dict]) -> None:
        self.shell = frame
        self.usage_of = usage_of
        self.sequence = 0
        self.started = False
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.calls: dict[int, _Item] = {}  # chat tool call index -> its item
        self.finish_reason: str | None = None
        self.reasoning_tokens = 0
        self.response: dict | None = None  # the finished response, once the stream has ended
        self._suffix = frame["id"].removeprefix("resp_")
        self._delta_head = b""

    @property
    def tools(self) -> bool:
        return bool(self.calls)

    def content_started(self) -> bool:
        return bool(self.items) or self.response is not None

    def _event(self, kind: str, fields: dict, out: list[bytes]) -> None:
        fields = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(fields) + b"\n\n")

    def translate(self, data: bytes) -> bytes:
        """Whole OpenAI SSE events in, Responses SSE events out."""
        out: list[bytes] = []
        if not self.started:
            self.started = True
            shell = orjson.dumps(self.shell)
            out.append(b'event: response.created\ndata: {"type":"response.created","response":' + shell
                       + b',"sequence_number":0}\n\nevent: response.in_progress\ndata: {"type":"response.in_progress",'
                       b'"response":' + shell + b',"sequence_number":1}\n\n')
            self.sequence = 2
        parts = _TEXT_TAIL.split(data)
        if len(parts) > 1:
            # parts: [events and the first head, text, head, text, ..., head, text, the rest]
            first = parts[0]
            cut = first.rfind(b"\n\n") + 2 if b"\n\n" in first else 0
            head = first[cut:]
            heads = parts[2:-1:2]
            if (head.startswith(b"data: {") and head.endswith(_HEAD_END) and b"\n" not in head
                    and b'"usage":{' not in head and heads.count(head) == len(heads)):
                self._events(first[:cut], out)
                self._texts([text for text in parts[1::2] if text != b'""'], out)
                self._events(parts[-1], out)
                return b"".join(out)
        self._events(data, out)
        return b"".join(out)

    def _texts(self, literals: list[bytes], out: list[bytes]) -> None:
        """A run of text deltas: each literal between the open message's head and its number."""
        if not literals:
            return
        item = self.open
        if item is None or item.kind != "message":
            item = self._open_message(out)
        item.fragments += literals
        start = self.sequence
        self.sequence = end = start + len(literals)
        numbers = _NUMBERS[start:end] if end <= len(_NUMBERS) else [str(n).encode() for n in range(start, end)]
        head, tail = self._delta_head, _SEQUENCE
        out.append(b"".join([head + literal + tail + number + _EVENT_END for literal, number in zip(
            literals, numbers, strict=True)]))

    def _events(self, data: bytes, out: list[bytes]) -> None:
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if event[:1] == b":":
                out.append(event + b"\n\n")
            elif event.startswith(_DONE):
                self._finish(out)
            else:
                match = _TEXT_DELTA.search(event)
                if match is not None and _FINISH_NULL.search(event) and b'"usage":{' not in event:
                    self._text(match.group(1), out)
                else:
                    self._slow(event, out)

    def _text(self, literal: bytes, out: list[bytes]) -> None:
        if literal == b'""':
            return
        item = self.open
        if item is None or item.kind != "message":
            item = self._open_message(out)
        item.fragments.append(literal)
        out.append(self._delta_head + literal + b',"sequence_number":' + str(self.sequence).encode() + b"}\n\n")
        self.sequence += 1

    def _open_message(self, out: list[bytes]) -> _Item:
        self._close(out)
        index = len(self.items)
        item = _Item("message", f"msg_{self._suffix}" + (f"_{index}" if index else ""), index)
        self.items.append(item)
        self.open = item
        self._event("response.output_item.added", {"output_index": index, "item": {
            "id": item.id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}, out)
        self._event("response.content_part.added", {"item_id": item.id, "output_index": index, "content_index": 0,
                                                    "part": {"type": "output_text", "text": "", "annotations": []}},
                    out)
        self._delta_head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                            b'"item_id":"' + item.id.encode() + b'","output_index":' + str(index).encode()
                            + b',"content_index":0,"logprobs":[],"delta":')
        return item

    def _close(self, out: list[bytes]) -> None:
        item, self.open = self.open, None
        if item is None:
            return
        done = item.done()
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            part = done["content"][0]
            self._event("response.output_text.done", {**where, "content_index": 0, "text": part["text"],
                                                      "logprobs": []}, out)
            self._event("response.content_part.done", {**where, "content_index": 0, "part": part}, out)
        else:
            self._event("response.function_call_arguments.done", {**where, "name": done["name"],
                                                                   "arguments": done["arguments"]}, out)
        self._event("response.output_item.done", {"output_index": item.index, "item": done}, out)

    def _slow(self, event: bytes, out: list[bytes]) -> None:
        chunk = event_chunk(event)
        if chunk is None:
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens_details"), dict):
            self.reasoning_tokens = usage["completion_tokens_details"].get("reasoning_tokens") or 0
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text(orjson.dumps(text), out)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool_delta(call, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _tool_delta(self, call: dict, out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        item = self.calls.get(position)
        if item is None:
            self._close(out)
            index = len(self.items)
            item = _Item("function_call", f"fc_{self._suffix}_{index}", index, {
                "id": call.get("id") or f"call_{self._suffix}_{index}",
                "function": {"name": function.get("name") or ""}})
            self.items.append(item)
            self.calls[position] = self.open = item
            self._event("response.output_item.added", {"output_index": index, "item": function_call_item(
                item.id, {**item.call, "function": {**item.call["function"], "arguments": ""}},
                status="in_progress")}, out)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.fragments.append(arguments.encode())
            self._event("response.function_call_arguments.delta", {"item_id": item.id, "output_index": item.index,
                                                                   "delta": arguments}, out)

    def _finish(self, out: list[bytes]) -> None:
        self._close(out)
        usage = self.usage_of()
        if self.reasoning_tokens:
            usage["output_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        reason = _STATUS_BY_FINISH.get(self.finish_reason or "stop")
        response = {**self.shell, "status": "incomplete" if reason else "completed",
                    "incomplete_details": {"reason": reason} if reason else None,
                    "output": [item.done() for item in self.items], "usage": usage}
        self.response = response
        self._event("response.incomplete" if reason else "response.completed", {"response": response}, out)

    def error(self, error: GatewayError) -> bytes:
        """The ``error`` event of a stream that fails after it started."""
        out: list[bytes] = []
        self._event("error", {"code": error.code, "message": error.message, "param": error.param}, out)
        return b"".join(out)
