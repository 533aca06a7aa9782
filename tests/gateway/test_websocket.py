"""The WebSocket door through Channels' WebsocketCommunicator: the consumer runs in this process
on its own gateway runtime, against the real test database and a simulated upstream over real
HTTP that streams slowly enough for requests to overlap."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from apps.gateway.doors.websocket import CLOSE_IDLE, CLOSE_UNAUTHENTICATED, ChatConsumer
from apps.gateway.runtime import Runtime
from apps.tenants.models import Tenant
from tests.gateway.conftest import World, wait_until
from tests.live import DEADLINE, REPO, Simulator, await_until, free_port, stop_process, wait_http

PATH = "/ws/v1/chat"


@pytest.fixture(scope="module")
def slow_simulator():
    """20 words, 15 ms apart: a stream lasts about 300 ms, long enough to overlap and cancel."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.simulator.server", "--host", "127.0.0.1", "--port", str(port),
         "--ttft-ms", "5", "--chunks", "20", "--chunk-delay-ms", "15"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", proc=proc)
    yield Simulator(base)
    stop_process(proc)


@pytest.fixture
def world(transactional_db, slow_simulator):
    slow_simulator.reset()
    world = World(slow_simulator)
    world.simulator = slow_simulator
    Tenant.objects.update(cache_embedding_model=world.models["sim-embed"])
    yield world
    slow_simulator.reset()


@pytest.fixture
async def gateway(world, settings):
    # The tenants embed prompts with the simulator's embeddings model (real HTTP), so this
    # process never loads the local model.
    settings.CACHE_LOCAL_EMBEDDER = False
    gateway_runtime = Runtime()
    await gateway_runtime.start()
    yield gateway_runtime
    await gateway_runtime.stop()


class Communicator(WebsocketCommunicator):
    """Waits up to DEADLINE for each event (Channels' default is one second, which a loaded
    machine can exceed between two events of a healthy stream)."""

    async def connect(self, timeout: float = DEADLINE):
        return await super().connect(timeout)

    async def receive_output(self, timeout: float = DEADLINE):
        return await super().receive_output(timeout)

    async def receive_from(self, timeout: float = DEADLINE):
        return await super().receive_from(timeout)

    async def receive_json_from(self, timeout: float = DEADLINE):
        return await super().receive_json_from(timeout)


def socket(gateway, *, key: str | None = None, headers: list | None = None, subprotocols=None):
    all_headers = list(headers or [])
    if key is not None:
        all_headers.append((b"authorization", f"Bearer {key}".encode()))
    return Communicator(ChatConsumer.as_asgi(gateway_runtime=gateway), PATH, headers=all_headers,
                        subprotocols=subprotocols)


async def connected(gateway, key: str, **kwargs) -> WebsocketCommunicator:
    ws = socket(gateway, key=key, **kwargs)
    ok, _ = await ws.connect()
    assert ok
    ready = await ws.receive_json_from()
    assert ready["type"] == "ready"
    return ws


def chat(request_id: str, prompt: str, *, model: str = "sim-mini", sentences: bool = False, **extra) -> dict:
    return {"type": "chat.request", "id": request_id, "sentences": sentences,
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}]}, **extra}


async def until_done(ws, ids: set[str], timeout: float = DEADLINE) -> list[dict]:
    """Every event until each of ``ids`` has its done or error event."""
    events, open_ids = [], set(ids)
    while open_ids:
        event = await ws.receive_json_from(timeout=timeout)
        events.append(event)
        if event["type"] in ("done", "error") and event.get("id") in open_ids:
            open_ids.discard(event["id"])
    return events


def text_of(events: list[dict], request_id: str) -> str:
    return "".join(e["content"] for e in events if e["type"] == "delta" and e["id"] == request_id)


async def logs(**filters) -> list:
    from apps.usage.models import RequestLog

    return await sync_to_async(lambda: list(RequestLog.objects.filter(**filters).order_by("created_at")))()


