"""OpenTelemetry traces: a live gateway exports its spans over OTLP/HTTP to a real receiver on
loopback, which decodes them with OpenTelemetry's own protobuf classes.

One span per request (kind SERVER), with children for the cache lookup, each upstream attempt
(retries and fallbacks included) and the usage write; GenAI and Switchyard attributes; the
caller's ``traceparent`` honoured (over HTTP and per WebSocket request); each request's spans
naming only its own tenant.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from websockets.asyncio.client import connect

from tests.gateway.conftest import World, gateway_start, gateway_stop, usage_quiet, wait_until
from tests.live import free_port

SERVER, CLIENT, INTERNAL = 2, 3, 1  # Span.SpanKind in the protobuf
STATUS_ERROR = 2


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def _attributes(pairs) -> dict:
    return {pair.key: _value(pair.value) for pair in pairs}


class Receiver:
    """An OTLP/HTTP traces endpoint: ``POST /v1/traces`` with an ``ExportTraceServiceRequest``."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.posts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404)
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(), "name": span.name, "kind": span.kind,
                        "attributes": _attributes(span.attributes), "status": span.status.code,
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "resource": resource, "scope": scope_spans.scope.name,
                    })
        with self.lock:
            self.spans += spans
            self.posts += 1

    def trace(self, trace_id: str) -> list[dict]:
        """Every span of ``trace_id``, once its request span (which ends last) has arrived."""

        def arrived() -> list[dict] | None:
            with self.lock:
                spans = [span for span in self.spans if span["trace_id"] == trace_id]
            return spans if any(span["kind"] == SERVER for span in spans) else None

        spans = wait_until(arrived)
        assert spans, f"trace {trace_id} never reached the receiver"
        return sorted(spans, key=lambda span: span["start"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced_gateway(django_db_setup, django_db_blocker, tmp_path_factory, receiver):
    gateway = gateway_start(tmp_path_factory.mktemp("tracing"), extra_env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base,
        "OTEL_SERVICE_NAME": "switchyard-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        # Export soon after each span ends: the tests poll the receiver for it.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    })
    yield gateway
    gateway_stop(gateway)


@pytest.fixture
def traced(transactional_db, simulator, traced_gateway):
    world = World(simulator)
    world.gateway = traced_gateway
    world.simulator = simulator

    def sees_models() -> bool:
        response = httpx.get(traced_gateway.v1 + "/models", headers={"Authorization": f"Bearer {world.key_a}"})
        return response.status_code == 200 and {"sim-mini", "sim-embed"} <= {m["id"] for m in response.json()["data"]}

    assert wait_until(sees_models), "the gateway never saw the test catalog"
    yield world
    usage_quiet()


def _chat(world, body: dict, *, key: str | None = None, headers: dict | None = None) -> httpx.Response:
    response = httpx.post(world.gateway.v1 + "/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {key or world.key_a}", **(headers or {})})
    assert response.status_code == 200, response.text
    return response


def _prompt(text: str) -> list[dict]:
    # Unique per run: a cache entry of an earlier test never answers this one.
    return [{"role": "user", "content": f"{text} ({uuid.uuid4().hex[:8]})"}]


def _one(spans: list[dict], **match) -> dict:
    found = [span for span in spans if all(span[name] == value for name, value in match.items())]
    assert len(found) == 1, (match, [(span["name"], span["kind"]) for span in spans])
    return found[0]


def _request_span(spans: list[dict]) -> dict:
    return _one(spans, kind=SERVER)


def test_it_traces_a_json_chat_with_its_children_and_genai_attributes(traced, receiver):
    response = _chat(traced, {"model": "sim-mini", "messages": _prompt("What is Python?"), "max_tokens": 50,
                              "temperature": 0, "top_p": 0.5})
    trace_id = response.headers["x-switchyard-trace-id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    spans = receiver.trace(trace_id)

    request = _request_span(spans)
    assert request["parent"] == "", "a request with no traceparent starts its own trace"
    assert request["name"] == "chat sim-mini"
    attributes = request["attributes"]
    usage = response.json()["usage"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "sim-mini"
    assert attributes["gen_ai.response.model"] == "sim-mini"
    assert attributes["gen_ai.provider.name"] == "simulated"
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.request.temperature"] == 0
    assert attributes["gen_ai.request.top_p"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert attributes["switchyard.request_id"] == response.headers["x-switchyard-request-id"]
    assert attributes["switchyard.tenant"] == "acme"
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["switchyard.cache"] == "miss"
    assert attributes["switchyard.chain"] == ["sim-mini"]
    assert attributes["switchyard.cost"] == pytest.approx(float(response.headers["x-switchyard-cost"]))
    assert attributes["switchyard.cost"] > 0
    assert attributes["switchyard.overhead_ms"] == pytest.approx(
        float(response.headers["x-switchyard-overhead-ms"]), abs=0.01)
    assert "switchyard.stream" not in attributes
    assert attributes["http.response.status_code"] == 200
    assert request["resource"]["service.name"] == "switchyard-under-test"
    assert request["resource"]["deployment.environment"] == "test"

    children = [span for span in spans if span is not request]
    assert {span["parent"] for span in children} == {request["span_id"]}
    assert sorted(span["name"] for span in children) == ["cache lookup", "chat sim-mini", "usage write"]
    cache = _one(children, name="cache lookup")
    assert cache["kind"] == INTERNAL and cache["attributes"]["switchyard.cache"] == "miss"
    upstream = _one(children, kind=CLIENT)
    assert upstream["attributes"]["gen_ai.request.model"] == "sim-mini"
    assert upstream["attributes"]["server.address"] == "127.0.0.1"
    assert upstream["attributes"]["switchyard.attempt"] == 1
    assert upstream["attributes"]["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert upstream["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert upstream["status"] != STATUS_ERROR
    # The children lie within the request's span, in the pipeline's order.
    for child in children:
        assert request["start"] <= child["start"] <= child["end"] <= request["end"]
    assert cache["end"] <= upstream["start"] <= upstream["end"] <= _one(children, name="usage write")["start"]


def test_it_ends_a_streams_span_when_the_stream_ends(traced, receiver):
    with httpx.stream("POST", traced.gateway.v1 + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {traced.key_a}"},
                      json={"model": "sim-mini", "messages": _prompt("Stream me a story"), "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        trace_id = response.headers["x-switchyard-trace-id"]
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    spans = receiver.trace(trace_id)
    request = _request_span(spans)
    assert request["attributes"]["switchyard.stream"] is True
    assert request["attributes"]["gen_ai.usage.output_tokens"] == 12  # the simulator's 12 chunks
    assert "switchyard.ttft_ms" in request["attributes"]
    upstream = _one(spans, kind=CLIENT)
    assert upstream["parent"] == request["span_id"]
    # The attempt's span covers the provider's whole stream, not only its first byte.
    assert upstream["attributes"]["gen_ai.usage.output_tokens"] == 12
    assert upstream["end"] <= request["end"]
    assert _one(spans, name="usage write")["start"] >= upstream["end"]


def test_it_traces_a_cache_hit_without_an_upstream_call(traced, receiver):
    body = {"model": "sim-mini", "messages": _prompt("What is the capital of France?")}
    first = _chat(traced, body)
    assert first.headers["x-switchyard-cache"] == "miss"

    def hit() -> httpx.Response | None:
        response = _chat(traced, body)
        return response if response.headers["x-switchyard-cache"] == "hit-exact" else None

    response = wait_until(hit)
    assert response, "the answer never reached the cache"
    spans = receiver.trace(response.headers["x-switchyard-trace-id"])
    request = _request_span(spans)
    assert request["attributes"]["switchyard.cache"] == "hit-exact"
    assert request["attributes"]["switchyard.cost"] == 0
    assert request["attributes"]["switchyard.saved_cost"] > 0
    assert request["attributes"]["gen_ai.response.model"] == "sim-mini"
    assert not [span for span in spans if span["kind"] == CLIENT], "a hit never goes upstream"
    cache = _one(spans, name="cache lookup")
    assert cache["parent"] == request["span_id"]
    assert cache["attributes"]["switchyard.cache"] == "hit-exact"


def test_it_traces_each_attempt_of_retries_and_a_fallback(traced, receiver):
    traced.simulator.fault(model="sim-mini", mode="status", status=500, count=-1)
    response = _chat(traced, {"model": "auto", "messages": _prompt("What is Python?")},
                     headers={"Cache-Control": "no-store"})
    assert response.headers["x-switchyard-model"] == "sim-standard"
    spans = receiver.trace(response.headers["x-switchyard-trace-id"])
    request = _request_span(spans)
    attributes = request["attributes"]
    assert request["name"] == "chat auto"
    assert attributes["gen_ai.request.model"] == "auto"
    assert attributes["gen_ai.response.model"] == "sim-standard"
    assert attributes["switchyard.chain"] == ["sim-mini", "sim-standard"]
    from apps.routing.models import RoutingRule

    assert attributes["switchyard.routing.rule_id"] == RoutingRule.objects.get(name="auto simple").id
    assert attributes["switchyard.cache"] == "bypass"
    assert attributes["switchyard.upstream_failures"] == ["sim-mini: status 500", "sim-mini: status 500"]
    assert request["status"] != STATUS_ERROR

    attempts = [span for span in spans if span["kind"] == CLIENT]
    assert [(span["attributes"]["switchyard.model"], span["attributes"]["switchyard.attempt"],
             span["attributes"]["switchyard.fallback_position"]) for span in attempts] == [
        ("sim-mini", 1, 0), ("sim-mini", 2, 0), ("sim-standard", 1, 1)]
    assert {span["parent"] for span in attempts} == {request["span_id"]}
    for failed in attempts[:2]:
        assert failed["status"] == STATUS_ERROR
        assert failed["attributes"]["error.type"] == "UpstreamFailure"
        assert failed["attributes"]["http.response.status_code"] == 500
    assert attempts[2]["status"] != STATUS_ERROR
    assert attempts[2]["attributes"]["gen_ai.usage.output_tokens"] == attributes["gen_ai.usage.output_tokens"]
    assert "cache lookup" not in {span["name"] for span in spans}, "no-store skips the cache"


def test_it_joins_the_callers_trace_from_traceparent(traced, receiver):
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    response = _chat(traced, {"model": "sim-mini", "messages": _prompt("Trace me")},
                     headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert response.headers["x-switchyard-trace-id"] == trace_id
    request = _request_span(receiver.trace(trace_id))
    assert request["parent"] == parent_id

    embed_trace = uuid.uuid4().hex
    embedded = httpx.post(traced.gateway.v1 + "/embeddings", timeout=30,
                          headers={"Authorization": f"Bearer {traced.key_a}",
                                   "traceparent": f"00-{embed_trace}-{parent_id}-01"},
                          json={"model": "sim-embed", "input": "trace this too"})
    assert embedded.status_code == 200
    assert embedded.headers["x-switchyard-trace-id"] == embed_trace
    spans = receiver.trace(embed_trace)
    request = _request_span(spans)
    assert request["parent"] == parent_id
    assert request["name"] == "embeddings sim-embed"
    assert request["attributes"]["gen_ai.operation.name"] == "embeddings"
    assert _one(spans, kind=CLIENT)["name"] == "embeddings sim-embed"


def test_it_follows_a_callers_choice_not_to_sample(traced, receiver):
    unsampled, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    response = _chat(traced, {"model": "sim-mini", "messages": _prompt("Do not record me")},
                     headers={"traceparent": f"00-{unsampled}-{parent_id}-00"})
    assert response.headers["x-switchyard-trace-id"] == unsampled
    # A sampled request answered after it: once its spans are in, the first one's would be too.
    after = _chat(traced, {"model": "sim-mini", "messages": _prompt("Record me")})
    receiver.trace(after.headers["x-switchyard-trace-id"])
    with receiver.lock:
        assert not [span for span in receiver.spans if span["trace_id"] == unsampled]


def test_it_starts_a_new_trace_for_a_malformed_traceparent(traced, receiver):
    response = _chat(traced, {"model": "sim-mini", "messages": _prompt("Bad parent")},
                     headers={"traceparent": "00-not-a-trace-01"})
    trace_id = response.headers["x-switchyard-trace-id"]
    assert _request_span(receiver.trace(trace_id))["parent"] == ""


def test_it_puts_only_the_requests_own_tenant_on_its_spans(traced, receiver):
    answers = {slug: _chat(traced, {"model": "sim-mini", "messages": _prompt("Whose trace is this?")}, key=key)
               for slug, key in (("acme", traced.key_a), ("globex", traced.key_b))}
    assert answers["acme"].headers["x-switchyard-trace-id"] != answers["globex"].headers["x-switchyard-trace-id"]
    for slug, other in (("acme", "globex"), ("globex", "acme")):
        response = answers[slug]
        spans = receiver.trace(response.headers["x-switchyard-trace-id"])
        request = _request_span(spans)
        assert request["attributes"]["switchyard.tenant"] == slug
        assert request["attributes"]["switchyard.request_id"] == response.headers["x-switchyard-request-id"]
        for span in spans:
            values = [str(value) for value in span["attributes"].values()]
            assert not any(other in value for value in values), (span["name"], span["attributes"])
            assert span["attributes"].get("switchyard.tenant", slug) == slug


def test_it_sends_no_trace_header_when_tracing_is_off(world):
    response = _chat(world, {"model": "sim-mini", "messages": _prompt("No tracing here")})
    assert "x-switchyard-trace-id" not in response.headers


def test_it_takes_a_traceparent_per_websocket_request(traced, receiver):
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    url = traced.gateway.base.replace("http://", "ws://") + "/ws/v1/chat"

    async def run() -> dict:
        async with connect(url, additional_headers={"Authorization": f"Bearer {traced.key_a}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({
                "type": "chat.request", "id": "r1", "traceparent": f"00-{trace_id}-{parent_id}-01",
                "body": {"model": "sim-mini", "messages": _prompt("Over the socket")}}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event["type"] in ("done", "error"):
                    return event

    done = asyncio.run(run())
    assert done["type"] == "done", done
    assert done["trace_id"] == trace_id
    request = _request_span(receiver.trace(trace_id))
    assert request["parent"] == parent_id
    assert request["attributes"]["switchyard.request_id"] == done["request_id"]
    assert request["attributes"]["switchyard.stream"] is True
