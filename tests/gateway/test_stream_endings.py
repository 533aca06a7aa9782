"""How a stream ends when its provider misbehaves after the first bytes, through every stream door
of a live Switchyard (chat SSE, Messages translated and native, WebSocket):

- a provider that sends its last event (``data: [DONE]``, ``message_stop``) but holds its answer
  open: the client's stream ends at once, whole, billed as a success;
- a provider that goes quiet mid-stream: after ``UPSTREAM_STREAM_IDLE_TIMEOUT`` the client's
  stream ends with an ``upstream_timeout`` error event and the row bills what was produced.

The providers here have a 60 s timeout: a stream that waited for it would end far past the
generous bounds these tests allow."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.gateway.conftest import World, gateway_start, gateway_stop, request_logs, usage_quiet, wait_until

PATIENT_TIMEOUT = 60.0  # the providers' own timeout
PROMPT_END_SECONDS = 20.0  # far below it: a stream that waited for the provider's timeout fails
OPENAI_MODEL, OPENAI_UPSTREAM = "patient", "sim-standard"
NATIVE_MODEL, NATIVE_UPSTREAM = "patient-claude", "sim-premium"


def _patient_providers(world: World) -> None:
    """An OpenAI-compatible and a native Anthropic provider (both the simulator), each with a
    60 s timeout, and one model on each."""
    from apps.catalog.models import Model, Provider

    openai = Provider.objects.create(name="patient", kind=Provider.Kind.SIMULATED, base_url=world.simulator.v1,
                                     timeout_seconds=PATIENT_TIMEOUT)
    native = Provider.objects.create(name="patient-anthropic", kind=Provider.Kind.ANTHROPIC,
                                     base_url=world.simulator.v1, credential="sk-ant-sim",
                                     timeout_seconds=PATIENT_TIMEOUT)
    for name, upstream, provider in ((OPENAI_MODEL, OPENAI_UPSTREAM, openai), (NATIVE_MODEL, NATIVE_UPSTREAM, native)):
        Model.objects.create(name=name, upstream_id=upstream, provider=provider, max_output_tokens=4096,
                             input_price_per_million=Decimal("1"), output_price_per_million=Decimal("2"))

    def seen() -> bool:
        response = httpx.get(world.gateway.v1 + "/models", headers={"Authorization": f"Bearer {world.key_a}"})
        names = {m["id"] for m in response.json()["data"]} if response.status_code == 200 else set()
        return {OPENAI_MODEL, NATIVE_MODEL} <= names

    assert wait_until(seen, timeout=15), "the gateway never saw the patient providers"


def _sse(world, path: str, body: dict, headers: dict) -> tuple[float, int, str]:
    started = time.monotonic()
    with httpx.stream("POST", world.gateway.v1 + path, json=body, headers=headers,
                      timeout=httpx.Timeout(PATIENT_TIMEOUT * 2)) as response:
        text = response.read().decode()
    return time.monotonic() - started, response.status_code, text


def _chat(world, prompt: str) -> tuple[float, int, str]:
    return _sse(world, "/chat/completions", {
        "model": OPENAI_MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]},
        {"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"})


def _messages(world, model: str, prompt: str) -> tuple[float, int, str]:
    return _sse(world, "/messages", {
        "model": model, "max_tokens": 256, "stream": True, "messages": [{"role": "user", "content": prompt}]},
        {"x-api-key": world.key_a, "anthropic-version": "2023-06-01", "Cache-Control": "no-store"})


def _websocket(world, prompt: str) -> tuple[float, list[dict]]:
    async def run() -> tuple[float, list[dict]]:
        url = world.gateway.base.replace("http://", "ws://") + "/ws/v1/chat"
        async with connect(url, additional_headers={"Authorization": f"Bearer {world.key_a}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            started = time.monotonic()
            await ws.send(json.dumps({"type": "chat.request", "id": "r1", "cache_control": "no-store", "body": {
                "model": OPENAI_MODEL, "messages": [{"role": "user", "content": prompt}]}}))
            events: list[dict] = []
            while not events or events[-1]["type"] not in ("done", "error"):
                events.append(json.loads(await asyncio.wait_for(ws.recv(), PATIENT_TIMEOUT * 2)))
            return time.monotonic() - started, events

    return asyncio.run(run())


DOORS = {
    # door: (send, upstream model the fault targets, the model the row names)
    "chat": (_chat, OPENAI_UPSTREAM, OPENAI_MODEL),
    "messages-translated": (lambda world, prompt: _messages(world, OPENAI_MODEL, prompt), OPENAI_UPSTREAM,
                            OPENAI_MODEL),
    "messages-native": (lambda world, prompt: _messages(world, NATIVE_MODEL, prompt), NATIVE_UPSTREAM, NATIVE_MODEL),
    "websocket": (_websocket, OPENAI_UPSTREAM, OPENAI_MODEL),
}


def _data_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("data: ")]


def _nothing_held(world) -> None:
    """The provider's connection was given up: the simulator serves nothing any more."""
    assert wait_until(lambda: world.simulator.stats()["in_flight"] == 0, timeout=30), \
        "the simulator still serves a request the gateway is done with"