async def test_it_refuses_a_bad_key_with_an_error_event_and_4401(gateway, world):
    ws = socket(gateway, key="sk-sy-notakey0000000000000000")
    ok, _ = await ws.connect()
    assert ok
    event = await ws.receive_json_from()
    assert event["type"] == "error"
    assert event["status"] == 401
    assert event["error"]["type"] == "authentication_error"
    assert (await ws.receive_output())["code"] == CLOSE_UNAUTHENTICATED


async def test_it_refuses_a_request_before_authentication(gateway, world):
    ws = socket(gateway)
    ok, _ = await ws.connect()
    assert ok
    await ws.send_json_to(chat("1", "Hello"))
    event = await ws.receive_json_from()
    assert event["error"]["code"] == "invalid_api_key"
    assert (await ws.receive_output())["code"] == CLOSE_UNAUTHENTICATED


async def test_it_closes_a_socket_that_never_authenticates(gateway, world, settings):
    settings.WEBSOCKET_AUTH_TIMEOUT = 0.2
    ws = socket(gateway)
    await ws.connect()
    event = await ws.receive_json_from()
    assert event["status"] == 401
    assert (await ws.receive_output())["code"] == CLOSE_UNAUTHENTICATED


async def test_it_authenticates_by_header_subprotocol_or_first_message(gateway, world):
    by_header = await connected(gateway, world.key_a)
    await by_header.disconnect()

    by_protocol = socket(gateway, subprotocols=["switchyard.v1", f"switchyard.key.{world.key_a}"])
    ok, protocol = await by_protocol.connect()
    assert ok
    assert protocol == "switchyard.v1"  # never the key
    assert (await by_protocol.receive_json_from())["tenant"] == "acme"
    await by_protocol.disconnect()

    by_message = socket(gateway)
    await by_message.connect()
    await by_message.send_json_to({"type": "auth", "api_key": world.key_b})
    ready = await by_message.receive_json_from()
    assert ready == {"type": "ready", "tenant": "globex", "key": world.key_b[:len(ready["key"])],
                     "protocol": "switchyard.v1"}
    await by_message.disconnect()


async def test_it_answers_two_interleaved_requests_on_one_socket(gateway, world):
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to(chat("a", "Tell me about rivers"))
    await ws.send_json_to(chat("b", "Tell me about mountains"))
    events = await until_done(ws, {"a", "b"})
    order = [e["id"] for e in events if e["type"] == "delta"]
    first_done = next(i for i, e in enumerate(events) if e["type"] == "done")
    # Both streams were under way at once: each sent deltas before the first one finished.
    assert {"a", "b"} <= {e["id"] for e in events[:first_done] if e["type"] == "delta"}
    assert order.count("a") >= 2 and order.count("b") >= 2  # a read holding several chunks is one delta
    assert text_of(events, "a") != text_of(events, "b")
    done = {e["id"]: e for e in events if e["type"] == "done"}
    for request_id in ("a", "b"):
        assert done[request_id]["model"] == "sim-mini"
        assert done[request_id]["cache"] == "miss"
        assert done[request_id]["usage"]["completion_tokens"] == 20
        assert float(done[request_id]["cost"]) > 0
        assert done[request_id]["ttft_ms"] > 0
    await ws.disconnect()
    await gateway.stop()  # flushes the usage rows
    rows = await logs(tenant=world.tenant_a)
    assert sorted(r.request_id for r in rows) == sorted(done[i]["request_id"] for i in ("a", "b"))
    assert all(r.is_stream and r.status_code == 200 and r.output_tokens == 20 for r in rows)
    assert {str(r.cost.normalize()) for r in rows} == {done["a"]["cost"], done["b"]["cost"]}


