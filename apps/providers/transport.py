"""Calls to providers, JSON and streams alike, through the lean HTTP/1.1 client of
:mod:`apps.providers.http1` (keep-alive connections per provider); a concurrency limit per provider,
retries with backoff, then the ordered fallbacks.

    UpstreamFailure            an attempt failed and may be retried or fall through
    ├── status 429 / 5xx / 408 / 409, or 401 / 403 (our credential) from the provider
    ├── connection refused or cut, invalid JSON
    └── timeout (marked ``timeout=True``)
                               only an ``outage`` (not a 4xx) counts against a circuit breaker
    UpstreamClientError        the provider refused the request itself (other 4xx): not retried,
                               returned to the client as it came; but a prompt too long for
                               the model's context window goes on to the next model with a
                               larger one, if the chain has one

When every attempt failed, the client gets 429 (with Retry-After) if every provider was
rate-limiting, 504 if the last failure was a timeout, 502 otherwise; 503 (with Retry-After) when
every model's circuit breaker was open (:mod:`apps.providers.breaker`) so none was tried.

The OpenAI SDK is not used here, nor aiohttp's client: the lean client costs the gateway far
less CPU per call (docs/benchmarks.md has the figures). aiohttp's connection errors stay the base
of the lean client's own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import aiohttp
import orjson
from django.conf import settings

from apps.core.errors import RateLimited, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from apps.providers.access_tokens import AccessTokens, TokenRefused
from apps.providers.breaker import Breakers
from apps.providers.http1 import Http1Pool, Http1Response
from apps.providers.pools import Pools
from apps.providers.sigv4 import signed_headers

logger = logging.getLogger(__name__)

M = TypeVar("M", bound="ModelRoute")
T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class UpstreamFailure(Exception):
    def __init__(self, reason: str, *, status: int | None = None, timeout: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.timeout = timeout
        self.retry_after = retry_after

    @property
    def outage(self) -> bool:
        """The provider is failing (a 5xx or 408, a timeout, a broken connection or body), as
        opposed to refusing this request (a 4xx), which counts against no circuit breaker."""
        return self.status is None or self.status >= 500 or self.status == 408


_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class UpstreamClientError(Exception):
    """A 4xx the client caused; passed back with the provider's status and body. ``model`` is
    the model that refused it; ``code`` the provider's error code (or type) for the usage row."""

    def __init__(self, status: int, body: bytes, content_type: str, *, model=None, code: str | None = None) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
        self.model = model
        self.code = code or _error_code(body)

    @property
    def context_overflow(self) -> bool:
        """The provider refused the prompt as too long for the model's context window: OpenAI's
        (and Azure's) code ``context_length_exceeded``, or a 400 whose message says so, as
        Anthropic's ("prompt is too long"), Gemini's and Bedrock's do."""
        if self.status != 400:
            return False
        if self.code == "context_length_exceeded":
            return True
        return _CONTEXT_OVERFLOW.search(self.body[:4096].decode("utf-8", "replace")) is not None


# How providers word a prompt too long for the context window, when they give no code for it.
_CONTEXT_OVERFLOW = re.compile(
    r"prompt is too long|maximum context length|context (?:length|window|limit)|input is too long"
    r"|input token count[^\"]*exceeds|too many input tokens", re.IGNORECASE)


