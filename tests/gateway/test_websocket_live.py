"""The WebSocket door with a real client (the ``websockets`` package) against a live Switchyard
(uvicorn) and the simulated upstream over real HTTP; the channel layer is Redis when
``REDIS_URL`` is set, in memory otherwise."""

from __future__ import annotations

import asyncio
import json
import os

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.gateway.conftest import http_json
from tests.live import DEADLINE


def ws_url(world, path: str = "/ws/v1/chat") -> str:
    return world.gateway.base.replace("http://", "ws://") + path


async def next_event(ws, kind: str, timeout: float = DEADLINE) -> dict:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if event["type"] == kind:
            return event


def test_it_streams_over_a_real_websocket_through_the_same_pipeline(world):
    prompt = [{"role": "user", "content": "Describe a lighthouse. Keep it short"}]

    async def run() -> tuple[list[dict], list[str]]:
        async with connect(ws_url(world), additional_headers={"Authorization": f"Bearer {world.key_a}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "chat.request", "id": "r1", "sentences": True,
                                      "body": {"model": "sim-mini", "messages": prompt}}))
            events = []
            while not events or events[-1]["type"] not in ("done", "error"):
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return events, [e["text"] for e in events if e["type"] == "sentence"]

    events, sentences = asyncio.run(run())
    done = events[-1]
    assert done["type"] == "done", done
    streamed = "".join(e["content"] for e in events if e["type"] == "delta")
    # The same answer as the HTTP door gives (the simulator answers deterministically).
    status, answer = http_json("POST", world.gateway.v1 + "/chat/completions",
                               {"model": "sim-mini", "messages": prompt},
                               headers={"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"})
    assert status == 200
    assert streamed == answer["choices"][0]["message"]["content"]
    assert done["usage"]["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert " ".join(sentences) == " ".join(streamed.split())
    assert done["model"] == "sim-mini" and done["cache"] == "miss" and float(done["cost"]) > 0


def test_it_pushes_live_usage_events_to_the_tenants_subscribers_only(world):
    async def run():
        headers_a = {"Authorization": f"Bearer {world.key_a}"}
        async with connect(ws_url(world), additional_headers=headers_a) as watcher, \
                connect(ws_url(world), additional_headers={"Authorization": f"Bearer {world.key_b}"}) as other, \
                connect(ws_url(world), additional_headers=headers_a) as caller:
            for ws in (watcher, other, caller):
                await next_event(ws, "ready")
            for ws in (watcher, other):
                await ws.send(json.dumps({"type": "subscribe", "topic": "usage"}))
                await next_event(ws, "subscribed")
            if os.environ.get("REDIS_URL"):
                import redis.asyncio as aioredis

                client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
                groups = await client.keys(f"asgi:group:tenant.{world.tenant_a.pk}.usage")
                await client.aclose()
                assert groups, "the subscription is not in Redis"
            await caller.send(json.dumps({"type": "chat.request", "id": "1", "body": {
                "model": "sim-mini", "messages": [{"role": "user", "content": "Count to three"}]}}))
            done = await next_event(caller, "done")
            live = await next_event(watcher, "live")
            assert live["event"]["request_id"] == done["request_id"]
            assert live["event"]["cost"] == done["cost"]
            # The other tenant's first live event is about its own request: it heard nothing of
            # the first tenant's, which was published before.
            await other.send(json.dumps({"type": "chat.request", "id": "2", "body": {
                "model": "sim-mini", "messages": [{"role": "user", "content": "Count to four"}]}}))
            heard = []
            while not (heard and any(e["type"] == "done" for e in heard) and any(e["type"] == "live" for e in heard)):
                heard.append(json.loads(await asyncio.wait_for(other.recv(), DEADLINE)))
            own = next(e for e in heard if e["type"] == "done")
            assert next(e for e in heard if e["type"] == "live")["event"]["request_id"] == own["request_id"]

    asyncio.run(run())


def test_it_refuses_other_paths_and_foreign_origins_at_the_handshake(world):
    async def status_of(url: str, **kwargs) -> int:
        try:
            async with connect(url, **kwargs):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def run():
        assert await status_of(ws_url(world, "/ws/v1/other")) == 403
        assert await status_of(ws_url(world), origin="https://evil.example") == 403
        host = world.gateway.base.removeprefix("http://")
        assert await status_of(ws_url(world), origin=f"http://{host}") == 101

    asyncio.run(run())