async def test_it_cancels_a_request_and_bills_what_was_produced(gateway, world):
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to(chat("long", "Tell me a long story", model="sim-premium"))
    deltas = 0
    while deltas < 3:
        event = await ws.receive_json_from()
        deltas += event["type"] == "delta"
    await ws.send_json_to({"type": "cancel", "id": "long"})
    event = await ws.receive_json_from()
    while event["type"] == "delta":
        deltas += 1
        event = await ws.receive_json_from()
    assert event["type"] == "done"
    assert event["finish_reason"] == "cancelled"
    produced = event["usage"]["completion_tokens"]
    assert deltas <= produced < 20
    assert float(event["cost"]) > 0
    assert wait_until(lambda: world.simulator.stats()["in_flight"] == 0)  # the upstream call stopped
    await ws.send_json_to({"type": "cancel", "id": "long"})
    assert (await ws.receive_json_from())["error"]["code"] == "request_not_found"
    await ws.disconnect()
    await gateway.stop()
    (row,) = await logs(tenant=world.tenant_a)
    assert row.status_code == 499
    assert row.output_tokens == produced
    assert f"{row.cost.normalize():f}" == event["cost"]


async def test_it_sends_error_events_and_keeps_the_socket_open(gateway, world, settings):
    settings.WEBSOCKET_MAX_MESSAGE_BYTES = 2048
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to({"type": "chat.request", "id": "1", "body": {"model": "sim-mini"}})
    event = await ws.receive_json_from()
    assert (event["type"], event["id"], event["status"], event["error"]["param"]) == ("error", "1", 400, "messages")
    await ws.send_json_to(chat("2", "Hi", model="no-such-model"))
    event = await ws.receive_json_from()
    assert (event["status"], event["error"]["code"]) == (404, "model_not_found")
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from())["status"] == 400
    await ws.send_json_to(chat("3", "x" * 3000))
    event = await ws.receive_json_from()
    assert (event["status"], event["error"]["code"]) == (413, "payload_too_large")
    await ws.send_json_to({"type": "chat.request", "id": "", "body": {}})
    assert (await ws.receive_json_from())["error"]["param"] == "id"
    await ws.send_json_to({"type": "launch"})
    assert (await ws.receive_json_from())["error"]["param"] == "type"
    for target in ("high", 1.5, True):
        await ws.send_json_to({**chat("5", "Hi"), "quality_target": target})
        event = await ws.receive_json_from()
        assert (event["id"], event["status"], event["error"]["param"]) == ("5", 400, "quality_target")
    world.simulator.fault(model="*", mode="status", status=500, count=100)
    await ws.send_json_to(chat("4", "Hi"))
    event = await ws.receive_json_from()
    assert (event["id"], event["status"], event["error"]["code"]) == ("4", 502, "upstream_error")
    await ws.send_json_to({"type": "ping", "id": "p"})
    assert await ws.receive_json_from() == {"type": "pong", "id": "p"}
    await ws.disconnect()


async def test_it_refuses_a_body_nested_too_deep_or_with_unknown_fields_and_keeps_the_socket_open(gateway, world):
    ws = await connected(gateway, world.key_a)
    deep = chat("1", "Hi")
    deep["body"]["metadata"] = {"note": json.loads("[" * 300 + "]" * 300)}  # past what orjson writes
    await ws.send_json_to(deep)
    event = await ws.receive_json_from()
    assert (event["type"], event["id"], event["status"], event["error"]["code"]) == (
        "error", "1", 400, "nesting_too_deep")
    unknown = chat("2", "Hi")
    unknown["body"]["max_token"] = 5
    await ws.send_json_to(unknown)
    event = await ws.receive_json_from()
    assert (event["id"], event["status"], event["error"]["code"], event["error"]["param"]) == (
        "2", 400, "unknown_parameter", "max_token")
    await ws.send_json_to(chat("3", "Hi"))
    assert (await until_done(ws, {"3"}))[-1]["type"] == "done"
    await ws.disconnect()


async def test_it_ends_a_request_the_gateway_failed_with_a_500_error_event(gateway, world, monkeypatch):
    from apps.gateway.doors import chat_events

    async def broken(*args, **kwargs):
        raise RuntimeError("a defect")

    monkeypatch.setattr(chat_events, "chat", broken)
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to(chat("1", "Hi"))
    event = await ws.receive_json_from()
    assert (event["type"], event["id"], event["status"], event["error"]["type"], event["error"]["code"]) == (
        "error", "1", 500, "api_error", "internal_error")
    await ws.send_json_to({"type": "ping", "id": "p"})
    assert await ws.receive_json_from() == {"type": "pong", "id": "p"}
    await ws.disconnect()


