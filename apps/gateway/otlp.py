"""Spans out of the process: OTLP/HTTP protobuf, encoded by hand, posted from a thread of its own.

The request path records a span as plain values (:class:`SpanRecord`) and hands each finished
request's spans to :meth:`SpanExporter.add` in one call, which encodes them there and then and
appends the bytes to a bounded queue. The exporting thread wakes every
``OTEL_BSP_SCHEDULE_DELAY`` ms (or as soon as a batch's worth is queued), joins up to
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans' bytes into one ``ExportTraceServiceRequest`` and
posts it to the collector: full batches only when a batch's worth woke it, what is left too
when the delay has passed. When the queue holds ``OTEL_BSP_MAX_QUEUE_SIZE`` spans (the
collector down or slow), a request's spans are dropped and counted
(:attr:`SpanExporter.dropped`), never waited for.

Why encode on the request path rather than in the exporting thread: the encoding is the same
work wherever it runs, but records waiting in a queue are objects the garbage collector must
walk, promote and walk again (they outlive young collections), and the thread that encodes
must take the GIL from the event loop in turn; bytes are neither (docs/benchmarks.md,
Tracing, has the measurement).

The wire format is OpenTelemetry's ``opentelemetry/proto/collector/trace/v1`` messages, written
field by field: the resource and the scope are encoded once, an attribute's key once per
process, so a span costs its values' encoding and little more.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import logging
import os
import random
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

# Span.SpanKind and Status.StatusCode of the protobuf.
INTERNAL, SERVER, CLIENT = 1, 2, 3
STATUS_ERROR = 2
# Span.flags: whether the parent's remoteness is known, and whether it is remote.
_FLAGS_LOCAL = 0x100
_FLAGS_REMOTE = 0x300

_PACK_D = struct.Struct("<d").pack
_PACK_I = struct.Struct("<I").pack
_SMALL = [bytes((n,)) for n in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any(value) -> bytes:
    """An ``AnyValue``'s fields."""
    kind = value.__class__
    if kind is str:
        encoded = value.encode()
        return b"\x0a" + _varint(len(encoded)) + encoded
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _varint(value)
    if kind is float:
        return b"\x21" + _PACK_D(value)
    if kind is list or kind is tuple:
        items = b"".join(_delimited(b"\x0a", _any(item)) for item in value)
        return _delimited(b"\x2a", items)
    if kind is dict:
        items = b"".join(_delimited(b"\x0a", _key_value(str(key), item)) for key, item in value.items())
        return _delimited(b"\x32", items)
    if kind is bytes:
        return _delimited(b"\x3a", value)
    return _any(str(value))


_KEYS: dict[str, bytes] = {}
# Attributes whose values repeat from request to request (the tenant, the model, the route, a
# status, a small count) are encoded once each, up to a bound: an attribute's encoding costs
# more than looking it up. Per field tag and key (a string, whose hash Python keeps): a table of
# each kind, strings and lists of strings by value, small integers by value (their own table:
# ``1 == True == 1.0`` as keys), and a double's pair head (a double's pair is always as long).
# The keys of ``_UNIQUE`` never repeat their values: those are encoded each time, and only a
# string pair's head is kept, per length (the fourth table).
_TABLES: dict[bytes, tuple[dict, dict, dict, dict]] = {}
_PAIRS_MAX = 8192
_KEYS_MAX = 1024
_UNIQUE = frozenset({"switchyard.request_id", "switchyard.routing.reason", "switchyard.upstream_failures"})
_kept = [0]  # encoded values kept in the tables, all keys together


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _delimited(b"\x0a", key.encode())
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[key] = encoded
    return encoded


def _key_value(key: str, value) -> bytes:
    """A ``KeyValue``'s fields."""
    return _key(key) + _delimited(b"\x12", _any(value))


def _pair(tag: bytes, key: str, any_value: bytes) -> bytes:
    size = len(any_value)
    pair = _key(key) + b"\x12" + (_SMALL[size] if size < 128 else _varint(size)) + any_value
    size = len(pair)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + pair


def _table(tables: dict, key: str) -> dict:
    """``key``'s table in ``tables`` (a fresh one, not kept, past the bound on keys)."""
    table = tables.get(key)
    if table is None:
        table = {}
        if len(tables) < _KEYS_MAX:
            tables[key] = table
    return table


