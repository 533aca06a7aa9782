"""The request pipeline shared by every door (HTTP JSON, SSE, and later WebSocket).

    authenticate -> validate -> route -> reserve limits -> call upstream (retries, fallbacks)
    -> cost -> log (which settles the limits reservation)

Everything here is ``async`` and in memory on the warm path: the key, the rules and the
prices come from :mod:`apps.gateway.runtime`, the upstream call goes through the keep-alive
connections of :mod:`apps.providers.http1` per provider, and the usage row is appended to an
in-process buffer.
Streams are relayed as the bytes arrive; the only per-chunk work is finding SSE event
boundaries and spotting the usage event with a bytes search.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import orjson
from django.conf import settings

from apps.core import tokens
from apps.core.errors import (
    BadRequest,
    GatewayError,
    ModelNotAllowed,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from apps.gateway.limits import limits_refusal_raise, limits_reserve, limits_settle
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo, ModelInfo
from apps.gateway.validation import (
    chat_body_validate,
    embeddings_body_validate,
    embeddings_tokens_check,
    model_field,
    tags_from,
)
from apps.providers.transport import (
    ANTHROPIC_KIND,
    OpenStream,
    UpstreamClientError,
    open_stream,
    post_json,
    with_fallbacks,
)
from apps.routing.engine import route_resolve

_USAGE_EVENT = re.compile(rb'"usage"\s*:\s*\{')
_DONE = b"data: [DONE]"
_MAX_KEPT_STREAM_BYTES = 4 * 1024 * 1024
# After a stream's last event, how long its answer's end (usually right behind it) may take to
# come for the connection to be kept alive; a provider slower than that loses the connection.
_END_GRACE_SECONDS = 0.002
_ZERO = Decimal(0)
_CACHE_HEADER = {"miss": b"miss", "exact": b"hit-exact", "semantic": b"hit-semantic", "bypass": b"bypass"}


_REQUEST_PREFIX = "req_" + os.urandom(8).hex()
_request_counter = itertools.count(1)


def request_id_new() -> str:
    """Unique per request: a random per-process prefix and a counter (no syscall per request)."""
    return f"{_REQUEST_PREFIX}{next(_request_counter):08x}"


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.0000000001')).normalize():f}"


@dataclass(slots=True)
class Call:
    """One request as it moves through the pipeline, and what its usage row will say."""

    key: KeyInfo
    endpoint: str
    started: float
    request_id: str = field(default_factory=request_id_new)
    requested_model: str = ""
    chain: tuple = ()
    rule_id: int | None = None
    model: ModelInfo | None = None
    stream: bool = False
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    cost: Decimal = _ZERO
    status: int = 200
    error_code: str = ""
    upstream_started: float | None = None
    upstream_ended: float | None = None
    first_byte: float | None = None
    overhead_ms: float = 0.0
    failures: list = field(default_factory=list)
    cache: str = "miss"  # miss | exact | semantic | bypass
    cache_similarity: float | None = None
    saved_cost: Decimal = _ZERO
    cache_age: int | None = None
    baseline: ModelInfo | None = None  # what routing is compared with: the model asked for, or the dearest
    reservation: object = None  # apps.limits.enforce.Reservation when the key or tenant has limits
    refusal: GatewayError | None = None  # a token or budget refusal, raised unless the cache answers
    batch: bool = False  # a line of a batch job: priced with the model's batch discount
    prompt_counted: int | None = field(default=None, init=False, repr=False)
    logged: bool = field(default=False, init=False, repr=False)  # its row is written once, however it ends

    def prompt_tokens_count(self, messages: list) -> int:
        """The request's prompt as the tokenizer counts it, counted once however many stages ask
        (limits' reservation, a translated stream's ``message_start``, usage an upstream omitted)."""
        if self.prompt_counted is None:
            self.prompt_counted = tokens.messages_tokens(messages)
        return self.prompt_counted

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The ``x-switchyard-*`` headers (cost deferred to the stream's end for streams)."""
        model = self.model
        deferred = self.stream and self.status == 200 and self.cache in ("miss", "bypass")
        headers = [
            (b"x-switchyard-request-id", self.request_id.encode()),
            (b"x-switchyard-model", (model.name if model else "").encode()),
            (b"x-switchyard-provider", (model.provider.name if model else "").encode()),
            (b"x-switchyard-cache", _CACHE_HEADER[self.cache]),
            (b"x-switchyard-cost", b"deferred" if deferred else _money(self.cost).encode()),
            (b"x-switchyard-overhead-ms", f"{self.overhead_ms:.2f}".encode()),
        ]
        if self.cache_similarity is not None:
            headers.append((b"x-switchyard-cache-similarity", f"{self.cache_similarity:.4f}".encode()))
        if self.cache_age is not None:
            headers.append((b"age", str(self.cache_age).encode()))
        if self.reservation is not None:
            headers += self.reservation.headers(cost=None if deferred else self.cost)
        return headers

    def set_usage(self, usage: dict | None, *, fallback_prompt: int, fallback_completion: int) -> None:
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.input_tokens = usage["prompt_tokens"]
            self.output_tokens = usage.get("completion_tokens") or 0
            details = usage.get("prompt_tokens_details") or {}
            self.cached_tokens = details.get("cached_tokens") or 0 if isinstance(details, dict) else 0
        else:
            self.input_tokens, self.output_tokens, self.cached_tokens = fallback_prompt, fallback_completion, 0
            self.tokens_estimated = True
        self.cache_write_tokens = 0
        self._price()

    def set_usage_anthropic(self, usage: dict | None, *, fallback_prompt: int, fallback_completion: int) -> None:
        """Usage in Anthropic's shape: ``input_tokens`` there excludes the prompt-cache reads
        and writes, which are counted (and priced) apart."""
        if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
            read = usage.get("cache_read_input_tokens") or 0
            written = usage.get("cache_creation_input_tokens") or 0
            self.input_tokens = usage["input_tokens"] + read + written
            self.cached_tokens, self.cache_write_tokens = read, written
            self.output_tokens = usage.get("output_tokens") or 0
        else:
            self.set_usage(None, fallback_prompt=fallback_prompt, fallback_completion=fallback_completion)
            return
        self._price()

    def _price(self) -> None:
        if self.model is not None:
            self.cost = self.model.cost(self.input_tokens, self.cached_tokens, self.output_tokens,
                                        self.cache_write_tokens, batch=self.batch)

    def _routing_saved(self) -> Decimal:
        """What the answer would have cost on the baseline model, less what it cost (never
        negative; nothing for cache hits, whose saving is counted as the cache's)."""
        model, baseline = self.model, self.baseline
        if model is None or baseline is None or baseline is model or self.cache in ("exact", "semantic"):
            return _ZERO
        baseline_cost = baseline.cost(self.input_tokens, self.cached_tokens, self.output_tokens,
                                      self.cache_write_tokens, batch=self.batch)
        return max(baseline_cost - self.cost, _ZERO)

    def log(self, runtime: Runtime) -> None:
        """Append this request's usage row to the buffer (no I/O here); a request has one row,
        so a second call adds nothing."""
        if self.logged:
            return
        self.logged = True
        now = time.perf_counter()
        model = self.model
        runtime.usage.append({
            "tenant_id": self.key.tenant_id,
            "api_key_id": self.key.id,
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "requested_model": self.requested_model[:200],
            "model_used": model.name if model else "",
            "model_id": model.id if model else None,
            "provider_id": model.provider.id if model else None,
            "routing_rule_id": self.rule_id,
            "price_id": model.price_id if model else None,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "tokens_estimated": self.tokens_estimated,
            "cost": self.cost,
            "latency_ms": (now - self.started) * 1000,
            "ttft_ms": (self.first_byte - self.started) * 1000 if self.first_byte else None,
            "overhead_ms": self.overhead_ms,
            "is_stream": self.stream,
            "cache_outcome": self.cache,
            "cache_similarity": self.cache_similarity,
            "saved_cost": self.saved_cost,
            "routing_saved_cost": self._routing_saved(),
            "status_code": self.status,
            "error_code": self.error_code[:64],
            "upstream_failures": "; ".join(self.failures)[:2000] if self.failures else "",
            "created_at": datetime.now(UTC),
        })
        if self.reservation is not None:
            limits_settle(runtime, self)


