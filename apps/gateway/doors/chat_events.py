"""One chat request as a sequence of events, for the frontend doors (WebSocket, EventSource).

The same pipeline as ``POST /v1/chat/completions`` with ``stream: true`` (validation, routing,
fallbacks, the cache stage, cost and the usage row), seen as events instead of SSE bytes:

    {"type": "delta",    "id", "content"}                 each piece of text as it arrives
    {"type": "sentence", "id", "text"}                    each complete sentence (when asked)
    {"type": "done",     "id", "request_id", "model", "provider", "cache", "usage", "cost",
                         "latency_ms", "ttft_ms", "finish_reason", "trace_id" (when tracing is on)}
    {"type": "error",    "id", "status", "error": {"message", "type", "param", "code"}}

A request ends with exactly one ``done`` or one ``error``. Closing the iterator early (the
client cancelled or left) stops the upstream call; the usage row then says 499 and bills the
tokens produced so far, which :meth:`ChatEvents.cancelled_event` reports.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson

from apps.core.errors import BadRequest, GatewayError, UpstreamError
from apps.gateway.dialects.openai import OPENAI_CHAT, replay_parts
from apps.gateway.pipeline.call import CACHE_NAMES, Call, money
from apps.gateway.pipeline.run import ChatRequest, chat
from apps.gateway.sentences import SentenceBuffer
from apps.providers.transport import UpstreamClientError

_DONE = b"[DONE]"


def error_event(request_id, error: GatewayError) -> dict:
    """An ``error`` event carrying the OpenAI error body."""
    return {"type": "error", "id": request_id, "status": error.status, **error.body()}


def _client_error_event(request_id, exc: UpstreamClientError) -> dict:
    """The provider refused the request itself: pass its OpenAI-shaped error on."""
    try:
        parsed = orjson.loads(exc.body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return {"type": "error", "id": request_id, "status": exc.status, "error": parsed["error"]}
    error = BadRequest(f"The provider refused the request ({exc.status}).", code="upstream_client_error")
    return {**error_event(request_id, error), "status": exc.status}


class ChatEvents:
    """Run one chat request through the pipeline; iterate :meth:`events` for what to send.

    ``call`` is the pipeline's :class:`~apps.gateway.pipeline.call.Call` once the request has been
    validated (None before), so a door can report what a cancelled request cost.
    """

    def __init__(self, runtime, key, body: dict, *, request_id, sentences: bool = False,
                 cache_control: str | None = None, namespace: str | None = None, tags: str | None = None,
                 session: str | None = None, quality_target: str | None = None,
                 started: float | None = None, traceparent: str | None = None) -> None:
        self.runtime = runtime
        self.key = key
        self.body = body
        self.id = request_id
        self.sentences = SentenceBuffer() if sentences else None
        self.cache_control = cache_control
        self.namespace = namespace
        self.tags = tags
        self.session = session
        self.quality_target = quality_target
        self.traceparent = traceparent
        self.started = started if started is not None else time.perf_counter()
        self.request: ChatRequest | None = None
        self.first_token: float | None = None
        self.finish_reason: str | None = None
        self.hit_usage: dict | None = None

    async def events(self) -> AsyncIterator[dict]:
        body = dict(self.body)
        body["stream"] = True
        # The parsed body goes in as it is: the validator refuses what no JSON writer takes
        # (a body nested past orjson's limit), which serializing it first would crash on.
        self.request = ChatRequest(self.key, body, OPENAI_CHAT, self.started, cache_control=self.cache_control,
                                   namespace=self.namespace, tags=self.tags, session=self.session,
                                   quality_target=self.quality_target, traceparent=self.traceparent)
        try:
            answer = await chat(self.runtime, self.request)
        except GatewayError as error:
            yield error_event(self.id, error)
            return
        except UpstreamClientError as exc:
            yield _client_error_event(self.id, exc)
            return
        if answer.hit is not None:
            async for event in self._replay(answer.hit):
                yield event
            return
        pieces = answer.stream.__aiter__()
        try:
            async for data in pieces:
                # One read from the upstream often holds several chunks: their text goes out as
                # one delta (fewer frames to build and send; the text is the same).
                texts: list[str] = []
                for raw in data.split(b"\n\n"):
                    if not raw.startswith(b"data:"):
                        continue  # blank, or the cost comment
                    payload = raw[5:].strip()
                    if payload == _DONE:
                        continue
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        continue
                    if not isinstance(chunk, dict):
                        continue
                    if "error" in chunk:
                        for event in self._text_events("".join(texts)):
                            yield event
                        yield self._stream_error(chunk)
                        return
                    for event in self._chunk_events(chunk, texts):
                        yield event
                for event in self._text_events("".join(texts)):
                    yield event
        finally:
            await pieces.aclose()
            await answer.close()
        if self.sentences is not None:
            rest = self.sentences.flush()
            if rest:
                yield {"type": "sentence", "id": self.id, "text": rest}
        yield self.done_event()

    @property
    def call(self) -> Call | None:
        """The pipeline's record of this request once it was accepted (None before)."""
        return self.request.call if self.request is not None else None

    def _chunk_events(self, chunk: dict, texts: list[str]) -> list[dict]:
        """Collect the chunk's text into ``texts``; return events that cannot wait (tool calls)."""
        events = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                texts.append(text)
            if delta.get("tool_calls"):
                events.extend(self._text_events("".join(texts)))
                texts.clear()
                events.append({"type": "delta", "id": self.id, "content": "", "tool_calls": delta["tool_calls"]})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _text_events(self, text: str) -> list[dict]:
        if not text:
            return []
        events = [self._delta(text)]
        if self.sentences is not None:
            events.extend({"type": "sentence", "id": self.id, "text": s} for s in self.sentences.add(text))
        return events

    def _delta(self, text: str) -> dict:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        return {"type": "delta", "id": self.id, "content": text}

    def _stream_error(self, chunk: dict) -> dict:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
        status = self.call.status if self.call is not None and self.call.status >= 400 else UpstreamError.status
        return {"type": "error", "id": self.id, "status": status, "error": error}

    async def _replay(self, hit) -> AsyncIterator[dict]:
        response = hit.response
        choice = (response.get("choices") or [{}])[0]
        content = (choice.get("message") or {}).get("content") or ""
        for part in replay_parts(content):
            if part:
                yield self._delta(part)
                if self.sentences is not None:
                    for sentence in self.sentences.add(part):
                        yield {"type": "sentence", "id": self.id, "text": sentence}
        if self.sentences is not None:
            rest = self.sentences.flush()
            if rest:
                yield {"type": "sentence", "id": self.id, "text": rest}
        self.finish_reason = choice.get("finish_reason") or "stop"
        usage = response.get("usage")
        self.hit_usage = usage if isinstance(usage, dict) else None
        yield self.done_event()

    def done_event(self, *, finish_reason: str | None = None) -> dict:
        """The closing event: what was used, what it cost, where it came from, how fast."""
        call = self.call
        now = time.perf_counter()
        if self.hit_usage is not None:
            prompt = self.hit_usage.get("prompt_tokens") or 0
            completion = self.hit_usage.get("completion_tokens") or 0
        else:
            prompt, completion = call.input_tokens, call.output_tokens
        event = {
            "type": "done", "id": self.id, "request_id": call.request_id,
            "model": call.model.name if call.model else None,
            "provider": call.model.provider.name if call.model else None,
            "cache": CACHE_NAMES[call.cache],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "cached_tokens": call.cached_tokens, "estimated": call.tokens_estimated},
            "cost": money(call.cost),
            "latency_ms": round((now - self.started) * 1000, 2),
            "ttft_ms": round((self.first_token - self.started) * 1000, 2) if self.first_token else None,
            "overhead_ms": round(call.overhead_ms, 3),
            "finish_reason": finish_reason or self.finish_reason or "stop",
        }
        if call.trace is not None:
            event["trace_id"] = call.trace.trace_id
        if call.cache in ("exact", "semantic"):
            event["saved_cost"] = money(call.saved_cost)
            if call.cache_similarity is not None:
                event["similarity"] = round(call.cache_similarity, 4)
        return event

    def cancelled_event(self) -> dict:
        """The ``done`` event of a cancelled request: the tokens produced so far and their cost."""
        if self.call is None:
            return {"type": "done", "id": self.id, "request_id": None, "model": None, "provider": None,
                    "cache": "bypass", "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                                 "cached_tokens": 0, "estimated": False},
                    "cost": "0", "latency_ms": round((time.perf_counter() - self.started) * 1000, 2),
                    "ttft_ms": None, "overhead_ms": 0.0, "finish_reason": "cancelled"}
        return self.done_event(finish_reason="cancelled")
