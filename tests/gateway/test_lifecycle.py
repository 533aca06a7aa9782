"""Config changes reach every process fast; shutdown and dropped clients lose no usage row."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from decimal import Decimal

import aiohttp
import httpx
import pytest

from tests.gateway.conftest import (
    REPO,
    Simulator,
    free_port,
    gateway_start,
    gateway_stop,
    request_logs,
    stop_process,
    wait_http,
    wait_until,
)
from tests.live import await_until


def _models_status(base: str, key: str) -> int:
    return httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def test_it_refuses_a_revoked_key_in_a_second_process_on_the_change_message(world, tmp_path):
    from apps.tenants.models import ApiKey
    from apps.tenants.services import key_revoke

    second = gateway_start(tmp_path)
    try:
        for gateway in (world.gateway, second):
            assert wait_until(lambda g=gateway: _models_status(g.base, world.key_a) == 200)
        key_revoke(api_key=ApiKey.objects.get(tenant=world.tenant_a))
        # The test gateways never reload on a timer (GATEWAY_CONFIG_REFRESH): a refusal is the
        # change message's doing, however long the loaded machine takes to deliver it.
        for gateway in (world.gateway, second):
            assert wait_until(lambda g=gateway: _models_status(g.base, world.key_a) == 401, interval=0.02)
        assert _models_status(second.base, world.key_b) == 200
    finally:
        gateway_stop(second)


@pytest.fixture
def slow_simulator():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--port", str(port),
                             "--ttft-ms", "400", "--chunk-delay-ms", "50", "--chunks", "10"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
    yield Simulator(f"http://127.0.0.1:{port}")
    stop_process(proc)


def test_it_logs_one_row_per_answered_request_through_sigterm_and_dropped_clients(world, slow_simulator, tmp_path):
    from apps.catalog.models import Model, Provider
    from apps.usage.models import RequestLog

    slow = Provider.objects.create(name="slow", kind=Provider.Kind.SIMULATED, base_url=slow_simulator.v1)
    Model.objects.create(name="sim-slow", upstream_id="sim-slow", provider=slow, is_free=True)
    gateway = gateway_start(tmp_path)
    headers = {"Authorization": f"Bearer {world.key_a}"}
    assert wait_until(lambda: "sim-slow" in httpx.get(gateway.v1 + "/models", headers=headers).text)

    async def one_json(session, i):
        async with session.post(gateway.v1 + "/chat/completions", json={
                "model": "sim-slow", "messages": [{"role": "user", "content": f"json {i}"}]}) as response:
            await response.read()
            return response.status

    async def one_stream(session, i):
        async with session.post(gateway.v1 + "/chat/completions", json={
                "model": "sim-slow", "stream": True, "messages": [{"role": "user", "content": f"stream {i}"}]}) as r:
            body = await r.read()
            return r.status if b"[DONE]" in body else -1

    async def one_dropped(session, i):
        async with session.post(gateway.v1 + "/chat/completions", json={
                "model": "sim-slow", "stream": True, "messages": [{"role": "user", "content": f"drop {i}"}]}) as r:
            # The first words arrive, then the client goes away (billed for what was produced).
            seen = b""
            while not re.search(rb'"content":\s*"[^"]', seen):
                piece = await r.content.readany()
                if not piece:
                    break
                seen += piece
            return "dropped"

    async def run():
        async with aiohttp.ClientSession(headers=headers) as session:
            tasks = [asyncio.ensure_future(one_json(session, i)) for i in range(12)]
            tasks += [asyncio.ensure_future(one_stream(session, i)) for i in range(8)]
            tasks += [asyncio.ensure_future(one_dropped(session, i)) for i in range(5)]
            # Every request has reached the upstream (and so is in flight) before the signal.
            assert await await_until(lambda: asyncio.to_thread(lambda: slow_simulator.stats()["requests"] >= 25))
            gateway.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    # uvicorn re-raises the SIGTERM after a clean shutdown, so the status says "terminated"
    assert gateway.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert b"Application shutdown complete" in gateway.log_path.read_bytes()
    answered = sum(1 for r in results if r == 200)
    assert answered == 20, results
    rows = RequestLog.objects.filter(tenant=world.tenant_a, model_used="sim-slow")
    outcomes = list(rows.values_list("status_code", "is_stream", "error_code"))
    assert rows.filter(status_code=200).count() == answered, outcomes
    dropped = rows.filter(status_code=499)
    assert dropped.count() == 5
    assert all(row.output_tokens >= 1 for row in dropped)
    assert rows.count() == 25
    gateway_stop(gateway)


def test_it_stops_accepting_on_sigterm_ends_streams_at_the_deadline_and_writes_everything(world, tmp_path):
    """SIGTERM: no new connection; streams still running at the deadline end, billed and logged
    as cut by the server; the process waits for a cache write stuck behind a lock before exiting."""
    import psycopg

    from apps.cache.models import CacheEntry
    from apps.catalog.models import Model, Provider
    from apps.gateway.database import conninfo
    from apps.usage.models import RequestLog

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--port", str(port),
                             "--ttft-ms", "50", "--chunk-delay-ms", "100", "--chunks", "60"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
        long = Provider.objects.create(name="long", kind=Provider.Kind.SIMULATED, base_url=f"http://127.0.0.1:{port}/v1")
        Model.objects.create(name="sim-long", upstream_id="sim-long", provider=long,
                             input_price_per_million=Decimal("1"), output_price_per_million=Decimal("2"))
        gateway = gateway_start(tmp_path, grace=2)
        upstream = Simulator(f"http://127.0.0.1:{port}")
        headers = {"Authorization": f"Bearer {world.key_a}"}
        assert wait_until(lambda: "sim-long" in httpx.get(gateway.v1 + "/models", headers=headers).text)

        async def one_stream(session, i):
            async with session.post(gateway.v1 + "/chat/completions", json={
                    "model": "sim-long", "stream": True,
                    "messages": [{"role": "user", "content": f"long stream {i}"}]}) as response:
                body = b""
                try:
                    async for piece in response.content.iter_any():
                        body += piece
                except aiohttp.ClientError:
                    pass  # the server closed the connection at its deadline
                return body

        async def run(blocker):
            async with aiohttp.ClientSession(headers=headers) as session:
                streams = [asyncio.ensure_future(one_stream(session, i)) for i in range(3)]
                # Answered and to be cached, but the cache table is locked: its row waits.
                cached = {"model": "sim-long", "messages": [{"role": "user", "content": "cache me on the way out"}]}
                async with session.post(gateway.v1 + "/chat/completions", json=cached) as r:
                    assert r.status == 200 and r.headers["x-switchyard-cache"] == "miss"
                # The three streams are running upstream before the signal.
                assert await await_until(lambda: asyncio.to_thread(lambda: upstream.stats()["requests"] >= 4))
                gateway.proc.send_signal(signal.SIGTERM)

                async def refused() -> bool:
                    try:
                        async with aiohttp.ClientSession() as fresh, fresh.get(gateway.base + "/healthz"):
                            return False
                    except aiohttp.ClientConnectorError:
                        return True

                assert await await_until(refused), "a new connection is still accepted after SIGTERM"
                bodies = await asyncio.gather(*streams)
                await asyncio.sleep(1.0)  # past the deadline: the server now waits for the cache write
                assert gateway.proc.poll() is None, "the process left with a cache write pending"
                blocker.rollback()
                return bodies

        with psycopg.connect(conninfo()) as blocker:
            blocker.execute("LOCK TABLE cache_cacheentry IN EXCLUSIVE MODE")
            bodies = asyncio.run(run(blocker))
        assert gateway.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        for body in bodies:
            assert body.startswith(b"data: ") and b"[DONE]" not in body
        rows = RequestLog.objects.filter(tenant=world.tenant_a, model_used="sim-long")
        streamed = rows.filter(is_stream=True)
        assert sorted(streamed.values_list("status_code", "error_code")) == [(503, "server_shutdown")] * 3
        assert all(row.output_tokens >= 1 and row.cost > 0 for row in streamed)
        assert rows.filter(is_stream=False, status_code=200).count() == 1
        assert CacheEntry.objects.filter(tenant=world.tenant_a).count() == 1
        gateway_stop(gateway)
    finally:
        stop_process(proc)


def test_it_flushes_usage_on_its_timer_while_serving(world):
    response = httpx.post(world.gateway.v1 + "/chat/completions",
                          headers={"Authorization": f"Bearer {world.key_a}"},
                          json={"model": "sim-mini", "messages": [{"role": "user", "content": "flush me"}]})
    assert response.status_code == 200
    # One row, far below USAGE_FLUSH_ROWS, with the gateway still running: only the timer writes it.
    (row,) = request_logs(1, tenant=world.tenant_a, request_id=response.headers["x-switchyard-request-id"])
    assert world.gateway.proc.poll() is None
    assert row.status_code == 200