def call_route(runtime: Runtime, call: Call, body: dict, tags_header: str | None, *, mode: str,
               dialect: str = "openai", native_only: str | None = None) -> None:
    """Resolve the requested model to the chain of models to try, for a validated body.

    ``dialect`` is the door's API: OpenAI's doors never reach a provider that speaks only
    Anthropic's Messages API; the Messages door reaches any chat model, and only native
    Anthropic ones when the request uses ``native_only`` features (a description for the error).
    """
    snapshot = runtime.snapshot
    requested = model_field(body)
    call.requested_model = requested
    allowed = call.key.allowed_models
    if allowed is not None and requested != "auto" and requested in snapshot.models and requested not in allowed:
        raise ModelNotAllowed(f"This API key may not use the model '{requested}'.", param="model")
    prompt_text = tokens.messages_text(body.get("messages") or []) if mode == "chat" else ""
    route = route_resolve(
        snapshot, tenant_id=call.key.tenant_id, requested=requested, prompt_text=prompt_text,
        prompt_tokens=tokens.prompt_tokens_rough(prompt_text), tags=tags_from(body, tags_header),
    )
    if route is None:
        raise ModelNotFound(f"The model '{requested}' does not exist.", param="model")
    chain = tuple(m for m in route.chain if m.mode == mode)
    if not chain:
        raise ModelNotFound(f"The model '{requested}' cannot serve {mode} requests.", param="model")
    if dialect == "openai" and mode == "chat":
        chain = tuple(m for m in chain if m.provider.kind != ANTHROPIC_KIND)
        if not chain:
            raise ModelNotFound(f"The model '{requested}' is served by an Anthropic Messages API provider: "
                                "call POST /v1/messages.", param="model")
    elif native_only:
        chain = tuple(m for m in chain if m.provider.kind == ANTHROPIC_KIND)
        if not chain:
            raise BadRequest(f"This request uses {native_only}, which only a native Anthropic provider takes; "
                             f"the model '{requested}' is served through an OpenAI-compatible one.", param="model")
    if allowed is not None:
        chain = tuple(m for m in chain if m.name in allowed)
        if not chain:
            raise ModelNotAllowed(f"This API key may not use the model '{requested}'.", param="model")
    call.chain = chain
    call.rule_id = route.rule_id
    named = snapshot.models.get(requested)
    call.baseline = named if named is not None and named.mode == mode else snapshot.reference_models.get(mode)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and limit > max(m.max_output_tokens for m in chain):
        raise BadRequest(
            f"max_tokens {limit} exceeds the model's limit of {max(m.max_output_tokens for m in chain)}.",
            param="max_tokens",
        )


