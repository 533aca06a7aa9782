"""The thinnest Python proxy: aiohttp in, aiohttp out, bytes passed through. The baseline
every gateway figure is divided by (no auth, no parsing, no logging)."""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def build(upstream: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        if "anthropic-version" in request.headers:
            headers["anthropic-version"] = request.headers["anthropic-version"]
        async with app["session"].post(upstream + request.path, data=body, headers=headers) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status, headers={
                "Content-Type": upstream_response.headers.get("Content-Type", "application/json")})
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/messages", forward)
    app.router.add_post("/v1/responses", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT (no /v1)")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(build(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None,
                backlog=2048)


if __name__ == "__main__":
    main()
