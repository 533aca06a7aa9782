"""The span exporter on its own: its hand-written protobuf against OpenTelemetry's own encoder,
its bounded queue (a collector that never answers costs dropped spans, counted, never a wait),
the standard variables it reads (headers, compression), the sampler and the traceparent reader.
Against real HTTP servers on loopback."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export import SpanExporter as SdkExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from apps.gateway.otlp import (
    CLIENT,
    INTERNAL,
    SERVER,
    STATUS_ERROR,
    Sampler,
    SpanExporter,
    SpanRecord,
    request_frame,
    trace_frame,
)
from apps.gateway.tracing import traceparent_parse
from tests.live import free_port

RESOURCE = {"service.name": "switchyard-under-test", "deployment.environment": "test",
            "telemetry.sdk.language": "python"}
SCOPE = "switchyard.gateway"
TRACE_ID, CALLER, ROOT, ATTEMPT, USAGE = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0x1111, 0x2222, 0x3333
ROOT_ATTRIBUTES = {"gen_ai.operation.name": "chat", "switchyard.request_id": "req_0123", "switchyard.cost": 1.25e-05,
                   "http.response.status_code": 502, "switchyard.chain": ["sim-mini", "sim-standard"],
                   "switchyard.stream": True, "switchyard.routing.rule_id": 7, "gen_ai.usage.input_tokens": 123456,
                   "switchyard.fallback_position": -1, "gen_ai.request.temperature": 0.0,
                   "error.type": "upstream_error"}
ATTEMPT_ATTRIBUTES = {"gen_ai.request.model": "sim-mini", "switchyard.attempt": 2,
                      "gen_ai.response.finish_reasons": ["stop"]}


def _first(count: int, *values) -> dict:
    """The first ``count`` of the root's attributes, as a common block's builder gives them."""
    return dict(zip(list(ROOT_ATTRIBUTES)[:count], values, strict=True))


def _ours(common: int = 0) -> ExportTraceServiceRequest:
    """Our encoding of the spans; with ``common``, the root's first ``common`` attributes are a
    common block (encoded first, from the table the second time) and the rest its own."""
    names = list(ROOT_ATTRIBUTES)
    root = SpanRecord("chat auto", SERVER, ROOT, 1_700_000_000_000_000_000,
                      {name: ROOT_ATTRIBUTES[name] for name in names[common:]},
                      (_first, common, *(tuple(value) if isinstance(value, list) else value
                                         for value in list(ROOT_ATTRIBUTES.values())[:common])) if common else None)
    root.end, root.status, root.status_message = 1_700_000_000_500_000_000, STATUS_ERROR, "upstream_error"
    attempt = SpanRecord("chat sim-mini", CLIENT, ATTEMPT, 1_700_000_000_100_000_000, dict(ATTEMPT_ATTRIBUTES))
    attempt.end = 1_700_000_000_300_000_000
    usage = SpanRecord("usage write", INTERNAL, USAGE, 1_700_000_000_400_000_000)
    usage.end = 1_700_000_000_400_100_000
    # Twice: the second encoding comes from the attribute tables the first one filled.
    for _ in range(2):
        body = request_frame(RESOURCE, SCOPE, trace_frame(TRACE_ID, CALLER, root, [attempt, usage]))
    return ExportTraceServiceRequest.FromString(body)


def _sdks() -> ExportTraceServiceRequest:
    """The same spans made with the OpenTelemetry SDK and encoded by its OTLP exporter's encoder."""
    kept = []

    class Keep(SdkExporter):
        def export(self, spans):
            kept.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource(RESOURCE))
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer(SCOPE)
    caller = set_span_in_context(NonRecordingSpan(SpanContext(TRACE_ID, CALLER, is_remote=True,
                                                              trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    ids = iter([ROOT, ATTEMPT, USAGE])
    provider.id_generator.generate_span_id = lambda: next(ids)
    root = tracer.start_span("chat auto", context=caller, kind=SpanKind.SERVER, start_time=1_700_000_000_000_000_000,
                             attributes=ROOT_ATTRIBUTES)
    inside = set_span_in_context(root)
    attempt = tracer.start_span("chat sim-mini", context=inside, kind=SpanKind.CLIENT,
                                start_time=1_700_000_000_100_000_000, attributes=ATTEMPT_ATTRIBUTES)
    usage = tracer.start_span("usage write", context=inside, start_time=1_700_000_000_400_000_000)
    attempt.end(end_time=1_700_000_000_300_000_000)
    usage.end(end_time=1_700_000_000_400_100_000)
    root.set_status(Status(StatusCode.ERROR, "upstream_error"))
    root.end(end_time=1_700_000_000_500_000_000)
    return ExportTraceServiceRequest.FromString(encode_spans(kept).SerializeToString())


def test_it_encodes_what_opentelemetrys_own_exporter_encodes():
    ours, sdks = _ours(), _sdks()
    assert len(ours.resource_spans[0].scope_spans[0].spans) == 3
    assert ours == sdks, (ours, sdks)


@pytest.mark.parametrize("common", [1, 4, 7, len(ROOT_ATTRIBUTES)])
def test_it_encodes_a_common_block_as_the_sdk_encodes_those_attributes(common):
    ours = _ours(common)
    assert ours == _sdks(), ours


def _values(span) -> dict:
    def value(any_value):
        kind = any_value.WhichOneof("value")
        if kind == "array_value":
            return [value(item) for item in any_value.array_value.values]
        return getattr(any_value, kind)

    return {pair.key: value(pair.value) for pair in span.attributes}


def _block(tenant: str, status: int, stream: bool, chain: tuple, rule_id: int | None) -> dict:
    return {"switchyard.tenant": tenant, "http.response.status_code": status,
            "switchyard.stream": True if stream else None, "switchyard.chain": list(chain),
            "switchyard.routing.rule_id": rule_id}


def test_it_encodes_each_common_block_and_double_from_its_own_values():
    """The tables of encoded blocks and doubles' heads never answer for other values: blocks that
    differ in one value each, each encoded twice (the second time from the table)."""
    cases = [("acme", 200, True, ("sim-mini",), 1), ("acme", 200, False, ("sim-mini",), 1),
             ("globex", 200, True, ("sim-mini",), 1), ("acme", 502, True, ("sim-mini",), 1),
             ("acme", 200, True, ("sim-mini", "sim-standard"), 1), ("acme", 200, True, ("sim-mini",), None),
             ("acme", 200, True, ("sim-mini",), 2), ("acme", 1, True, ("sim-mini",), 1)]
    for round_ in range(2):
        for at, case in enumerate(cases):
            cost = at / 7 + round_
            span = SpanRecord("chat sim-mini", SERVER, ROOT, 1_700_000_000_000_000_000,
                              {"switchyard.cost": cost, "gen_ai.usage.input_tokens": at}, (_block, *case))
            decoded = ExportTraceServiceRequest.FromString(request_frame(RESOURCE, SCOPE, trace_frame(
                TRACE_ID, 0, span, [])))
            expected = {name: value for name, value in _block(*case).items() if value is not None}
            expected |= {"switchyard.cost": cost, "gen_ai.usage.input_tokens": at}
            assert _values(decoded.resource_spans[0].scope_spans[0].spans[0]) == expected, case


class Collector:
    """An OTLP/HTTP endpoint that keeps each post's headers and spans, or holds every post
    unanswered until released (a collector that has stopped answering)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.posts: list[tuple[dict, ExportTraceServiceRequest]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.arrived.set()
                if hold:
                    collector.release.wait(30)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.posts.append(({name.lower(): value for name, value in self.headers.items()},
                                        ExportTraceServiceRequest.FromString(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _request(span_id: int) -> tuple:
    root = SpanRecord("chat sim-mini", SERVER, span_id, 1_700_000_000_000_000_000, {"switchyard.tenant": "acme"})
    child = SpanRecord("usage write", INTERNAL, span_id + 1, 1_700_000_000_000_000_001)
    return TRACE_ID + span_id, 0, root, [child]


def test_it_drops_and_counts_spans_when_the_queue_is_full_and_never_waits():
    collector = Collector(hold=True)
    exporter = SpanExporter(resource=RESOURCE, scope=SCOPE, endpoint=collector.url, headers={}, timeout=30,
                            compression="none", max_queue=8, batch=2, delay_ms=10)
    try:
        assert exporter.add(*_request(10))  # two spans: a batch, posted at once
        assert collector.arrived.wait(10), "the first batch never reached the collector"
        # The exporting thread now waits on a collector that does not answer; the queue fills.
        accepted = [exporter.add(*_request(100 + 2 * index)) for index in range(10)]
        assert accepted == [True] * 4 + [False] * 6
        assert exporter.dropped == 12 and exporter.pending() == 8
    finally:
        collector.release.set()
        exporter.shutdown(timeout=10)
        collector.close()
    assert exporter.exported == 10 and exporter.failed == 0
    roots = {span.span_id.hex() for _, post in collector.posts for span in post.resource_spans[0].scope_spans[0].spans
             if not span.parent_span_id}
    assert roots == {format(span_id, "016x") for span_id in (10, 100, 102, 104, 106)}


def test_it_sends_the_configured_headers_and_compresses_with_gzip(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret%20one,x-team=ops")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    collector = Collector()
    exporter = SpanExporter(resource=RESOURCE, scope=SCOPE, endpoint=collector.url, delay_ms=10)
    try:
        exporter.add(*_request(10))
        exporter.shutdown(timeout=10)
    finally:
        collector.close()
    headers, post = collector.posts[0]
    assert headers["x-api-key"] == "secret one" and headers["x-team"] == "ops"
    assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/x-protobuf"
    resource = {pair.key: pair.value.string_value for pair in post.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "switchyard-under-test"
    assert [span.name for span in post.resource_spans[0].scope_spans[0].spans] == ["usage write", "chat sim-mini"]
    assert exporter.exported == 2


def test_it_samples_by_trace_id_and_follows_the_callers_decision(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = Sampler.from_env()
    low, high = (1 << 62) - 1, 1 << 62  # the trace id's low 64 bits against a quarter of 2**64
    assert sampler.sampled(low, None) and not sampler.sampled(high, None)
    assert sampler.sampled(high, True) and not sampler.sampled(low, False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    assert not Sampler.from_env().sampled(high, True), "not parent-based: the caller's flag is not followed"
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert not Sampler.from_env().sampled(0, None)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG")
    default = Sampler.from_env()  # parent-based, always on
    assert default.sampled(high, None) and not default.sampled(low, False)


@pytest.mark.parametrize(("header", "parsed"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", (TRACE_ID, CALLER, True)),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", (TRACE_ID, CALLER, False)),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", (TRACE_ID, CALLER, True)),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
    ("00-not-a-trace-01", None),
])
def test_it_reads_a_traceparent_as_w3c_trace_context_says(header, parsed):
    assert traceparent_parse(header) == parsed