def _upstream_body(body: dict, model: ModelInfo, *, stream: bool) -> bytes:
    out = dict(body)
    out["model"] = model.upstream_id
    if stream:
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True  # usage is recorded whether or not the client sees it
        out["stream_options"] = options
    return orjson.dumps(out)


def _call_new(key: KeyInfo, endpoint: str, started: float, batch_line: tuple[str, str] | None) -> Call:
    """A call; for a line of a batch job, ``batch_line`` is ``(request_id, endpoint)`` to log it under."""
    if batch_line is None:
        return Call(key=key, endpoint=endpoint, started=started)
    request_id, logged_endpoint = batch_line
    return Call(key=key, endpoint=logged_endpoint, started=started, request_id=request_id, batch=True)


async def chat_prepare(runtime: Runtime, key: KeyInfo, raw: bytes | dict, *, started: float,
                       tags_header: str | None = None,
                       batch_line: tuple[str, str] | None = None) -> tuple[Call, dict]:
    """Validate and route a chat request; raises :class:`GatewayError` subclasses."""
    call = _call_new(key, "/v1/chat/completions", started, batch_line)
    body = raw if isinstance(raw, dict) else _body(raw)
    try:
        chat_body_validate(body)
        call.stream = bool(body.get("stream"))
        call_route(runtime, call, body, tags_header, mode="chat")
        await limits_reserve(runtime, call, body)
    except GatewayError as exc:
        call.requested_model = call.requested_model or str(body.get("model") or "")[:200]
        _fail(runtime, call, exc)
        raise
    return call, body


