"""A stream from a native Anthropic provider, relayed byte for byte.

The per-chunk work is what :class:`~apps.gateway.pipeline.stream.ChatStream` does for OpenAI streams:
find event boundaries, and three bytes searches for the only events worth parsing:
``message_start`` (input usage, prompt-cache reads and writes), ``message_delta`` (output
usage, stop reason) and ``message_stop`` (the end, before which the ``x-switchyard-cost``
comment goes). A provider's own ``event: error`` is relayed and ends the stream as failed.
"""

from __future__ import annotations

import orjson

from apps.gateway.dialects.anthropic.translate import STOP_TO_FINISH
from apps.gateway.pipeline.stream import ChatStream, line_find

_START = b"event: message_start"
_DELTA = b"event: message_delta"
_STOP = b"event: message_stop"
_ERROR = b"event: error"


def event_data(event: bytes) -> dict | None:
    start = event.find(b"\ndata:")
    if start < 0:
        return None
    try:
        parsed = orjson.loads(event[start + 6:])
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def message_priced(call, messages: list, message: dict) -> None:
    """Price ``call`` from a native Anthropic message's usage (counted here when it has none)."""
    usage = message.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
        call.set_usage_anthropic(usage, fallback_prompt=0, fallback_completion=0)
    else:
        text = "".join(b.get("text") or "" for b in message.get("content") or [] if isinstance(b, dict))
        call.usage_estimate(messages, text)


class NativeMessagesStream(ChatStream):
    """Anthropic SSE in, the same bytes out; usage and cost read on the way."""

    def __init__(self, runtime, call, body: dict, opened, **options) -> None:
        super().__init__(runtime, call, body, opened, **options)
        self.replayable = True  # only text and tool_use blocks: the cache can keep it

    def _read(self, out: bytes) -> bytes:
        if _START in out or _DELTA in out or _ERROR in out:
            self._read_events(out)
        at = line_find(out, _STOP)
        if at >= 0:
            self.done = True
            out = out[:at] + self._cost_comment() + out[at:]
        return out

    def _read_events(self, out: bytes) -> None:
        for event in out.split(b"\n\n"):
            if event.startswith(_START):
                data = event_data(event)
                message = data.get("message") if data else None
                if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                    self.usage = dict(message["usage"])
            elif event.startswith(_DELTA):
                data = event_data(event) or {}
                usage = data.get("usage")
                if isinstance(usage, dict):
                    merged = dict(self.usage or {})
                    merged.update((name, value) for name, value in usage.items() if value is not None)
                    self.usage = merged
                delta = data.get("delta")
                if isinstance(delta, dict) and delta.get("stop_reason"):
                    self.finish_reason = STOP_TO_FINISH.get(delta["stop_reason"], "stop")
            elif event.startswith(_ERROR):
                self.upstream_failed = True
                self.done = True  # the provider ended it; nothing more will come
                self.call.status, self.call.error_code = 502, "upstream_stream_error"
                self._settle()

    def _settle(self) -> None:
        usage = self.usage
        if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
            self.call.set_usage_anthropic(usage, fallback_prompt=0, fallback_completion=0)
        else:
            self.call.usage_estimate(self.body["messages"], self.streamed_text())

    def streamed_text(self) -> str:
        """The text streamed so far, from the kept events."""
        parts: list[str] = []
        for event in b"".join(self.kept).split(b"\n\n"):
            if event.startswith(b"event: content_block_delta"):
                delta = (event_data(event) or {}).get("delta") or {}
                if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                    parts.append(delta["text"])
                elif delta.get("type") != "input_json_delta":
                    self.replayable = False
            elif event.startswith(b"event: content_block_start"):
                block = (event_data(event) or {}).get("content_block") or {}
                if block.get("type") != "text":
                    self.replayable = False
        return "".join(parts)