@pytest.fixture
def patient(world):
    _patient_providers(world)
    return world


@pytest.mark.parametrize("door", sorted(DOORS))
def test_it_ends_the_clients_stream_at_the_providers_last_event_when_it_lingers(patient, door):
    world = patient
    send, upstream, model = DOORS[door]
    world.simulator.fault(model=upstream, mode="linger", count=-1)
    if door == "websocket":
        elapsed, events = send(world, "linger after the end")
        assert events[-1]["type"] == "done", events[-1]
        assert "".join(e.get("content", "") for e in events if e["type"] == "delta")
    else:
        elapsed, status, text = send(world, "linger after the end")
        assert status == 200
        last = _data_lines(text)[-1]
        assert last == ("data: [DONE]" if door == "chat" else 'data: {"type":"message_stop"}'), text[-300:]
        assert '"error"' not in text
    assert elapsed < PROMPT_END_SECONDS, f"the stream ended {elapsed:.1f} s after it began"
    (row,) = request_logs(1, timeout=30, tenant=world.tenant_a, model_used=model)
    assert (row.status_code, row.error_code) == (200, "")
    assert row.output_tokens > 0 and row.cost > 0
    _nothing_held(world)


@pytest.fixture(scope="module")
def idle_gateway(django_db_setup, django_db_blocker, tmp_path_factory):
    gateway = gateway_start(tmp_path_factory.mktemp("idle"), extra_env={"UPSTREAM_STREAM_IDLE_TIMEOUT": "1"})
    yield gateway
    gateway_stop(gateway)


@pytest.fixture
def impatient(transactional_db, simulator, idle_gateway):
    world = World(simulator)
    world.gateway = idle_gateway
    world.simulator = simulator
    _patient_providers(world)
    yield world
    usage_quiet()


@pytest.mark.parametrize("door", sorted(DOORS))
def test_it_ends_a_stream_gone_quiet_after_the_idle_timeout_and_bills_what_came(impatient, door):
    world = impatient
    send, upstream, model = DOORS[door]
    world.simulator.fault(model=upstream, mode="stall", count=-1)
    if door == "websocket":
        elapsed, events = send(world, "stall mid-way")
        error = events[-1]
        assert error["type"] == "error" and error["status"] == 504, error
        assert error["error"]["code"] == "upstream_timeout"
        assert "".join(e.get("content", "") for e in events if e["type"] == "delta"), "what came was relayed"
    else:
        elapsed, status, text = send(world, "stall mid-way")
        assert status == 200
        assert "[DONE]" not in text and "message_stop" not in text
        if door == "chat":
            error = json.loads(_data_lines(text)[-1][6:])["error"]
            assert error["code"] == "upstream_timeout"
        else:
            assert text.rstrip().splitlines()[-2] == "event: error", text[-300:]
            assert json.loads(_data_lines(text)[-1][6:])["error"]["type"] == "timeout_error"
    assert elapsed < PROMPT_END_SECONDS, f"the stream ended {elapsed:.1f} s after it began"
    (row,) = request_logs(1, timeout=30, tenant=world.tenant_a, model_used=model)
    assert (row.status_code, row.error_code) == (504, "upstream_timeout")
    assert row.output_tokens > 0 and row.cost > 0, "what was streamed is billed"
    assert "ReadTimeout" in row.upstream_failures
    _nothing_held(world)