def _body(raw: bytes) -> dict:
    from apps.gateway.validation import body_parse

    return body_parse(raw)


def _fail(runtime: Runtime, call: Call, exc: GatewayError) -> None:
    call.status = exc.status
    call.error_code = exc.code
    call.overhead_ms = (time.perf_counter() - call.started) * 1000
    call.log(runtime)


async def upstream_json(runtime: Runtime, call: Call, attempt) -> tuple[ModelInfo, bytes, dict]:
    """Go upstream for a JSON answer, ``attempt(model)`` over the chain with retries and
    fallbacks. A failure is logged here; on success the caller sets the usage, then calls
    :func:`call_done`."""
    _going_upstream(runtime, call)
    call.upstream_started = time.perf_counter()
    try:
        model, (raw, parsed), call.failures = await with_fallbacks(
            call.chain, attempt, retries=settings.GATEWAY_RETRIES, backoff=settings.GATEWAY_RETRY_BACKOFF,
            breakers=runtime.breakers, failures=call.failures)
    except GatewayError as exc:
        call.model = call.chain[0]
        call.upstream_ended = time.perf_counter()
        call.status, call.error_code = exc.status, exc.code
        call.overhead_ms = (call.upstream_started - call.started) * 1000
        call.log(runtime)
        raise
    except UpstreamClientError as exc:
        _refused_log(runtime, call, exc)
        raise
    except BaseException:
        limits_settle(runtime, call)  # a cancel: free the reservation
        raise
    call.upstream_ended = time.perf_counter()
    call.model = model
    call.first_byte = call.upstream_ended
    return model, raw, parsed


def _refused_log(runtime: Runtime, call: Call, exc: UpstreamClientError) -> None:
    """The provider refused the request itself (a 4xx passed back to the client as it came):
    the row says so with the provider's status and error code, and bills nothing."""
    call.model = exc.model or call.chain[0]
    call.upstream_ended = time.perf_counter()
    call.status, call.error_code = exc.status, exc.code
    call.failures.append(f"{call.model.name}: status {exc.status}")
    call.overhead_ms = (call.upstream_started - call.started) * 1000
    call.log(runtime)


def call_done(runtime: Runtime, call: Call) -> None:
    """A JSON answer is ready: count the time spent here and log the request."""
    call.overhead_ms = ((call.upstream_started - call.started) + (time.perf_counter() - call.upstream_ended)) * 1000
    call.log(runtime)


async def chat_json(runtime: Runtime, call: Call, body: dict) -> tuple[bytes, dict]:
    """Answer a non-stream chat request: the provider's JSON, byte for byte (and parsed)."""
    bodies: dict[int, bytes] = {}

    async def attempt(model: ModelInfo):
        payload = bodies.get(model.id) or bodies.setdefault(model.id, _upstream_body(body, model, stream=False))
        return await post_json(runtime.pool, model, "/chat/completions", payload)

    _model, raw, parsed = await upstream_json(runtime, call, attempt)
    usage = parsed.get("usage")
    if not isinstance(usage, dict):
        completion = _completion_text(parsed)
        call.set_usage(None, fallback_prompt=call.prompt_tokens_count(body["messages"]),
                       fallback_completion=tokens.text_tokens(completion))
    else:
        call.set_usage(usage, fallback_prompt=0, fallback_completion=0)
    call_done(runtime, call)
    return raw, parsed


def _going_upstream(runtime: Runtime, call: Call) -> None:
    try:
        limits_refusal_raise(call)
    except GatewayError as exc:
        _fail(runtime, call, exc)
        raise


def _completion_text(parsed: dict) -> str:
    try:
        return "".join((choice.get("message") or {}).get("content") or "" for choice in parsed.get("choices") or [])
    except AttributeError:
        return ""