async def test_it_refuses_a_duplicate_id_and_too_many_requests_in_flight(gateway, world, settings):
    settings.WEBSOCKET_MAX_IN_FLIGHT = 1
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to(chat("x", "One"))
    await ws.send_json_to(chat("x", "Two"))
    await ws.send_json_to(chat("y", "Three"))
    events = [await ws.receive_json_from()]
    while events[-1]["type"] != "done":
        events.append(await ws.receive_json_from())
    errors = [e for e in events if e["type"] == "error"]
    assert errors[0]["id"] == "x" and errors[0]["error"]["param"] == "id"
    assert errors[1]["id"] == "y" and errors[1]["status"] == 429
    assert events[-1]["type"] == "done"
    await ws.disconnect()


async def test_it_sends_complete_sentences(gateway, world):
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to(chat("s", "Explain tides", sentences=True))
    events = await until_done(ws, {"s"})
    text = text_of(events, "s")
    sentences = [e["text"] for e in events if e["type"] == "sentence"]
    assert len(sentences) >= 2
    assert " ".join(sentences) == " ".join(text.split())
    assert all(s[-1] in ".!?" for s in sentences[:-1])
    # A sentence is sent as soon as it is complete, before the stream's end.
    assert events.index(next(e for e in events if e["type"] == "sentence")) < len(events) - 3
    await ws.disconnect()


async def test_it_keeps_tenants_apart(gateway, world):
    a = await connected(gateway, world.key_a)
    b = await connected(gateway, world.key_b)
    await a.send_json_to({"type": "subscribe", "topic": "usage"})
    await b.send_json_to({"type": "subscribe", "topic": "usage"})
    assert (await a.receive_json_from())["type"] == "subscribed"
    assert (await b.receive_json_from())["type"] == "subscribed"
    await a.send_json_to(chat("1", "What is the capital of France"))
    first = next(e for e in await until_done(a, {"1"}) if e["type"] == "done")
    live = await a.receive_json_from()
    assert live["type"] == "live" and live["event"]["request_id"] == first["request_id"]

    from apps.cache.models import CacheEntry

    assert await await_until(sync_to_async(CacheEntry.objects.filter(tenant=world.tenant_a).exists))
    await a.send_json_to(chat("2", "What is the capital of France"))
    again = next(e for e in await until_done(a, {"2"}) if e["type"] == "done")
    assert again["cache"] == "hit-exact"
    assert again["cost"] == "0"
    await b.send_json_to(chat("1", "What is the capital of France"))
    other = next(e for e in await until_done(b, {"1"}) if e["type"] == "done")
    assert other["cache"] == "miss"  # tenant A's answer is not tenant B's
    # B heard only about its own request, A only about its own two.
    heard_by_b = await b.receive_json_from()
    assert heard_by_b["event"]["request_id"] == other["request_id"]
    assert (await a.receive_json_from())["event"]["request_id"] == again["request_id"]
    # Request ids belong to their socket: B cannot cancel A's requests. The next thing each
    # socket hears is about this exchange: neither heard anything of the other's before it.
    await a.send_json_to(chat("mine", "Tell me a long story"))
    await b.send_json_to({"type": "cancel", "id": "mine"})
    assert (await b.receive_json_from())["error"]["code"] == "request_not_found"
    mine = await until_done(a, {"mine"})
    assert all(e["event"]["request_id"] != other["request_id"] for e in mine if e["type"] == "live")
    assert next(e for e in mine if e["type"] == "done")["finish_reason"] != "cancelled"
    await a.disconnect()
    await b.disconnect()


async def test_it_refuses_a_foreign_origin(gateway, world, settings):
    foreign = socket(gateway, key=world.key_a, headers=[(b"host", b"gw.example"), (b"origin", b"https://evil.example")])
    ok, _ = await foreign.connect()
    assert not ok
    same = socket(gateway, key=world.key_a, headers=[(b"host", b"gw.example"), (b"origin", b"https://gw.example")])
    ok, _ = await same.connect()
    assert ok
    await same.disconnect()
    settings.WEBSOCKET_ALLOWED_ORIGINS = ["https://app.example"]
    listed = socket(gateway, key=world.key_a, headers=[(b"host", b"gw.example"), (b"origin", b"https://app.example")])
    ok, _ = await listed.connect()
    assert ok
    await listed.disconnect()