def _error_code(body: bytes) -> str:
    """The code an OpenAI or Anthropic error body gives (its ``type`` when it has no code)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        for name in ("code", "type"):
            value = error.get(name)
            if isinstance(value, str) and _ERROR_CODE.fullmatch(value):
                return value
    return "upstream_client_error"


class ProviderConfig(Protocol):
    """What reaching a provider takes (the gateway's ``ProviderInfo`` is one)."""

    id: int
    name: str
    kind: str  # "openai" (OpenAI-compatible), "anthropic", "azure", "gemini", "vertex", "bedrock" or "simulated"
    base_url: str
    credential: str
    api_version: str  # Azure OpenAI's api-version ("" elsewhere)
    timeout: float
    max_concurrency: int


class ModelRoute(Protocol):
    """A model as the transport needs it: its name for errors, its id upstream, its provider
    (the gateway's ``ModelInfo`` is one)."""

    name: str
    upstream_id: str
    provider: ProviderConfig


class ProviderStream(Protocol):
    """A provider's stream whose first bytes have arrived: from here on there is no falling back."""

    model: ModelRoute
    first: bytes

    async def readany(self) -> bytes:
        """The bytes that have arrived since (b"" at the end); raises on a silence too long."""

    async def end_wait(self, seconds: float) -> None:
        """After the stream's last event: at most ``seconds`` for the answer's end, so the
        connection can be kept."""

    async def close(self) -> None:
        """Give the connection and the concurrency slot back."""


class Transport(Protocol):
    """How the pipeline reaches providers: :class:`HttpTransport` in production, an in-memory
    double (:mod:`apps.providers.memory`) in unit tests. Both raise the same failures:
    :class:`UpstreamFailure` (retried, then falls back) and :class:`UpstreamClientError`."""

    in_flight: int

    async def post_json(self, model: ModelRoute, path: str, body: bytes,
                        headers: dict[str, str] | None = None) -> tuple[bytes, dict]:
        """One non-stream attempt: the raw answer and its parsed JSON."""

    async def open_stream(self, model: ModelRoute, path: str, body: bytes,
                          headers: dict[str, str] | None = None) -> ProviderStream:
        """Start a stream and wait for its first bytes."""

    async def close(self) -> None:
        """Close every connection."""


class HttpTransport:
    """The providers over HTTP/1.1: keep-alive connections and a concurrency limit per provider,
    for one event loop."""

    def __init__(self) -> None:
        self._http1: dict[int, Http1Pool] = {}
        self._limits: dict[int, tuple[int, asyncio.Semaphore]] = {}
        self.in_flight = 0  # upstream calls holding a concurrency slot (JSON or open streams)
        # Deployment pools: told of each call to a deployment (its time, its rate-limit headers).
        self.pools: Pools | None = None
        self.tokens = AccessTokens()  # OAuth access tokens of the kinds in TOKEN_KINDS

    def http1(self, provider: ProviderConfig) -> Http1Pool:
        """The keep-alive connections to this provider (JSON calls and streams go through them)."""
        pool = self._http1.get(provider.id)
        if pool is None or pool.base_url != provider.base_url:
            if pool is not None:
                pool.close()
            pool = self._http1[provider.id] = Http1Pool(provider.base_url)
        return pool

    def limit(self, provider: ProviderConfig) -> asyncio.Semaphore:
        current = self._limits.get(provider.id)
        if current is None or current[0] != provider.max_concurrency:
            current = (provider.max_concurrency, asyncio.Semaphore(max(provider.max_concurrency, 1)))
            self._limits[provider.id] = current
        return current[1]

    async def close(self) -> None:
        for h1 in self._http1.values():
            h1.close()
        self._http1.clear()

    async def post_json(self, model: ModelRoute, path: str, body: bytes,
                        headers: dict[str, str] | None = None) -> tuple[bytes, dict]:
        """One non-stream attempt: the raw body and its parsed JSON (``headers`` add to the
        provider's own, e.g. the client's ``anthropic-beta``). The provider's timeout bounds the
        whole call, connection to the answer's last byte."""
        provider = model.provider
        pools = self.pools if getattr(model, "deployment_id", None) is not None else None
        if pools is not None:
            pools.sent(model)
            began = time.perf_counter()
        try:
            async with self.limit(provider):
                self.in_flight += 1
                response = None
                try:
                    async with asyncio.timeout(provider.timeout):
                        sent = await self._headers(provider, headers, path, body)
                        response = await self.http1(provider).post(
                            path, body, sent,
                            connect_timeout=min(provider.timeout, 10.0), first_byte_timeout=None, read_timeout=None)
                        if pools is not None:
                            pools.headers_seen(model, response.headers)
                        if response.status != 200:
                            await self._classify_status(response, model, sent)
                        raw = await response.read()
                except TimeoutError as exc:
                    raise UpstreamFailure("timeout", timeout=True) from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamFailure(f"connection: {type(exc).__name__}") from exc
                finally:
                    if response is not None:
                        response.release()  # kept alive when read to its end, closed otherwise
                    self.in_flight -= 1
            if pools is not None:
                pools.measured(model, (time.perf_counter() - began) * 1000)
        finally:
            if pools is not None:
                pools.done(model)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure("invalid JSON from upstream") from exc
        if not isinstance(parsed, dict):
            raise UpstreamFailure("unexpected JSON from upstream")
        return raw, parsed

    async def open_stream(self, model: ModelRoute, path: str, body: bytes,
                          headers: dict[str, str] | None = None) -> ProviderStream:
        """Start a stream and wait for its first bytes (so a failure before them can fall back).

        A stream may run long; what must not happen is silence: the provider's timeout bounds the
        wait for the first bytes, ``UPSTREAM_STREAM_IDLE_TIMEOUT`` (or the provider's timeout when
        lower) each silence after them."""
        provider = model.provider
        pools = self.pools if getattr(model, "deployment_id", None) is not None else None
        if pools is not None:
            pools.sent(model)
            began = time.perf_counter()
        limit = self.limit(provider)
        response = None
        acquired = False
        try:
            await limit.acquire()
            acquired = True
            self.in_flight += 1
            async with asyncio.timeout(provider.timeout):
                sent = await self._headers(provider, headers, path, body)
            response = await self.http1(provider).post(
                path, body, sent, connect_timeout=min(provider.timeout, 10.0),
                first_byte_timeout=provider.timeout,
                read_timeout=min(provider.timeout, settings.UPSTREAM_STREAM_IDLE_TIMEOUT))
            if pools is not None:
                pools.headers_seen(model, response.headers)
            if response.status != 200:
                await self._classify_status(response, model, sent)
            first = await response.content.readany(provider.timeout)
            if not first:
                raise UpstreamFailure("stream closed before its first byte")
            if provider.kind not in EVENT_STREAM_KINDS:
                _stream_start_check(first)
            if pools is not None:
                pools.measured(model, (time.perf_counter() - began) * 1000)
            return OpenStream(model=model, response=response, first=first, release=limit, transport=self,
                              pools=pools)
        except BaseException as exc:
            if response is not None:
                response.release()
            if acquired:
                limit.release()
                self.in_flight -= 1
            if pools is not None:
                pools.done(model)
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure("timeout before the first byte", timeout=True) from exc
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamFailure(f"connection: {type(exc).__name__}") from exc
            raise

    async def _headers(self, provider: ProviderConfig, extra: dict[str, str] | None, path: str,
                       body: bytes) -> dict[str, str]:
        """The request's headers; a kind in ``TOKEN_KINDS`` gets its provider's current access
        token (fetched only when it has none, or none fresh enough)."""
        headers = _headers(provider, extra, path, body)
        if provider.kind in TOKEN_KINDS:
            try:
                token = await self.tokens.token(provider)
            except TokenRefused as exc:
                raise UpstreamFailure(f"provider refused credentials (access token: {exc})", status=401) from exc
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _classify_status(self, response: Http1Response, model: ModelRoute, sent: dict[str, str]) -> None:
        if response.status == 401 and model.provider.kind in TOKEN_KINDS:
            # The token was refused (revoked, or expired early): the next attempt gets another.
            self.tokens.forget(model.provider, sent["Authorization"].removeprefix("Bearer "))
        await _classify_status(response, model)


ANTHROPIC_KIND = "anthropic"
ANTHROPIC_VERSION = "2023-06-01"
# The header each kind of provider reads its key from (any other kind: Authorization: Bearer;
# Bedrock: every request signed with AWS SigV4).
CREDENTIAL_HEADERS = {ANTHROPIC_KIND: "x-api-key", "azure": "api-key", "gemini": "x-goog-api-key"}
SIGNED_KINDS = frozenset({"bedrock"})
# Kinds whose credential is a service-account key, exchanged for OAuth access tokens sent as
# Authorization: Bearer (apps.providers.access_tokens).
TOKEN_KINDS = frozenset({"vertex"})
# Kinds whose streams are AWS binary event streams, not server-sent events.
EVENT_STREAM_KINDS = frozenset({"bedrock"})


def _headers(provider: ProviderConfig, extra: dict[str, str] | None = None, path: str = "",
             body: bytes = b"") -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if provider.kind in SIGNED_KINDS:
        return signed_headers(provider, path, body, {**headers, **(extra or {})})
    if provider.kind == ANTHROPIC_KIND:
        headers["anthropic-version"] = ANTHROPIC_VERSION
    if provider.credential and provider.kind not in TOKEN_KINDS:
        name = CREDENTIAL_HEADERS.get(provider.kind)
        if name is None:
            headers["Authorization"] = f"Bearer {provider.credential}"
        else:
            headers[name] = provider.credential
    if extra:
        headers.update(extra)
    return headers


_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"([0-9]+(?:\.[0-9]+)?)s"')


def _retry_after(response, body: bytes = b"") -> float | None:
    """How long the provider asks to wait: ``Retry-After`` (seconds), Azure's ``retry-after-ms``,
    or the ``retryDelay`` of a Google RetryInfo in the error body ("30s")."""
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = response.headers.get(name)
        if value:
            try:
                return float(value) * scale
            except ValueError:
                pass
    match = _RETRY_DELAY.search(body) if body else None
    return float(match.group(1)) if match else None


# A 400 that is about our credential rather than the request (Google's API_KEY_INVALID).
_CREDENTIAL_REFUSED = (b'"API_KEY_INVALID"',)


async def _classify_status(response: Http1Response, model: ModelRoute) -> None:
    """Raise for a non-200 answer: retryable failure or client error (whose body, passed back to
    the client, never carries our credential even when the provider echoes it)."""
    provider = model.provider
    body = await response.read()
    if provider.credential and provider.credential.encode() in body:
        body = body.replace(provider.credential.encode(), b"[redacted]")
    if response.status in RETRYABLE_STATUSES or response.status >= 500:
        raise UpstreamFailure(f"status {response.status}", status=response.status,
                              retry_after=_retry_after(response, body))
    if response.status in (401, 403) or (response.status == 400 and any(
            marker in body for marker in _CREDENTIAL_REFUSED)):
        # Our credential for this provider is wrong: the provider's problem, not the client's.
        raise UpstreamFailure(f"provider refused credentials ({response.status})", status=response.status)
    aws_type = response.headers.get("x-amzn-ErrorType")  # an AWS service's error type (Bedrock's)
    raise UpstreamClientError(response.status, body, response.headers.get("Content-Type", "application/json"),
                              model=model, code=aws_type.split(":")[0] if aws_type else None)


class OpenStream:
    """An HTTP stream whose first bytes have arrived. Its reads are the response's own methods,
    not wrappers: a stream is read once per upstream write, dozens of times an answer."""

    __slots__ = ("end_wait", "first", "model", "pools", "readany", "release", "response", "transport")

    def __init__(self, *, model: ModelRoute, response: Http1Response, first: bytes, release: asyncio.Semaphore,
                 transport: HttpTransport, pools: Pools | None = None) -> None:
        self.model = model
        self.pools = pools  # told when the stream ends (it counts as in flight until then)
        self.response = response
        self.first = first
        self.release = release  # the concurrency slot, given back when the stream ends
        self.transport = transport
        self.readany = response.readany
        self.end_wait = response.end_wait

    async def close(self) -> None:
        self.response.release()
        self.release.release()
        self.transport.in_flight -= 1
        if self.pools is not None:
            self.pools.done(self.model)


_SSE_FIELDS = (b"data:", b"event:", b":", b"id:", b"retry:")


def _stream_start_check(first: bytes) -> None:
    """Refuse a stream whose first bytes are not server-sent events, or whose first event's data
    is not JSON, while falling back is still possible (one parse per stream, not per chunk)."""
    head = first.lstrip(b"\r\n")
    if not head.startswith(_SSE_FIELDS):
        raise UpstreamFailure("stream is not server-sent events")
    end = head.find(b"\n\n")
    if end < 0:
        return
    for line in head[:end].split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                try:
                    orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamFailure("invalid JSON in the stream") from exc
            return


async def with_fallbacks(chain: Sequence[M], call: Callable[[M], Awaitable[T]], *, retries: int, backoff: float,
                         breakers: Breakers | None = None, pools: Pools | None = None,
                         failures: list[str] | None = None) -> tuple[M, T, list[str]]:
    """Run ``call(model)`` over the chain: each model ``1 + retries`` times, then the next.

    Returns ``(model, result, failures)``; raises :class:`UpstreamError` (or
    :class:`UpstreamTimeout` when the last failure was a timeout) when every attempt failed, and
    :class:`UpstreamUnavailable` when every model's circuit was open so nothing was tried.
    A client error stops at once, except a prompt too long for a model's context window
    (:attr:`UpstreamClientError.context_overflow`): the models after it whose window is no
    larger are skipped and the next larger one is tried (that refusal is raised when none is;
    when one is tried and fails, its failure is). With ``breakers``, a model whose circuit is
    open is skipped and every outcome is reported to its circuit (only outages count as
    failures). Each failure
    is appended to ``failures`` (when given) as it happens, so the caller has them whether or not
    an attempt succeeded. With ``pools``, a deployment of a pooled model that answers 429 cools
    down and is not retried: the next deployment (or model) is tried at once.
    """
    failures = [] if failures is None else failures
    last: UpstreamFailure | None = None
    all_rate_limited = True
    retry_after: float | None = None
    skipped = []
    overflowed: UpstreamClientError | None = None  # a provider's context-length refusal, passed on if nothing larger
    overflowed_window = 0
    tried_after_overflow = False
    for model in chain:
        label = getattr(model, "deployment_label", "")
        name = f"{model.name}@{label}" if label else model.name
        if overflowed is not None and model.context_window <= overflowed_window:
            failures.append(f"{name}: skipped, context window not larger than {overflowed_window} tokens")
            continue
        if breakers is not None and not breakers.admit(model):
            failures.append(f"{name}: circuit open")
            skipped.append(model)
            continue
        tried_after_overflow = overflowed is not None
        for attempt in range(retries + 1):
            try:
                result = await call(model)
            except UpstreamFailure as exc:
                last = exc
                failures.append(f"{name}: {exc.reason}")
                if exc.status == 429:
                    retry_after = max(retry_after or 0.0, exc.retry_after or 1.0)
                    if pools is not None and label:
                        pools.cool(model, exc.retry_after)
                        if breakers is not None:
                            breakers.released(model)
                        break  # cooling down: another deployment takes the request now
                else:
                    all_rate_limited = False
                if breakers is not None and exc.outage:
                    breakers.failed(model, exc.reason)
                    if breakers.is_open(model):
                        break  # no more tries on a model just found down
                elif breakers is not None:
                    breakers.released(model)
                if attempt < retries:
                    delay = backoff * (2 ** attempt)
                    if exc.retry_after is not None:
                        delay = min(max(delay, exc.retry_after), 2.0)
                    await asyncio.sleep(delay)
                continue
            except UpstreamClientError as exc:
                if breakers is not None:
                    breakers.succeeded(model)  # it answered: the provider is up
                window = getattr(model, "context_window", None)
                if window is None or not exc.context_overflow:
                    raise
                failures.append(f"{name}: prompt too long for its context window ({window} tokens)")
                overflowed, overflowed_window, tried_after_overflow = exc, window, False
                break
            except BaseException:
                if breakers is not None:
                    breakers.released(model)
                raise
            if breakers is not None:
                breakers.succeeded(model)
            return model, result, failures
    if overflowed is not None and not tried_after_overflow:
        raise overflowed  # no larger model to try: the provider's own refusal
    detail = "; ".join(failures[-4:])
    if last is None and skipped:
        seconds = str(max(math.ceil(breakers.retry_in(skipped)), 1))
        raise UpstreamUnavailable(f"Every upstream for this request is failing and paused for a cooldown "
                                  f"({detail}).", headers={"Retry-After": seconds})
    if last is not None and all_rate_limited:
        seconds = str(max(int(retry_after or 1), 1))
        raise RateLimited(f"Every upstream for this request is rate-limiting it ({detail}).",
                          code="upstream_rate_limited", headers={"Retry-After": seconds})
    if last is not None and last.timeout:
        raise UpstreamTimeout(f"The upstream did not answer in time ({detail}).")
    raise UpstreamError(f"Every upstream for this request failed ({detail}).")
