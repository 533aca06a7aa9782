"""Traces of requests, exported over OpenTelemetry's OTLP/HTTP when an endpoint is set.

Each request the pipeline serves is one span (kind SERVER), started when the door handed it over
and ended where the request is logged, once (:func:`apps.gateway.pipeline.usage.call_log`): for
a stream, when the stream ends. Its children:

    cache lookup       exact, in-flight and semantic lookup; outcome and similarity
    chat <model>       one per upstream attempt (kind CLIENT): retries and fallbacks each get
                       their own, a failed one marked with its error; a stream's ends with it
    usage write        the usage row into the in-process buffer and the limits settled

Attributes follow OpenTelemetry's GenAI semantic conventions (``gen_ai.*``) with Switchyard's
own under ``switchyard.*``. An incoming W3C ``traceparent`` makes the request's span a child of
the caller's. A span is recorded as plain values (:class:`apps.gateway.otlp.SpanRecord`): what
varies per request in a dict, the attributes that repeat together as one block of values (the
request's :func:`_request_attributes`, an attempt's :func:`_attempt_attributes`) whose encoding
is made once per set of values. A finished request's spans are handed in one call to
:class:`apps.gateway.otlp.SpanExporter`, which encodes them and queues the bytes for its
thread to post: the request path builds no SDK object. A request the sampler leaves out
(``OTEL_TRACES_SAMPLER``, or the caller's ``traceparent``) keeps its trace id and records
nothing more. With no endpoint set, :func:`tracing_open` gives None and no span is recorded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from django.conf import settings

from apps.gateway.otlp import CLIENT, INTERNAL, SERVER, STATUS_ERROR, Sampler, SpanExporter, SpanRecord, ids_new
from apps.gateway.pipeline.call import CACHE_NAMES, Call

if TYPE_CHECKING:
    from apps.gateway.snapshot import ModelInfo

logger = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = "switchyard"
SCOPE_NAME = "switchyard.gateway"
# W3C trace context, as OpenTelemetry's propagator reads it.
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$")
# The request body's parameters the GenAI conventions name, as the chat form spells them
# (``max_completion_tokens`` wins over ``max_tokens`` when a body gives both).
_REQUEST_PARAMETERS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}


def traceparent_parse(header: str) -> tuple[int, int, bool] | None:
    """A ``traceparent``'s trace id, parent span id and sampled flag; None when malformed."""
    match = _TRACEPARENT.match(header)
    if match is None:
        return None
    version, trace, parent, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, parent_id = int(trace, 16), int(parent, 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def _provider_name(model: ModelInfo) -> str:
    """``gen_ai.provider.name``: the provider's kind, whose ``openai`` and ``anthropic`` are the
    conventions' own names (the simulated upstream is ``simulated``)."""
    return model.provider.kind


def _position(chain: tuple, model: ModelInfo) -> int:
    """Where ``model`` stands in the chain: 0 the first choice, 1 the first fallback, ..."""
    for at, item in enumerate(chain):
        if item is model:
            return at
    return -1


def _epoch_ns(perf: float) -> int:
    """A ``time.perf_counter()`` reading as nanoseconds since the epoch (spans' clock)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


class Tracing:
    """The process's tracer: starts each request's :class:`RequestTrace`."""

    def __init__(self, exporter: SpanExporter, sampler: Sampler) -> None:
        self.exporter = exporter
        self.sampler = sampler

    def request_start(self, call: Call, *, operation: str, traceparent: str | None = None) -> None:
        """Open ``call``'s span, under the caller's trace when ``traceparent`` names one."""
        parent = traceparent_parse(traceparent) if traceparent else None
        if parent is None:
            trace_id, parent_id, parent_sampled = ids_new(128), 0, None
        else:
            trace_id, parent_id, parent_sampled = parent
        trace = call.trace = RequestTrace(trace_id, parent_id, operation)
        if self.sampler.sampled(trace_id, parent_sampled):
            key = call.key
            trace.exporter = self.exporter
            # The rest of the request's attributes are set when it ends (:meth:`RequestTrace.end`).
            trace.root = SpanRecord(operation, SERVER, ids_new(64), _epoch_ns(call.started),
                                    {"switchyard.request_id": call.request_id})
            trace.tenant = key.tenant_slug
            trace.recording = True

    def shutdown(self) -> None:
        """Export what is pending and stop the exporting thread (blocks: run it off the loop)."""
        self.exporter.shutdown()


class RequestTrace:
    """One request's span and the children the pipeline opens under it."""

    __slots__ = ("attempts", "children", "exporter", "operation", "parent_id", "recording", "root", "tenant",
                 "trace", "trace_id", "upstream")

    def __init__(self, trace: int, parent_id: int, operation: str) -> None:
        self.trace = trace
        self.trace_id = format(trace, "032x")
        self.parent_id = parent_id
        self.operation = operation
        self.exporter: SpanExporter | None = None
        self.root: SpanRecord | None = None
        self.tenant = ""
        self.children: list[SpanRecord] = []
        self.attempts: dict[str, int] = {}  # model name -> attempts made on it
        self.upstream: SpanRecord | None = None  # a stream's attempt span, open until the stream ends
        # Not sampled (the sampler's or the caller's choice): the trace id is still the request's,
        # but no child is opened and no attribute built.
        self.recording = False

    def _child(self, name: str, kind: int, attributes: dict | None = None) -> SpanRecord:
        span = SpanRecord(name, kind, ids_new(64), time.time_ns(), attributes)
        self.children.append(span)
        return span

    def request_body(self, body: dict) -> None:
        """The request's parameters, once the dialect has given its chat form."""
        if not self.recording:
            return
        attributes = self.root.attributes
        for name, value in body.items():
            attribute = _REQUEST_PARAMETERS.get(name)
            if attribute is not None and value.__class__ in (int, float) and not (
                    name == "max_tokens" and "max_completion_tokens" in body):
                attributes[attribute] = value
        stop = body.get("stop")
        if isinstance(stop, str):
            attributes["gen_ai.request.stop_sequences"] = [stop]
        elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
            attributes["gen_ai.request.stop_sequences"] = stop

    async def cache_lookup(self, call: Call, lookup: Awaitable[T]) -> T:
        """``lookup`` (the pipeline's cache step) inside a ``cache lookup`` span."""
        if not self.recording:
            return await lookup
        span = self._child("cache lookup", INTERNAL)
        try:
            return await lookup
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.attributes["switchyard.cache"] = CACHE_NAMES[call.cache]
            if call.cache_similarity is not None:
                span.attributes["switchyard.cache.similarity"] = call.cache_similarity
            span.end = time.time_ns()

    def attempts_traced(self, call: Call, attempt: Callable[[ModelInfo], Awaitable[T]],
                        ) -> Callable[[ModelInfo], Awaitable[T]]:
        """``attempt`` with a span per call: each retry and fallback is one attempt."""
        if not self.recording:
            return attempt

        async def traced(model: ModelInfo) -> T:
            number = self.attempts[model.name] = self.attempts.get(model.name, 0) + 1
            span = SpanRecord(f"{self.operation} {model.upstream_id}", CLIENT, ids_new(64), time.time_ns(), {},
                              (_attempt_attributes, self.operation, _provider_name(model), model.upstream_id,
                               model.name, number, _position(call.chain, model), model.provider.base_url))
            self.children.append(span)
            try:
                result = await attempt(model)
            except BaseException as exc:
                _failed(span, exc)
                span.end = time.time_ns()
                raise
            if call.stream:
                self.upstream = span  # ends with the stream
            else:
                _answer(span, result[1])
                span.end = time.time_ns()
            return result

        return traced

    def end(self, call: Call, log: Callable[[], None]) -> None:
        """End a stream's attempt span, run ``log`` (the usage row and the limits settled) inside a
        ``usage write`` span, then end the request's span with what the request came to and hand
        the request's spans to the exporter."""
        if not self.recording:
            log()
            return
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            _usage(upstream.attributes, call)
            if call.status >= 400:
                upstream.status, upstream.status_message = STATUS_ERROR, call.error_code or ""
                upstream.attributes["error.type"] = call.error_code or str(call.status)
            upstream.end = time.time_ns()
        span = self._child("usage write", INTERNAL)
        try:
            log()
        finally:
            span.end = time.time_ns()
        root = self.root
        self._summarise(call, root)
        root.end = time.time_ns()
        self.recording = False  # ended: nothing more is recorded
        self.exporter.add(self.trace, self.parent_id, root, self.children)

    def _summarise(self, call: Call, span: SpanRecord) -> None:
        model = call.model
        attributes = span.attributes
        if call.requested_model:
            span.name = f"{self.operation} {call.requested_model}"
        attributes["switchyard.cost"] = float(call.cost)
        attributes["switchyard.overhead_ms"] = round(call.overhead_ms, 3)
        if call.stream and call.first_byte is not None:
            attributes["switchyard.ttft_ms"] = round((call.first_byte - call.started) * 1000, 3)
        if call.route_reason:
            attributes["switchyard.routing.reason"] = call.route_reason
        if call.cache_similarity is not None:
            attributes["switchyard.cache.similarity"] = call.cache_similarity
        if call.cache in ("exact", "semantic"):
            attributes["switchyard.saved_cost"] = float(call.saved_cost)
        if call.failures:
            attributes["switchyard.upstream_failures"] = list(call.failures)
        if call.status == 200 or call.cache in ("exact", "semantic"):
            _usage(attributes, call)
        error = None
        if call.status >= 400:
            error = call.error_code or str(call.status)
            if call.status >= 500 or call.status == 499:
                span.status, span.status_message = STATUS_ERROR, call.error_code or ""
        chain = call.chain
        span.common = (_request_attributes, self.operation, self.tenant, call.endpoint, call.requested_model or None,
                       CACHE_NAMES[call.cache], call.status, None if model is None else model.upstream_id,
                       None if model is None else _provider_name(model), bool(call.stream),
                       _names(chain), call.rule_id, error)


def _names(chain: tuple) -> tuple | None:
    """The chain's model names (None for none)."""
    if not chain:
        return None
    if len(chain) == 1:
        return (chain[0].name,)
    return tuple([item.name for item in chain])


def _request_attributes(operation: str, tenant: str, route: str, requested_model: str | None, cache: str,
                        status: int, response_model: str | None, provider: str | None, stream: bool,
                        chain: tuple | None, rule_id: int | None, error: str | None) -> dict:
    """The request span's attributes that repeat from request to request (a None is left out)."""
    return {"gen_ai.operation.name": operation, "switchyard.tenant": tenant, "http.route": route,
            "gen_ai.request.model": requested_model, "switchyard.cache": cache,
            "http.response.status_code": status, "gen_ai.response.model": response_model,
            "gen_ai.provider.name": provider, "switchyard.stream": True if stream else None,
            "switchyard.chain": None if chain is None else list(chain), "switchyard.routing.rule_id": rule_id,
            "error.type": error}


def _attempt_attributes(operation: str, provider: str, upstream_id: str, model: str, attempt: int, position: int,
                        base_url: str) -> dict:
    """An upstream attempt's attributes that repeat from request to request."""
    return {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
            "gen_ai.request.model": upstream_id, "switchyard.model": model, "switchyard.attempt": attempt,
            "switchyard.fallback_position": position, "server.address": _host(base_url)}


_HOSTS: dict[str, str] = {}


def _host(url: str) -> str:
    """A provider's host (``server.address``), parsed once per base URL."""
    host = _HOSTS.get(url)
    if host is None:
        host = urlsplit(url).hostname or ""
        if len(_HOSTS) < 1024:
            _HOSTS[url] = host
    return host


def _usage(attributes: dict, call: Call) -> None:
    """The request's tokens into ``attributes`` (cached and estimated only when they apply: every
    attribute costs its encoding on export)."""
    attributes["gen_ai.usage.input_tokens"] = call.input_tokens
    attributes["gen_ai.usage.output_tokens"] = call.output_tokens
    if call.cached_tokens:
        attributes["switchyard.usage.cached_tokens"] = call.cached_tokens
    if call.tokens_estimated:
        attributes["switchyard.usage.estimated"] = True


def _answer(span: SpanRecord, parsed: dict) -> None:
    """What a provider's JSON answer says of itself (OpenAI's shape or Anthropic's)."""
    attributes = span.attributes
    usage = parsed.get("usage")
    if usage.__class__ is dict:
        for first, second, attribute in (("prompt_tokens", "input_tokens", "gen_ai.usage.input_tokens"),
                                         ("completion_tokens", "output_tokens", "gen_ai.usage.output_tokens")):
            value = usage.get(first)
            if not isinstance(value, int):
                value = usage.get(second)
            if isinstance(value, int):
                attributes[attribute] = value
    choices = parsed.get("choices")
    if isinstance(choices, list):
        reasons = []
        for choice in choices:
            if isinstance(choice, dict):
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    reasons.append(reason)
    else:
        reason = parsed.get("stop_reason")
        reasons = [reason] if isinstance(reason, str) else []
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons


def _failed(span: SpanRecord, exc: BaseException) -> None:
    name = type(exc).__name__
    reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or name
    span.status, span.status_message = STATUS_ERROR, str(reason)
    span.attributes["error.type"] = name
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        span.attributes["http.response.status_code"] = status


def tracing_open() -> Tracing | None:
    """The process's tracer when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces' own endpoint)
    is set, else None. The standard ``OTEL_*`` variables are read here: the service name and
    resource attributes, the exporter's headers, timeout, compression and certificates, the
    sampler, the batch sizes (docs/configuration.md)."""
    if not settings.TRACING_ENABLED:
        return None
    # Imported only when tracing is on: the SDK's resource detection reads OTEL_SERVICE_NAME and
    # OTEL_RESOURCE_ATTRIBUTES and adds the telemetry.sdk.* attributes, once, at start.
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    exporter = SpanExporter(resource=dict(resource.attributes), scope=SCOPE_NAME)
    logger.info("tracing on: spans exported over OTLP/HTTP", extra={"service": resource.attributes["service.name"]})
    return Tracing(exporter, Sampler.from_env())