async def test_it_closes_an_idle_socket(gateway, world, settings):
    settings.WEBSOCKET_IDLE_TIMEOUT = 0.3
    ws = await connected(gateway, world.key_a)
    event = await ws.receive_json_from()
    assert event["error"]["code"] == "idle_timeout"
    assert (await ws.receive_output())["code"] == CLOSE_IDLE


async def test_it_lets_a_logged_in_staff_user_pick_a_key_by_id(gateway, world):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from apps.tenants.models import ApiKey

    def login(is_staff: bool) -> str:
        user = get_user_model().objects.create_user(f"user{is_staff}", is_staff=is_staff)
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    staff_cookie, plain_cookie = await sync_to_async(login)(True), await sync_to_async(login)(False)
    key_id = await sync_to_async(lambda: ApiKey.objects.get(tenant=world.tenant_b).pk)()
    same_origin = [(b"host", b"testserver"), (b"origin", b"http://testserver")]

    async def auth(cookie: str | None, headers) -> dict:
        extra = [(b"cookie", f"sessionid={cookie}".encode())] if cookie else []
        ws = socket(gateway, headers=headers + extra)
        await ws.connect()
        await ws.send_json_to({"type": "auth", "key_id": key_id})
        answer = await ws.receive_json_from()
        await ws.disconnect()
        return answer

    assert (await auth(staff_cookie, same_origin))["tenant"] == "globex"
    assert (await auth(plain_cookie, same_origin))["status"] == 401
    assert (await auth(None, same_origin))["status"] == 401
    assert (await auth(staff_cookie, []))["status"] == 401  # not from a browser on this site


async def test_it_never_loads_the_local_model_when_it_is_off_and_the_tenant_has_none(gateway, world):
    from apps.cache.models import CacheEntry
    from apps.tenants.models import Tenant

    await sync_to_async(Tenant.objects.update)(cache_embedding_model=None)
    await gateway.reload()
    ws = await connected(gateway, world.key_a)
    await ws.send_json_to(chat("1", "Exact only, please"))
    first = next(e for e in await until_done(ws, {"1"}) if e["type"] == "done")
    entry = await await_until(sync_to_async(lambda: list(CacheEntry.objects.filter(tenant=world.tenant_a))))
    await ws.send_json_to(chat("2", "Exact only, please"))
    second = next(e for e in await until_done(ws, {"2"}) if e["type"] == "done")
    await ws.disconnect()
    await gateway.stop()
    assert (first["cache"], second["cache"]) == ("miss", "hit-exact")
    assert len(entry) == 1 and entry[0].embedding is None
    assert gateway.batcher.embedder._model is None, "the local model was loaded"


async def test_it_finishes_socket_requests_after_sigterm_and_refuses_new_ones(gateway, world, settings):
    settings.WEBSOCKET_DRAIN_SECONDS = 10
    handed_over = asyncio.Event()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: handed_over.set())
    try:
        gateway.drain_on_sigterm()
        ws = await connected(gateway, world.key_a)
        await ws.send_json_to(chat("long", "Tell me about the sea"))
        first = await ws.receive_json_from()
        assert first["id"] == "long"
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert gateway.draining and not handed_over.is_set(), "a socket request is still in flight"
        await ws.send_json_to(chat("late", "Too late"))
        events = await until_done(ws, {"long", "late"})
        refused = next(e for e in events if e["id"] == "late")
        assert refused["type"] == "error" and refused["error"]["code"] == "server_shutdown"
        assert any(e["type"] == "done" and e["id"] == "long" for e in events)
        await asyncio.wait_for(handed_over.wait(), timeout=DEADLINE)
        await ws.disconnect()
    finally:
        signal.signal(signal.SIGTERM, previous)
    await gateway.stop()
    rows = await logs(tenant=world.tenant_a)
    assert [(r.status_code, r.is_stream) for r in rows] == [(200, True)]