class ChatStream:
    """A started stream: iterate it for the bytes to send; it logs itself when it ends."""

    def __init__(self, runtime: Runtime, call: Call, body: dict, opened) -> None:
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
        self.on_complete = None  # called with the stream once it ended normally
        self.upstream_failed = False  # the provider sent an error event of its own (nothing to cache)
        self.transform = None  # bytes -> bytes applied to what is relayed (another API's events)
        # With a transform: whether what it has produced so far holds any content. Until it does,
        # its output is held and goes out with the first content, in the same write.
        self.content_started = None
        self.error_event = _error_event  # renders the event that ends a stream failing mid-way
        # Who cut the stream short, when a door knows (the HTTP relay does); None: guess from
        # whether the server is draining (a WebSocket closed under it).
        self.ended_by_server: bool | None = None

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
        if self.usage is None and _USAGE_EVENT.search(out):
            out = self._take_usage(out)
        at = line_find(out, _DONE)
        if at >= 0:
            self.done = True
            out = out[:at] + self._cost_comment() + out[at:]
        return out, carry

    def _cost_comment(self) -> bytes:
        self._settle()
        return b": x-switchyard-cost " + _money(self.call.cost).encode() + b"\n\n"

    def _settle(self) -> None:
        if self.usage is not None:
            self.call.set_usage(self.usage, fallback_prompt=0, fallback_completion=0)
        else:
            self.call.set_usage(None, fallback_prompt=self.call.prompt_tokens_count(self.body["messages"]),
                                fallback_completion=tokens.text_tokens(self.streamed_text()))

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
        transform = self.transform
        held = b""
        content_started = self.content_started
        try:
            out, carry = self._relay(self.opened.first)
            call.first_byte = time.perf_counter()
            if out and transform is not None:
                out = transform(out)
                if content_started is not None and not content_started():
                    held, out = out, b""  # only the message's start: it leaves with the first content
            if out:
                yield out
            response = self.opened.response
            while not self.done:
                piece = await response.readany()
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
                await response.end_wait(_END_GRACE_SECONDS)
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
                self._log()
                if self.on_complete is not None:
                    self.on_complete(None)
        if error is not None:
            call.status, call.error_code = error.status, error.code
            call.failures.append(f"{call.model.name}: {error.message}")
            self.runtime.breakers.failed(call.model, error.message)
            self._settle()
            self._log()
            if self.on_complete is not None:
                self.on_complete(None)
            yield held + self.error_event(error)
            return
        self._log()
        if self.on_complete is not None:
            self.on_complete(None if self.upstream_failed else self)

    def _log(self) -> None:
        if not self.finished:
            self.finished = True
            self.call.log(self.runtime)


def line_find(events: bytes, marker: bytes) -> int:
    """Where ``marker`` begins a line of ``events`` (whole SSE events), or -1. Only there is it
    the stream's own: an answer's text may spell it inside an event's JSON, which holds no raw
    line break."""
    if events.startswith(marker):
        return 0
    at = events.find(b"\n" + marker)
    return at + 1 if at >= 0 else -1


def cut_short_status(runtime: Runtime, *, server: bool | None = None) -> tuple[int, str]:
    """Status and code of a request stopped before its end: by the server's shutdown, or by the
    client leaving. ``server`` says which when the door knows; else a draining server is blamed."""
    if server or (server is None and runtime.draining):
        return 503, "server_shutdown"
    return 499, "client_closed_request"


def _error_event(error: GatewayError) -> bytes:
    return b"data: " + error_body(error) + b"\n\n"


async def chat_stream_open(runtime: Runtime, call: Call, body: dict) -> ChatStream:
    """Start the stream, falling back until one upstream sends its first bytes."""
    bodies: dict[int, bytes] = {}

    async def attempt(model: ModelInfo):
        payload = bodies.get(model.id) or bodies.setdefault(model.id, _upstream_body(body, model, stream=True))
        return await open_stream(runtime.pool, model, "/chat/completions", payload)

    return ChatStream(runtime, call, body, await upstream_stream_open(runtime, call, attempt))


