"""The pipeline: every request's steps in one order, whichever door it came through.

    prepare   the dialect validates the client's body and gives its chat form
    route     the requested model to the chain of models to try (:mod:`.route`)
    limit     reserve the key's and tenant's rate limits and budgets (:mod:`.limits`)
    cache     exact, in-flight and semantic lookup (:mod:`.cache`); a hit ends here
    call      the chain with retries, breakers and fallbacks (:mod:`.upstream`)
    answer    the dialect prices the answer and writes it in the client's form
    end       one usage row, the limits settled, identical requests waiting on this one
              released, and the answer saved to the cache (:mod:`.usage`, :mod:`.cache`)

:func:`chat` returns an :class:`Answer` (a cache hit, a JSON answer or a started stream) for
the door to render; it has logged the request by then, except for a stream, which logs itself
when it ends (the door relays it, and closes it if it never starts relaying).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from apps.cache.store import CachedAnswer
from apps.core import tokens
from apps.core.errors import BadRequest, GatewayError
from apps.gateway.attribution import attribution_from
from apps.gateway.dialects.base import Dialect, Prepared
from apps.gateway.pipeline.cache import cache_hit_log, cache_lookup, cache_plan, cache_settle
from apps.gateway.pipeline.call import Call
from apps.gateway.pipeline.limits import limits_reserve, limits_settle
from apps.gateway.pipeline.route import call_route, call_route_learned, quality_target_parse
from apps.gateway.pipeline.stream import ChatStream
from apps.gateway.pipeline.upstream import Attempt, answer_done, upstream_call
from apps.gateway.pipeline.usage import call_fail, call_log, cut_short_status
from apps.gateway.snapshot import KeyInfo, ModelInfo
from apps.gateway.validation import embeddings_body_validate, embeddings_tokens_check
from apps.providers.protocols import embeddings_path
from apps.providers.transport import UpstreamClientError

if TYPE_CHECKING:
    from apps.gateway.runtime import Runtime


@dataclass(slots=True)
class ChatRequest:
    """What a door hands the pipeline: who asks, the parsed body in the door's dialect, and the
    request's cache and routing options."""

    key: KeyInfo
    body: dict
    dialect: Dialect
    started: float
    cache_control: str | None = None
    namespace: str | None = None
    tags: str | None = None
    session: str | None = None  # x-switchyard-session-id
    quality_target: str | None = None  # x-switchyard-quality-target, for a learned rule
    forwarded: dict[str, str] = field(default_factory=dict)
    batch_line: tuple[str, str] | None = None  # (request id, endpoint) of a batch job's line
    traceparent: str | None = None  # the caller's W3C trace context: the request's span joins its trace
    # Set by the pipeline once the request is validated, routed and within its limits (None
    # before): the door reads the request id and, for a cancelled request, what it cost.
    call: Call | None = None


@dataclass(slots=True)
class Answer:
    """What the pipeline gives back: exactly one of ``hit``, ``raw`` or ``stream`` is set."""

    call: Call
    prepared: Prepared
    hit: CachedAnswer | None = None  # a cache hit; ``hit.response`` is a chat.completion
    raw: bytes | None = None  # a JSON answer, in the client's dialect
    completion: dict | None = None  # the JSON answer as a chat.completion (None: not cacheable)
    stream: ChatStream | None = None  # a started stream, in the client's dialect

    async def close(self) -> None:
        """End a stream the door did not relay to its end (a no-op otherwise)."""
        if self.stream is not None:
            await self.stream.close()


def call_new(key: KeyInfo, endpoint: str, started: float, batch_line: tuple[str, str] | None = None) -> Call:
    """A call; for a line of a batch job, ``batch_line`` is ``(request_id, endpoint)`` to log it under."""
    if batch_line is None:
        return Call(key=key, endpoint=endpoint, started=started)
    request_id, logged_endpoint = batch_line
    return Call(key=key, endpoint=logged_endpoint, started=started, request_id=request_id, batch=True)


def _attempt(runtime: Runtime, dialect: Dialect, prepared: Prepared, *, stream: bool) -> Attempt:
    send = runtime.transport.open_stream if stream else runtime.transport.post_json

    async def attempt(model: ModelInfo):
        request = dialect.upstream_request(prepared, model, stream=stream)
        reader = request.reader
        try:
            result = await send(model, request.path, request.payload, request.headers)
            if reader is None:
                return result
            # The provider speaks another protocol: its answer is read back into the chat form.
            return await reader.stream_read(result) if stream else reader.json_read(*result, model)
        except UpstreamClientError as exc:
            read = reader.refusal_read(exc) if reader is not None else exc
            translated = dialect.refusal(read, model)
            if translated is exc:
                raise
            raise translated from None

    return attempt


