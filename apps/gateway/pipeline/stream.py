"""A started stream: the provider's SSE relayed as it arrives, read on the way for usage and
its end, logged once however it ends (finished, failed mid-way, cut by the client or the server).

The only per-chunk work is finding event boundaries and spotting the usage event and the end
marker with bytes searches; a dialect whose client speaks another API passes a translator that
turns the relayed events into that API's.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

import aiohttp
import orjson

from apps.core.errors import GatewayError, UpstreamError, UpstreamTimeout, error_body
from apps.gateway.pipeline.call import Call, money
from apps.gateway.pipeline.usage import call_log, cut_short_status
from apps.providers.transport import ProviderStream

if TYPE_CHECKING:
    from apps.gateway.runtime import Runtime

_USAGE_EVENT = re.compile(rb'"usage"\s*:\s*\{')
_DONE = b"data: [DONE]"
_MAX_KEPT_STREAM_BYTES = 4 * 1024 * 1024
# After a stream's last event, how long its answer's end (usually right behind it) may take to
# come for the connection to be kept alive; a provider slower than that loses the connection.
_END_GRACE_SECONDS = 0.002


class StreamTranslator(Protocol):
    """Turns relayed OpenAI chat events into another API's events (a dialect provides it)."""

    def translate(self, data: bytes) -> bytes: ...

    def content_started(self) -> bool: ...


class TranslatorChain:
    """Two translators in a row: a provider's events to chat chunks, then to the client's events.
    It reads as the client's translator (its other attributes are the second's)."""

    def __init__(self, first: StreamTranslator, second: StreamTranslator) -> None:
        self.first = first
        self.second = second

    def __getattr__(self, name: str):
        return getattr(self.second, name)

    def translate(self, data: bytes) -> bytes:
        out = self.first.translate(data)
        return self.second.translate(out) if out else b""

    def content_started(self) -> bool:
        return self.second.content_started()


