"""The upstream client against a provider that misbehaves in ways the simulator does not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiohttp import web

from apps.providers.transport import HttpTransport, UpstreamClientError
from tests.live import free_port

SECRET = "sk-provider-secret-1234567890"


async def _echoing_provider(port: int) -> web.AppRunner:
    async def refuse(request: web.Request) -> web.Response:
        # Some providers quote the request back in their error, the key included.
        echoed = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"bad request from {echoed}"}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def test_it_never_passes_our_credential_back_in_a_providers_error():
    port = free_port()
    provider = SimpleNamespace(id=1, name="echo", kind="openai", credential=SECRET, timeout=5.0, max_concurrency=4,
                               base_url=f"http://127.0.0.1:{port}/v1")
    model = SimpleNamespace(name="echo-model", provider=provider)

    async def run() -> UpstreamClientError:
        runner = await _echoing_provider(port)
        transport = HttpTransport()
        try:
            with pytest.raises(UpstreamClientError) as caught:
                await transport.post_json(model, "/chat/completions", b'{"model": "x", "messages": []}')
            return caught.value
        finally:
            await transport.close()
            await runner.cleanup()

    error = asyncio.run(run())
    assert error.status == 400
    assert SECRET.encode() not in error.body
    assert b"bad request from Bearer [redacted]" in error.body