async def upstream_stream_open(runtime: Runtime, call: Call, attempt) -> OpenStream:
    """Open a stream with ``attempt(model)`` over the chain, with retries and fallbacks, until
    one upstream sends its first bytes; a failure is logged here."""
    _going_upstream(runtime, call)
    call.upstream_started = time.perf_counter()
    try:
        model, opened, call.failures = await with_fallbacks(
            call.chain, attempt, retries=settings.GATEWAY_RETRIES, backoff=settings.GATEWAY_RETRY_BACKOFF,
            breakers=runtime.breakers, failures=call.failures)
    except GatewayError as exc:
        call.model = call.chain[0]
        call.status, call.error_code = exc.status, exc.code
        call.overhead_ms = (call.upstream_started - call.started) * 1000
        call.log(runtime)
        raise
    except UpstreamClientError as exc:
        _refused_log(runtime, call, exc)
        raise
    except BaseException:
        limits_settle(runtime, call)
        raise
    call.model = model
    call.overhead_ms = (call.upstream_started - call.started) * 1000
    return opened


async def embeddings(runtime: Runtime, key: KeyInfo, raw: bytes | dict, *, started: float,
                     batch_line: tuple[str, str] | None = None) -> tuple[Call, bytes]:
    call = _call_new(key, "/v1/embeddings", started, batch_line)
    body = raw if isinstance(raw, dict) else _body(raw)
    try:
        embeddings_body_validate(body)
        call_route(runtime, call, body, None, mode="embedding")
        embeddings_tokens_check(body, context_window=max(model.context_window for model in call.chain))
        await limits_reserve(runtime, call, body, mode="embedding")
    except GatewayError as exc:
        call.requested_model = call.requested_model or str(body.get("model") or "")[:200]
        _fail(runtime, call, exc)
        raise

    async def attempt(model: ModelInfo):
        payload = dict(body)
        payload["model"] = model.upstream_id
        return await post_json(runtime.pool, model, "/embeddings", orjson.dumps(payload))

    call.upstream_started = time.perf_counter()
    try:
        model, (raw_answer, parsed), call.failures = await with_fallbacks(
            call.chain, attempt, retries=settings.GATEWAY_RETRIES, backoff=settings.GATEWAY_RETRY_BACKOFF,
            breakers=runtime.breakers, failures=call.failures)
    except GatewayError as exc:
        call.model = call.chain[0]
        call.status, call.error_code = exc.status, exc.code
        call.log(runtime)
        raise
    except UpstreamClientError as exc:
        _refused_log(runtime, call, exc)
        raise
    except BaseException:
        limits_settle(runtime, call)
        raise
    call.upstream_ended = time.perf_counter()
    call.model = model
    usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else None
    if usage and isinstance(usage.get("prompt_tokens"), int):
        call.set_usage({"prompt_tokens": usage["prompt_tokens"], "completion_tokens": 0},
                       fallback_prompt=0, fallback_completion=0)
    else:
        text = body["input"] if isinstance(body["input"], str) else " ".join(
            item for item in body["input"] if isinstance(item, str))
        call.set_usage(None, fallback_prompt=tokens.text_tokens(text), fallback_completion=0)
    call.overhead_ms = ((call.upstream_started - call.started) + (time.perf_counter() - call.upstream_ended)) * 1000
    call.log(runtime)
    return call, raw_answer


def models_list(runtime: Runtime, key: KeyInfo) -> bytes:
    """``GET /v1/models``: the models this key may use, with their prices per 1M tokens."""
    allowed = key.allowed_models
    data = [{
        "id": "auto", "object": "model", "created": 0, "owned_by": "switchyard",
        "switchyard": {"mode": "chat", "routing": "picks the cheapest model that fits the prompt"},
    }]
    for model in sorted(runtime.snapshot.models.values(), key=lambda m: m.name):
        if allowed is not None and model.name not in allowed:
            continue
        data.append({
            "id": model.name, "object": "model", "created": 0, "owned_by": model.provider.name,
            "switchyard": {
                "mode": model.mode, "tier": model.tier, "context_window": model.context_window,
                "max_output_tokens": model.max_output_tokens,
                "pricing_per_million_tokens": {
                    "input": str(model.input_price), "cached_input": str(model.cached_input_price),
                    "output": str(model.output_price),
                },
            },
        })
    return orjson.dumps({"object": "list", "data": data})
