"""A local OTLP/HTTP traces sink for the benchmarks: accepts ``POST /v1/traces`` as a collector
would and keeps each post's body as it came. ``GET /stats`` decodes what arrived since the last
call, counts it and answers ``{"posts", "spans", "roots", "bytes"}`` (``roots``: spans with no
parent, one per request the gateway served; ``bytes``: the posts' decompressed size).

A real collector runs on a machine of its own; this one shares the benchmark's cores with the
gateways it measures. Decoding every post as it arrives put the collector's work (its CPU taken
only while a traced gateway was being measured) inside the measured rounds, so the sink only
keeps the bodies then, and the benchmark asks ``/stats`` between the timed rounds (after each
traced gateway's round, before the next round starts) and after them: every span is still decoded
and counted, outside the timed windows. A post that cannot be decoded is counted as ``bad``.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import gzip
import zlib

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_ANSWER = ExportTraceServiceResponse().SerializeToString()


def build() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    stats = {"posts": 0, "spans": 0, "roots": 0, "bytes": 0, "bad": 0}
    kept: list[tuple[bytes, str | None]] = []  # (a post's body as sent, its Content-Encoding)

    async def traces(request: web.Request) -> web.Response:
        kept.append((await request.read(), request.headers.get("Content-Encoding")))
        return web.Response(body=_ANSWER, content_type="application/x-protobuf")

    def count() -> None:
        for body, encoding in kept:
            stats["posts"] += 1
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                export = ExportTraceServiceRequest.FromString(body)
            except Exception:  # a malformed post: counted, the rest still decoded
                stats["bad"] += 1
                continue
            stats["bytes"] += len(body)
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    stats["spans"] += len(scope.spans)
                    stats["roots"] += sum(1 for span in scope.spans if not span.parent_span_id)
        kept.clear()

    async def stats_get(request: web.Request) -> web.Response:
        count()
        return web.json_response(stats)

    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats_get)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    web.run_app(build(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
