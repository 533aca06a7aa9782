"""What one request's tracing costs in-process, the OpenTelemetry SDK's way against Switchyard's own.

    python bench/tracing.py [--requests 20000] [--sdk-ref 74cbd5b]

Runs the gateway's tracing module for one JSON request as the pipeline drives it (the upstream
attempt, the usage write, the request's span: three spans, the cache bypassed as in
bench/gateway.py), ``--requests`` times, and times apart:

- recording: what the request path does (start, attributes, end, hand-over to the exporter:
  for Switchyard's, the spans' OTLP protobuf encoding, made at the hand-over);
- encoding: what the exporting thread does before the post (for the SDK's, the OTLP protobuf of
  those spans; for Switchyard's, joining the encoded spans into one export request).

The SDK's way is this module as it stood at ``--sdk-ref`` (SDK spans, a ``BatchSpanProcessor``'s
hand-over, the OTLP exporter's encoder); Switchyard's is the current ``apps/gateway/tracing.py``
with its own recorder and encoder. Both run in this process, one after the other, nothing posted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _call(index: int) -> SimpleNamespace:
    provider = SimpleNamespace(kind="simulated", base_url="http://127.0.0.1:9000/v1", id=1, name="sim")
    model = SimpleNamespace(name="sim-mini", upstream_id="sim-mini", provider=provider)
    return SimpleNamespace(
        key=SimpleNamespace(tenant_slug="demo"), request_id=f"req_{index:024x}", endpoint="/v1/chat/completions",
        started=time.perf_counter(), requested_model="sim-mini", chain=(model,), model=model, stream=False,
        cache="bypass", cache_similarity=None, status=200, error_code="", cost=Decimal("0.000012"),
        overhead_ms=0.21, first_byte=None, rule_id=None, route_reason="", saved_cost=Decimal(0), failures=[],
        input_tokens=12, output_tokens=20, cached_tokens=0, tokens_estimated=False), model


BODY = {"model": "sim-mini", "messages": [{"role": "user", "content": "Benchmark prompt"}]}
ANSWER = {"choices": [{"finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 20}}


async def _request(tracing, index: int) -> None:
    call, model = _call(index)
    tracing.request_start(call, operation="chat")
    call.trace.request_body(BODY)

    async def attempt(_model):
        return None, ANSWER

    await call.trace.attempts_traced(call, attempt)(model)
    call.trace.end(call, lambda: None)


def _timed(tracing, requests: int) -> float:
    async def run() -> float:
        for index in range(200):  # warm
            await _request(tracing, index)
        started = time.process_time()
        for index in range(requests):
            await _request(tracing, index)
        return (time.process_time() - started) / requests * 1e6

    return asyncio.run(run())


def sdk_measure(ref: str, requests: int) -> tuple[float, float]:
    """The module at ``ref``: its request path with the spans handed to a batch processor's queue,
    then the OTLP exporter's encoding of them."""
    source = subprocess.run(["git", "show", f"{ref}:apps/gateway/tracing.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tracing_sdk.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tracing_sdk", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans = []

        def export(self, spans):
            self.spans += spans
            return SpanExportResult.SUCCESS

    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "switchyard-bench"}))
    processor = BatchSpanProcessor(keep, max_queue_size=requests * 4, schedule_delay_millis=3_600_000,
                                   max_export_batch_size=requests * 4)
    provider.add_span_processor(processor)
    recording = _timed(module.Tracing(provider), requests)
    processor.force_flush()
    spans = keep.spans[-3 * requests:]
    started = time.process_time()
    for at in range(0, len(spans), 512):
        encode_spans(spans[at:at + 512]).SerializePartialToString()
    encoding = (time.process_time() - started) / requests * 1e6
    provider.shutdown()
    return recording, encoding


def own_measure(requests: int) -> tuple[float, float, int]:
    from apps.gateway.otlp import Sampler, SpanExporter, request_frame
    from apps.gateway.tracing import Tracing

    # Nothing posted: the queue holds every request and the thread never wakes before shutdown.
    exporter = SpanExporter(resource={"service.name": "switchyard-bench", "telemetry.sdk.language": "python"},
                            scope="switchyard.gateway", endpoint="http://127.0.0.1:9/v1/traces",
                            max_queue=(requests + 200) * 4, batch=(requests + 200) * 4, delay_ms=3_600_000)
    recording = _timed(Tracing(exporter, Sampler(bound=1 << 64, parent_based=True)), requests)
    frames = [exporter._queue.popleft()[0] for _ in range(len(exporter._queue))][-requests:]
    started = time.process_time()
    size = 0
    for at in range(0, len(frames), 170):  # about 512 spans a post
        size += len(request_frame({"service.name": "switchyard-bench"}, "switchyard.gateway",
                                  b"".join(frames[at:at + 170])))
    encoding = (time.process_time() - started) / requests * 1e6
    exporter.shutdown(timeout=1)
    return recording, encoding, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--sdk-ref", default="74cbd5b", help="a commit whose tracing module used the SDK")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    sdk = sdk_measure(args.sdk_ref, args.requests)
    own = own_measure(args.requests)
    print(f"{args.requests:,} requests of three spans each, CPU µs per request (process time, one thread):")
    print("| way | request path | exporting thread, before the post | total |")
    print("|---|---|---|---|")
    print(f"| OpenTelemetry SDK ({args.sdk_ref}) | {sdk[0]:.1f} | {sdk[1]:.1f} | {sdk[0] + sdk[1]:.1f} |")
    print(f"| Switchyard's recorder and encoder | {own[0]:.1f} | {own[1]:.1f} | {own[0] + own[1]:.1f} |")


if __name__ == "__main__":
    main()