class ChatStream:
    """A started stream: iterate it for the bytes to send; it logs itself when it ends."""

    def __init__(self, runtime: Runtime, call: Call, body: dict, opened: ProviderStream, *,
                 translator: StreamTranslator | None = None,
                 error_event: Callable[[GatewayError], bytes] | None = None,
                 on_end: Callable[[ChatStream | None], None] | None = None) -> None:
        self.runtime = runtime
        self.call = call
        self.body = body
        self.opened = opened
        options = body.get("stream_options")
        self.client_wants_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        self.kept: list[bytes] = []
        self.kept_bytes = 0
        self.usage: dict | None = None
        self.done = False
        self.finished = False
        self.finish_reason: str | None = None
        self.on_end = on_end  # the pipeline's: the stream (ended normally) or None, once
        self.upstream_failed = False  # the provider sent an error event of its own (nothing to cache)
        self.translator = translator  # another API's events made of what is relayed
        self.error_event = error_event or _error_event  # the event that ends a stream failing mid-way
        # Who cut the stream short, when a door knows (the HTTP relay does); None: guess from
        # whether the server is draining (a WebSocket closed under it).
        self.ended_by_server: bool | None = None
        self.iterated = False

    def _keep(self, data: bytes) -> None:
        if self.kept_bytes < _MAX_KEPT_STREAM_BYTES:
            self.kept.append(data)
            self.kept_bytes += len(data)

    def _take_usage(self, out: bytes) -> bytes:
        """Read the usage event; drop it when the client did not ask for usage. Only the event
        holding the match is cut out and parsed, however many events ``out`` holds."""
        for match in _USAGE_EVENT.finditer(out):
            start = out.rfind(b"\n\n", 0, match.start())
            start = 0 if start < 0 else start + 2
            end = out.find(b"\n\n", match.end())
            end = len(out) if end < 0 else end + 2
            event = out[start:end]
            if not event.startswith(b"data:"):
                continue
            try:
                parsed = orjson.loads(event[5:])
            except orjson.JSONDecodeError:
                continue
            if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
                self.usage = parsed["usage"]
                if not self.client_wants_usage and not parsed.get("choices"):
                    return out[:start] + out[end:]
                return out
        return out

    def _relay(self, buffer: bytes) -> tuple[bytes, bytes]:
        cut = buffer.rfind(b"\n\n")
        if cut < 0:
            return b"", buffer
        out, carry = buffer[: cut + 2], buffer[cut + 2:]
        self._keep(out)
        return self._read(out), carry

    def _read(self, out: bytes) -> bytes:
        """Read whole relayed events for usage and the stream's end (OpenAI's chat events here;
        another protocol's stream overrides this); return what goes out."""
        if self.usage is None and _USAGE_EVENT.search(out):
            out = self._take_usage(out)
        at = line_find(out, _DONE)
        if at >= 0:
            self.done = True
            out = out[:at] + self._cost_comment() + out[at:]
        return out

    def _cost_comment(self) -> bytes:
        self._settle()
        return b": x-switchyard-cost " + money(self.call.cost).encode() + b"\n\n"

    def _settle(self) -> None:
        if self.usage is not None:
            self.call.set_usage(self.usage, fallback_prompt=0, fallback_completion=0)
        else:
            self.call.usage_estimate(self.body["messages"], self.streamed_text())

    def streamed_text(self) -> str:
        """The content streamed so far, assembled from the kept SSE events."""
        parts: list[str] = []
        for event in b"".join(self.kept).split(b"\n\n"):
            if not event.startswith(b"data:") or event.startswith(_DONE):
                continue
            try:
                chunk = orjson.loads(event[5:])
            except orjson.JSONDecodeError:
                continue
            for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        return "".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self.call
        carry = b""
        error: GatewayError | None = None
        translator = self.translator
        transform = translator.translate if translator is not None else None
        # With a translator: until what it produced holds content (not only the message's
        # start), its output is held and goes out with the first content, in the same write.
        content_started = translator.content_started if translator is not None else None
        held = b""
        self.iterated = True
        try:
            out, carry = self._relay(self.opened.first)
            call.first_byte = time.perf_counter()
            if out and transform is not None:
                out = transform(out)
                if content_started is not None and not content_started():
                    held, out = out, b""  # only the message's start: it leaves with the first content
            if out:
                yield out
            while not self.done:
                piece = await self.opened.readany()
                if not piece:
                    break
                out, carry = self._relay(carry + piece if carry else piece)
                if out and transform is not None:
                    out = transform(out)
                if held and out:
                    held, out = b"", held + out
                if out:
                    yield out
            if self.done:
                # The provider's last event is here: the client's stream ends now, whatever the
                # provider still does with its answer (a connection it holds open is dropped).
                await self.opened.end_wait(_END_GRACE_SECONDS)
            elif carry.strip():
                out, carry = self._relay(carry + b"\n\n")
                if out and transform is not None:
                    out = transform(out)
                if held:
                    held, out = b"", held + out
                if out:
                    yield out
            if held:
                held, out = b"", held
                yield out
            if not self.done:
                error = UpstreamError("The upstream stream ended before it finished.", code="upstream_stream_cut")
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not self.done:  # after the stream's own end, a connection that fails has lost nothing
                message = f"The upstream stream failed mid-way ({type(exc).__name__})."
                error = UpstreamTimeout(message) if isinstance(exc, TimeoutError) else UpstreamError(
                    message, code="upstream_stream_cut")
        finally:
            await self.opened.close()
            if error is None and not self.done:
                # The consumer stopped early (client gone, or the server's shutdown deadline
                # passed): bill what was produced.
                call.status, call.error_code = cut_short_status(self.runtime, server=self.ended_by_server)
                self._settle()
                self._end(None)
        if error is not None:
            call.status, call.error_code = error.status, error.code
            call.failures.append(f"{call.model.name}: {error.message}")
            self.runtime.breakers.failed(call.model, error.message)
            self._settle()
            self._end(None)
            yield held + self.error_event(error)
            return
        self._end(None if self.upstream_failed else self)

    def client_left(self) -> None:
        """The door saw its client leave: a stream cut from here on is the client's doing."""
        self.ended_by_server = False

    async def close(self) -> None:
        """End a stream its door never read (the request ended before the relay began): the
        provider's connection is closed and the request logged as cut short, billed for its prompt."""
        if self.iterated or self.finished:
            return
        await self.opened.close()
        self.call.status, self.call.error_code = cut_short_status(self.runtime, server=self.ended_by_server)
        self._settle()
        self._end(None)

    def _end(self, done: ChatStream | None) -> None:
        """Log the request and hand its answer (or None) to the pipeline, once."""
        if self.finished:
            return
        self.finished = True
        call_log(self.runtime, self.call)
        if self.on_end is not None:
            self.on_end(done)


def line_find(events: bytes, marker: bytes) -> int:
    """Where ``marker`` begins a line of ``events`` (whole SSE events), or -1. Only there is it
    the stream's own: an answer's text may spell it inside an event's JSON, which holds no raw
    line break."""
    if events.startswith(marker):
        return 0
    at = events.find(b"\n" + marker)
    return at + 1 if at >= 0 else -1


def _error_event(error: GatewayError) -> bytes:
    return b"data: " + error_body(error) + b"\n\n"