def attributes_encode(tag: bytes, attributes: dict) -> bytes:
    """``attributes`` as repeated ``KeyValue`` fields numbered by ``tag`` (a None value is left
    out, as the SDK leaves it)."""
    tables = _TABLES.get(tag)
    if tables is None:
        tables = _TABLES[tag] = ({}, {}, {}, {})
    values, ints, doubles, uniques = tables
    out = []
    append = out.append
    for key, value in attributes.items():
        kind = value.__class__
        if kind is float:
            head = doubles.get(key)
            if head is None:
                head = _pair(tag, key, b"\x21" + bytes(8))[:-8]
                if len(doubles) < _KEYS_MAX:
                    doubles[key] = head
            append(head + _PACK_D(value))
        elif kind is int:
            table = ints.get(key)
            pair = None if table is None else table.get(value)
            if pair is None:
                pair = _pair(tag, key, b"\x18" + _varint(value))
                if 0 <= value < 4096 and _kept[0] < _PAIRS_MAX:
                    _table(ints, key)[value] = pair
                    _kept[0] += 1
            append(pair)
        elif kind is str:
            if key in _UNIQUE:
                # Never the same value twice, but often the same length (a request id): the pair's
                # head is kept per length.
                encoded = value.encode()
                size = len(encoded)
                heads = uniques.get(key)
                head = None if heads is None else heads.get(size)
                if head is None:
                    head = _pair(tag, key, b"\x0a" + _varint(size) + bytes(size))[:-size or None]
                    if size < 4096 and _kept[0] < _PAIRS_MAX:
                        _table(uniques, key)[size] = head
                        _kept[0] += 1
                append(head + encoded)
                continue
            table = values.get(key)
            pair = None if table is None else table.get(value)
            if pair is None:
                encoded = value.encode()
                size = len(encoded)
                pair = _pair(tag, key, b"\x0a" + (_SMALL[size] if size < 128 else _varint(size)) + encoded)
                if _kept[0] < _PAIRS_MAX:
                    _table(values, key)[value] = pair
                    _kept[0] += 1
            append(pair)
        elif kind is list:
            if key in _UNIQUE:
                append(_pair(tag, key, _any(value)))
                continue
            cached = tuple(value)
            table = values.get(key)
            pair = None if table is None else table.get(cached)
            if pair is None:
                pair = _pair(tag, key, _any(value))
                if _kept[0] < _PAIRS_MAX:
                    _table(values, key)[cached] = pair
                    _kept[0] += 1
            append(pair)
        elif value is None:
            continue
        else:
            append(_pair(tag, key, _any(value)))
    return b"".join(out)


# Blocks of attributes that repeat together (a request's tenant, route, model, status, ...):
# ``(builder, *values)`` -> the encoded attributes of ``builder(*values)``. Looking a block up
# costs one hash of its values; encoding it costs every attribute's.
_COMMON: dict[tuple, bytes] = {}


def common_encode(common: tuple) -> bytes:
    """A span's :attr:`SpanRecord.common` block, encoded as attributes (field 9): from the table
    when the same builder was given the same values before."""
    block = _COMMON.get(common)
    if block is None:
        block = attributes_encode(b"\x4a", common[0](*common[1:]))
        if len(_COMMON) < _PAIRS_MAX:
            _COMMON[common] = block
    return block


class SpanRecord:
    """One span as the request path records it: values only, encoded when the request hands its
    spans to the exporter.

    ``attributes`` holds what varies from request to request (ids, durations, costs, tokens);
    ``common``, when set, the rest as ``(builder, *values)``: ``builder(*values)`` gives those
    attributes (a dict), and is called only the first time those values are seen, the block's
    encoding kept. The values must be hashable and decide the builder's dict alone, each position
    of one type (``1 == 1.0 == True`` as keys), and no key may be both in the block and in
    ``attributes``.
    """

    __slots__ = ("attributes", "common", "end", "kind", "name", "span_id", "start", "status", "status_message")

    def __init__(self, name: str, kind: int, span_id: int, start: int, attributes: dict | None = None,
                 common: tuple | None = None) -> None:
        self.name = name
        self.kind = kind
        self.span_id = span_id
        self.start = start
        self.end = 0
        self.attributes = attributes if attributes is not None else {}
        self.common = common
        self.status = 0
        self.status_message = ""