async def chat(runtime: Runtime, request: ChatRequest) -> Answer:
    """Serve one chat request; raises :class:`GatewayError` (or a provider's own refusal,
    :class:`UpstreamClientError`) after logging it."""
    dialect = request.dialect
    call = call_new(request.key, dialect.endpoint, request.started, request.batch_line)
    if runtime.tracing is not None:
        runtime.tracing.request_start(call, operation="chat", traceparent=request.traceparent)
    try:
        prepared = dialect.prepare(request.body, request.forwarded)
        call.attribution = attribution_from(prepared.body, request.tags, request.session)
        call.body_keep(prepared.body.get("messages"))
        if call.trace is not None:
            call.trace.request_body(prepared.body)
        call.stream = bool(prepared.body.get("stream"))
        call_route(runtime, call, prepared.body, request.tags, mode="chat", dialect=dialect,
                   native_only=prepared.native_only)
        target = quality_target_parse(request.quality_target)
        if call.learned_rule is not None:
            await call_route_learned(runtime, call, prepared.body, target)
        await limits_reserve(runtime, call, prepared.body)
        dialect.routed(call, prepared)
    except GatewayError as exc:
        call.requested_model = call.requested_model or str(request.body.get("model") or "")[:200]
        call_fail(runtime, call, exc)
        raise
    request.call = call
    plan = cache_plan(call, prepared.body, cache_control=request.cache_control, namespace=request.namespace)
    streaming = False
    try:
        if plan is not None:
            lookup = cache_lookup(runtime, call, plan)
            hit = await (lookup if call.trace is None else call.trace.cache_lookup(call, lookup))
            if hit is not None:
                call.body_answer(hit.response)
                cache_hit_log(runtime, call, hit)
                return Answer(call, prepared, hit=hit)
        attempt = _attempt(runtime, dialect, prepared, stream=call.stream)
        if call.stream:
            _model, opened = await upstream_call(runtime, call, attempt)

            def on_end(done: ChatStream | None) -> None:
                completion = dialect.stream_completion(done) if done is not None else None
                call.body_answer(completion)
                cache_settle(runtime, call, plan, completion)

            try:
                stream = dialect.stream_open(runtime, call, prepared, opened, on_end)
            except BaseException:
                await opened.close()  # its connection and concurrency slot go back
                raise
            streaming = True
            return Answer(call, prepared, stream=stream)
        model, (raw, parsed) = await upstream_call(runtime, call, attempt)
        call.upstream_ended = call.first_byte = time.perf_counter()
        answer, completion = dialect.json_answer(call, prepared, model, raw, parsed)
        call.body_answer(completion)
        answer_done(runtime, call)
        cache_settle(runtime, call, plan, completion)
        return Answer(call, prepared, raw=answer, completion=completion)
    except asyncio.CancelledError:
        if not call.logged:
            # Cancelled while waiting for the cache or the provider: nothing was produced,
            # nothing is billed, but the request is on record.
            call.status, call.error_code = cut_short_status(runtime)
            call_log(runtime, call)
        raise
    finally:
        if not streaming:
            cache_settle(runtime, call, plan, None)  # identical requests waiting on this one go on
            limits_settle(runtime, call)  # a no-op unless the request ended without its row


async def embeddings(runtime: Runtime, key: KeyInfo, body: dict, *, started: float,
                     batch_line: tuple[str, str] | None = None, traceparent: str | None = None) -> tuple[Call, bytes]:
    """Serve one embeddings request: the provider's answer, byte for byte."""
    call = call_new(key, "/v1/embeddings", started, batch_line)
    if runtime.tracing is not None:
        runtime.tracing.request_start(call, operation="embeddings", traceparent=traceparent)
    try:
        embeddings_body_validate(body)
        call.attribution = attribution_from(body, None, None)
        call.body_keep({"input": body.get("input")})
        call_route(runtime, call, body, None, mode="embedding")
        embeddings_tokens_check(body, context_window=max(model.context_window for model in call.chain))
        await limits_reserve(runtime, call, body, mode="embedding")
    except GatewayError as exc:
        call.requested_model = call.requested_model or str(body.get("model") or "")[:200]
        call_fail(runtime, call, exc)
        raise

    async def attempt(model: ModelInfo):
        path = embeddings_path(model)
        if path is None:
            raise BadRequest(f"The model '{model.name}' is served by a {model.provider.kind} provider, which this "
                             "gateway does not send embeddings requests to.", param="model")
        payload = dict(body)
        payload["model"] = model.upstream_id
        return await runtime.transport.post_json(model, path, orjson.dumps(payload))

    try:
        _model, (raw, parsed) = await upstream_call(runtime, call, attempt)
        call.upstream_ended = time.perf_counter()
        usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else None
        if usage and isinstance(usage.get("prompt_tokens"), int):
            call.set_usage({"prompt_tokens": usage["prompt_tokens"], "completion_tokens": 0},
                           fallback_prompt=0, fallback_completion=0)
        else:
            text = body["input"] if isinstance(body["input"], str) else " ".join(
                item for item in body["input"] if isinstance(item, str))
            call.set_usage(None, fallback_prompt=tokens.text_tokens(text), fallback_completion=0)
        answer_done(runtime, call)
        return call, raw
    finally:
        limits_settle(runtime, call)
