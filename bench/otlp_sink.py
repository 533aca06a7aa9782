"""A local OTLP/HTTP traces sink for the benchmarks: accepts ``POST /v1/traces`` as a collector
would, counts the spans, keeps nothing. ``GET /stats`` answers ``{"posts", "spans", "roots",
"bytes"}`` (``roots``: spans with no parent, one per request the gateway served).

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import gzip

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_ANSWER = ExportTraceServiceResponse().SerializeToString()


def build() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    stats = {"posts": 0, "spans": 0, "roots": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        stats["posts"] += 1
        stats["bytes"] += len(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                stats["spans"] += len(scope.spans)
                stats["roots"] += sum(1 for span in scope.spans if not span.parent_span_id)
        return web.Response(body=_ANSWER, content_type="application/x-protobuf")

    async def stats_get(request: web.Request) -> web.Response:
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