_NAMES: dict[tuple[str, int], bytes] = {}  # a span's name and kind -> fields 5 and 6, encoded (bounded)
_TIMES = struct.Struct("<BQBQ").pack  # fields 7 and 8 (start and end), tags and values at once
# Fields 1 (the trace id), 2 (the span id) and, for a span with a parent, 4 (the parent's id): fixed
# sizes, tags and values in one call (the 128-bit trace id as its two halves, big-endian).
_IDS = struct.Struct(">HQQHQ").pack
_IDS_PARENT = struct.Struct(">HQQHQHQ").pack
_LOW = (1 << 64) - 1
# A span's last fields when its status is unset (field 15, empty) with its flags (field 16).
_LOCAL_TAIL = b"\x7a\x00\x85\x01" + _PACK_I(_FLAGS_LOCAL)
_REMOTE_TAIL = b"\x7a\x00\x85\x01" + _PACK_I(_FLAGS_REMOTE)


def _name(name: str, kind: int) -> bytes:
    encoded = _NAMES.get((name, kind))
    if encoded is None:
        encoded = _delimited(b"\x2a", name.encode()) + b"\x30" + _SMALL[kind]
        if len(_NAMES) < 1024:
            _NAMES[(name, kind)] = encoded
    return encoded


def _span(span: SpanRecord, ids: bytes, tail: bytes) -> bytes:
    """A ``Span`` as a ``ScopeSpans.spans`` field (2): ``ids`` are its fields 1, 2 and 4 (the
    trace id, its own id, its parent's), ``tail`` its field 16 (flags) after an unset status."""
    if span.status:
        message = span.status_message.encode()
        tail = _delimited(b"\x7a", (_delimited(b"\x12", message) if message else b"") + b"\x18"
                          + _SMALL[span.status]) + tail[2:]
    body = b"".join((ids, _name(span.name, span.kind), _TIMES(0x39, span.start, 0x41, span.end or span.start),
                     b"" if span.common is None else common_encode(span.common),
                     attributes_encode(b"\x4a", span.attributes) if span.attributes else b"", tail))
    size = len(body)
    return b"\x12" + (_SMALL[size] if size < 128 else _varint(size)) + body


def trace_frame(trace_id: int, parent_id: int, root: SpanRecord, children: list[SpanRecord]) -> bytes:
    """One request's spans, encoded as ``ScopeSpans.spans`` fields one after the other: its
    children and its own (``root``), all of one trace. ``parent_id`` is the caller's span (a
    remote parent), 0 for none. Frames of any number of requests, joined, make the spans of
    one :func:`request_frame`."""
    high, low = trace_id >> 64, trace_id & _LOW
    out = [_span(child, _IDS_PARENT(0x0A10, high, low, 0x1208, child.span_id, 0x2208, root.span_id), _LOCAL_TAIL)
           for child in children]
    if parent_id:
        out.append(_span(root, _IDS_PARENT(0x0A10, high, low, 0x1208, root.span_id, 0x2208, parent_id), _REMOTE_TAIL))
    else:
        out.append(_span(root, _IDS(0x0A10, high, low, 0x1208, root.span_id), _LOCAL_TAIL))
    return b"".join(out)


def request_frame(resource: dict, scope: str, frames: bytes) -> bytes:
    """An ``ExportTraceServiceRequest`` of one resource and one scope holding the spans of
    ``frames`` (:func:`trace_frame`'s output, joined)."""
    return request_frames(resource, scope, [frames])


def request_frames(resource: dict, scope: str, frames: list[bytes]) -> bytes:
    """:func:`request_frame` of ``frames`` joined, the spans copied once (the export request's
    lengths are counted first, not found by nesting copies)."""
    scope_head = _delimited(b"\x0a", _delimited(b"\x0a", scope.encode()))
    resource_head = _delimited(b"\x0a", attributes_encode(b"\x0a", resource))
    scope_spans = len(scope_head) + sum(map(len, frames))
    resource_spans = len(resource_head) + 1 + len(_varint(scope_spans)) + scope_spans
    return b"".join((b"\x0a", _varint(resource_spans), resource_head, b"\x12", _varint(scope_spans), scope_head,
                     *frames))


# ---------------------------------------------------------------------------------------------
# Configuration from the standard OTEL_* variables.


def _env(*values: str | None) -> str:
    """The first of ``values`` set: the traces' own variable, then its ``OTEL_EXPORTER_OTLP_*`` twin."""
    return next((value.strip() for value in values if value and value.strip()), "")