def test_it_waits_the_providers_timeout_not_the_idle_one_for_the_first_bytes(impatient):
    # The idle timeout (1 s here) bounds silences once the stream has begun; a provider slow to
    # begin is held to its own timeout.
    world = impatient
    world.simulator.fault(model=OPENAI_UPSTREAM, mode="slow", delay=2.5, count=1)
    _elapsed, status, text = _chat(world, "slow to begin")
    assert status == 200
    assert _data_lines(text)[-1] == "data: [DONE]" and '"error"' not in text
    (row,) = request_logs(1, timeout=30, tenant=world.tenant_a, model_used=OPENAI_MODEL)
    assert (row.status_code, row.upstream_failures) == (200, "")


# --- an end marker spelled in the content is not the end --------------------------------------

SPELLED = ["The marker is ", "data: [DONE]", " and the other ", "event: message_stop", ", both as text."]


def _openai_events() -> bytes:
    chunks = [{"id": "c1", "object": "chat.completion.chunk", "model": "m",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]} for text in SPELLED]
    chunks.append({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _anthropic_events() -> bytes:
    def event(kind: str, data: dict) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    return b"".join([
        event("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                            "content": [], "stop_reason": None,
                                            "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
          for text in SPELLED),
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
        event("message_stop", {}),
    ])


class _SpellingUpstream(BaseHTTPRequestHandler):
    """Streams an answer whose text spells both APIs' end markers, whole, in one write."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = _anthropic_events() if self.path.endswith("/messages") else _openai_events()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def spelling(world):
    from apps.catalog.models import Model, Provider

    server = ThreadingHTTPServer(("127.0.0.1", 0), _SpellingUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    for name, kind in (("speller", Provider.Kind.OPENAI), ("speller-claude", Provider.Kind.ANTHROPIC)):
        provider = Provider.objects.create(name=name, kind=kind, base_url=base, timeout_seconds=PATIENT_TIMEOUT)
        Model.objects.create(name=name, upstream_id="m", provider=provider, max_output_tokens=4096,
                             input_price_per_million=Decimal("1"), output_price_per_million=Decimal("2"))

    def seen() -> bool:
        response = httpx.get(world.gateway.v1 + "/models", headers={"Authorization": f"Bearer {world.key_a}"})
        names = {m["id"] for m in response.json()["data"]} if response.status_code == 200 else set()
        return {"speller", "speller-claude"} <= names

    assert wait_until(seen, timeout=15), "the gateway never saw the spelling providers"
    yield world
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("door", ["chat", "messages-translated", "messages-native"])
def test_it_takes_an_end_marker_in_the_answers_text_for_text(spelling, door):
    world = spelling
    prompt = "spell the markers"
    if door == "chat":
        _elapsed, status, text = _sse(world, "/chat/completions", {
            "model": "speller", "stream": True, "messages": [{"role": "user", "content": prompt}]},
            {"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"})
    else:
        _elapsed, status, text = _messages(world, "speller" if door == "messages-translated" else "speller-claude",
                                           prompt)
    assert status == 200
    lines = _data_lines(text)
    final = "data: [DONE]" if door == "chat" else 'data: {"type": "message_stop"}'
    assert lines[-1].replace('": "', '":"') == final.replace('": "', '":"'), text[-300:]
    events = [json.loads(line[6:]) for line in lines[:-1]]  # every event before the end is whole JSON
    if door == "chat":
        streamed = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    else:
        streamed = "".join(e["delta"]["text"] for e in events
                           if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta")
    assert streamed == "".join(SPELLED)
    assert text.count(": x-switchyard-cost ") == 1
    (row,) = request_logs(1, timeout=30, tenant=world.tenant_a)
    assert (row.status_code, row.output_tokens) == (200, 9)


def test_it_refuses_an_idle_timeout_that_is_not_above_zero():
    from tests.core.test_settings import _load_settings

    for value in ("0", "-1", "nan", "soon"):
        done = _load_settings(UPSTREAM_STREAM_IDLE_TIMEOUT=value)
        assert done.returncode != 0, value
        assert "UPSTREAM_STREAM_IDLE_TIMEOUT" in done.stderr, done.stderr[-500:]