def _env_int(name: str, raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw and raw.strip() else default
    except ValueError:
        logger.warning("%s=%r is not a number; using %d", name, raw, default)
        return default


def endpoint_resolve() -> str:
    """The traces URL: the traces' own endpoint as given, else the base URL's ``/v1/traces``."""
    own = _env(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if own:
        return own
    base = _env(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")) or "http://localhost:4318"
    return f"{base.removesuffix('/')}/v1/traces"


def headers_resolve() -> dict[str, str]:
    from opentelemetry.util.re import parse_env_headers  # the SDK's own reading of "k=v,k2=v2"

    headers = {"content-type": "application/x-protobuf", "user-agent": "switchyard-otlp"}
    headers.update(parse_env_headers(_env(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
                                          os.environ.get("OTEL_EXPORTER_OTLP_HEADERS")), liberal=True))
    return headers


@dataclass(frozen=True)
class Sampler:
    """Which new traces are recorded: the root's trace id against a ratio, and, parent-based, the
    caller's own decision when its ``traceparent`` names one.

    ``OTEL_TRACES_SAMPLER``: ``always_on``, ``always_off``, ``traceidratio``,
    ``parentbased_always_on`` (the default), ``parentbased_always_off``,
    ``parentbased_traceidratio``; ``OTEL_TRACES_SAMPLER_ARG`` the ratio (1.0 when unset). A root
    is recorded when its trace id's low 64 bits fall under the ratio's share, as the SDK decides.
    """

    bound: int  # a root whose trace id's low 64 bits fall below this is recorded
    parent_based: bool

    @classmethod
    def from_env(cls) -> Sampler:
        name = (_env(os.environ.get("OTEL_TRACES_SAMPLER")) or "parentbased_always_on").lower()
        raw = _env(os.environ.get("OTEL_TRACES_SAMPLER_ARG"))
        try:
            ratio = min(max(float(raw), 0.0), 1.0) if raw else 1.0
        except ValueError:
            logger.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; sampling everything", raw)
            ratio = 1.0
        everything = 1 << 64
        known = {"always_on": everything, "always_off": 0, "traceidratio": round(ratio * everything)}
        parent_based = name.startswith("parentbased_")
        base = name.removeprefix("parentbased_")
        if base not in known:
            logger.warning("OTEL_TRACES_SAMPLER=%r is not supported; using parentbased_always_on", name)
            base, parent_based = "always_on", True
        return cls(bound=known[base], parent_based=parent_based)

    def sampled(self, trace_id: int, parent_sampled: bool | None) -> bool:
        if parent_sampled is not None and self.parent_based:
            return parent_sampled
        return (trace_id & 0xFFFFFFFFFFFFFFFF) < self.bound


def ids_new(bits: int) -> int:
    """A random, non-zero trace (128) or span (64) id."""
    # An identifier, not a secret: made as the SDK makes them.
    value = random.getrandbits(bits)  # nosec B311
    return value or 1


# ---------------------------------------------------------------------------------------------
# The exporting thread.


class SpanExporter:
    """A bounded queue of finished requests' spans and the thread that posts them."""

    def __init__(self, *, resource: dict, scope: str, endpoint: str | None = None,
                 headers: dict | None = None, timeout: float | None = None, compression: str | None = None,
                 max_queue: int | None = None, batch: int | None = None, delay_ms: int | None = None) -> None:
        self.endpoint = endpoint or endpoint_resolve()
        self.headers = headers if headers is not None else headers_resolve()
        if timeout is None:
            raw = _env(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
                       os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT"))
            try:
                timeout = float(raw) if raw else 10.0  # seconds, as the SDK reads it
            except ValueError:
                timeout = 10.0
        self.timeout = timeout
        if compression is None:
            compression = _env(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
                               os.environ.get("OTEL_EXPORTER_OTLP_COMPRESSION")) or "none"
        self.compression = compression.lower()
        if self.compression not in ("none", "gzip", "deflate"):
            logger.warning("OTLP compression %r is not supported; sending uncompressed", self.compression)
            self.compression = "none"
        if self.compression != "none":
            self.headers["content-encoding"] = self.compression
        if max_queue is None:
            max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE"), 2048)
        if batch is None:
            batch = _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), 512)
        if delay_ms is None:
            delay_ms = _env_int("OTEL_BSP_SCHEDULE_DELAY", os.environ.get("OTEL_BSP_SCHEDULE_DELAY"), 5000)
        self.max_queue = max(1, max_queue)
        self.batch = max(1, min(self.max_queue, batch))
        delay = delay_ms
        self.delay = max(delay, 1) / 1000
        self._resource = resource
        self._scope = scope
        # (a finished request's spans, encoded (trace_frame), how many): bytes and an int, nothing
        # the garbage collector walks
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        # Each counter is written by one thread only: no lock on the request path.
        self.queued = 0  # spans queued (the event loop's thread)
        self.dropped = 0  # spans dropped because the queue was full (the event loop's thread)
        self.taken = 0  # spans taken off the queue (the exporting thread)
        self.exported = 0  # spans the collector accepted (the exporting thread)
        self.failed = 0  # spans whose export failed (the exporting thread)
        self.unencoded = 0  # spans that could not be encoded, dropped (the event loop's thread)
        self._dropped_logged = 0
        self._wake = threading.Event()
        self._stopping = False
        self._connection: http.client.HTTPConnection | None = None  # kept alive between posts
        self._thread = threading.Thread(target=self._run, name="otlp-span-export", daemon=True)
        self._thread.start()

    def add(self, trace_id: int, parent_id: int, root: SpanRecord, children: list[SpanRecord]) -> bool:
        """Encode one finished request's spans and queue them; False (and counted) when the queue
        is full (nothing is encoded then) or they cannot be encoded."""
        count = len(children) + 1
        pending = self.queued - self.taken + count
        if pending > self.max_queue or self._stopping:
            self.dropped += count
            return False
        try:
            frame = trace_frame(trace_id, parent_id, root, children)
        except Exception:  # a bad attribute must not fail the request it describes
            logger.exception("a trace could not be encoded; its %d spans are dropped", count)
            self.unencoded += count
            return False
        self._queue.append((frame, count))
        self.queued += count
        if pending >= self.batch and not self._wake.is_set():
            self._wake.set()
        return True

    def pending(self) -> int:
        """Spans queued and not yet taken by the exporting thread."""
        return self.queued - self.taken

    def shutdown(self, timeout: float = 10.0) -> None:
        """Export what is queued and stop the thread (blocks up to ``timeout``)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        due = time.monotonic() + self.delay
        while True:
            self._wake.wait(max(due - time.monotonic(), 0))
            self._wake.clear()
            stopping = self._stopping
            everything = stopping or time.monotonic() >= due
            try:
                self._drain(everything=everything)
            except Exception:  # the thread must outlive any one batch
                logger.exception("span export failed")
            if everything:
                due = time.monotonic() + self.delay
            if stopping:
                if self._connection is not None:
                    self._connection.close()
                return

    def _drain(self, *, everything: bool) -> None:
        """Post the queued spans in batches: only full ones when woken by a full batch, as the
        SDK's batch processor does (a wake-up that also posted what arrived meanwhile made
        two posts, one of them small, where one would do); every span when the schedule's delay
        has passed or the exporter stops."""
        queue = self._queue
        while queue and (everything or self.queued - self.taken >= self.batch):
            frames: list[bytes] = []
            spans = 0
            while queue and spans < self.batch:
                frame, count = queue.popleft()
                frames.append(frame)
                spans += count
            self.taken += spans
            self._post(request_frames(self._resource, self._scope, frames), spans)
        if self.dropped > self._dropped_logged:
            logger.warning("%d spans dropped: the export queue (%d spans) was full",
                           self.dropped - self._dropped_logged, self.max_queue)
            self._dropped_logged = self.dropped

    def _connect(self) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(self.endpoint)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if self._connection is None:
            if parts.scheme == "https":
                context = ssl.create_default_context(cafile=_env(
                    os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"),
                    os.environ.get("OTEL_EXPORTER_OTLP_CERTIFICATE")) or None)
                cert = _client_cert()
                if cert is not None:
                    context.load_cert_chain(*cert)
                self._connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                                               context=context)
            else:
                self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        return self._connection, path

    def _post(self, body: bytes, count: int) -> None:
        if self.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self.timeout
        wait = 0.5
        while True:
            try:
                connection, path = self._connect()
                connection.request("POST", path, body=body, headers=self.headers)
                response = connection.getresponse()
                response.read()
                if response.status < 300:
                    self.exported += count
                    return
                retry = response.status in (429, 502, 503, 504)
                problem = f"status {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                retry, problem = True, f"{type(exc).__name__}: {exc}"
            if not retry or self._stopping or time.monotonic() + wait > deadline:
                self.failed += count
                logger.warning("%d spans not exported to %s: %s", count, self.endpoint, problem)
                return
            time.sleep(wait)
            wait *= 2


def _client_cert() -> tuple[str, str] | None:
    cert = _env(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"),
                os.environ.get("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"))
    key = _env(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"), os.environ.get("OTEL_EXPORTER_OTLP_CLIENT_KEY"))
    return (cert, key) if cert and key else None
