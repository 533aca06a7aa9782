"""Vertex AI providers behind a live Switchyard, over real HTTP to the simulated upstream's
Vertex URLs and token endpoint, with the official ``openai`` SDK on the client side. Each test
generates its service accounts' RSA keys; the simulator checks every grant's JWT signature and
every request's access token."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from tests.gateway.conftest import http_json, request_logs, wait_until
from tests.live import service_account, service_account_stats

NO_STORE = {"Cache-Control": "no-store"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SYSTEM = "You are a careful assistant who answers in plain words for the switchyard tests."
UPSTREAM = "gemini-sim-vertex"
WORDS = 12  # the test simulator's answer length
ONE_TOKEN = {"grants": 1, "renewed_early": 0, "refused": 0, "tokens_used": 1}  # an account's simulator stats


class Vertex:
    """Vertex AI providers pointing at the simulator, a model on each, committed."""

    def __init__(self, world) -> None:
        self.world = world
        self.models = {}

    def add(self, name: str, key: dict, *, upstream: str = UPSTREAM, project: str = "", location: str = "us-central1",
            window: int = 128_000):
        from apps.catalog.models import Model, Provider

        provider = Provider(name=f"vertex-{name}", kind=Provider.Kind.VERTEX, base_url=self.world.simulator.base,
                            credential=json.dumps(key), project=project, location=location, timeout_seconds=5.0)
        provider.full_clean()
        provider.save()
        self.models[name] = Model.objects.create(
            name=name, upstream_id=upstream, provider=provider, context_window=window,
            input_price_per_million=Decimal("1.00"), cached_input_price_per_million=Decimal("0.25"),
            output_price_per_million=Decimal("4.00"), max_output_tokens=4096)
        return self.models[name]

    def seen(self, *names: str) -> None:
        def sees_them() -> bool:
            status, body = http_json("GET", self.world.gateway.v1 + "/models",
                                     headers={"Authorization": f"Bearer {self.world.key_a}"})
            return status == 200 and set(names) <= {m["id"] for m in body["data"]}

        assert wait_until(sees_them), "the gateway never saw the Vertex models"

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.world.gateway.v1, api_key=key or self.world.key_a, max_retries=0)

    def price(self, name: str):
        return self.models[name].prices.get()


@pytest.fixture
def vertex(world):
    vertex = Vertex(world)
    vertex.key = service_account(world.simulator, project="sim-project")
    vertex.add("vtx", vertex.key)
    vertex.seen("vtx")
    return vertex


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_it_answers_with_cached_and_reasoning_tokens_priced_exactly(vertex):
    sdk = vertex.client()
    answers = [sdk.chat.completions.with_raw_response.create(
        model="vtx", messages=[{"role": "system", "content": SYSTEM}, *_ask(question)], reasoning_effort="low",
        extra_headers=NO_STORE) for question in ("First question", "Second question")]
    first, second = (raw.parse() for raw in answers)
    assert answers[0].headers["x-switchyard-model"] == "vtx"
    assert first.choices[0].message.content and first.choices[0].finish_reason == "stop"
    assert first.model == UPSTREAM
    for answer in (first, second):
        assert answer.usage.completion_tokens_details.reasoning_tokens == 2 * WORDS
        assert answer.usage.completion_tokens == WORDS + 2 * WORDS
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens
    assert vertex.world.simulator.stats()["by_model"] == {UPSTREAM: 2}
    rows = request_logs(2, tenant=vertex.world.tenant_a)
    assert [r.cached_tokens for r in rows] == [0, cached]
    for row, answer in zip(rows, (first, second), strict=True):
        assert row.status_code == 200 and row.tokens_estimated is False
        assert (row.input_tokens, row.output_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert rows[1].cost == (Decimal(second.usage.prompt_tokens - cached) * Decimal("1.00")
                            + Decimal(cached) * Decimal("0.25")
                            + Decimal(second.usage.completion_tokens) * Decimal("4.00")) / Decimal(1_000_000)
    assert service_account_stats(vertex.world.simulator, vertex.key) == ONE_TOKEN


def test_it_streams_as_openai_chunks_with_usage(vertex):
    sdk = vertex.client()
    plain = sdk.chat.completions.create(model="vtx", messages=_ask("Stream from Vertex"), extra_headers=NO_STORE)
    chunks = list(sdk.chat.completions.create(model="vtx", messages=_ask("Stream from Vertex"), stream=True,
                                              stream_options={"include_usage": True}, extra_headers=NO_STORE))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    (row,) = request_logs(1, tenant=vertex.world.tenant_a, is_stream=True)
    assert row.tokens_estimated is False and row.output_tokens == plain.usage.completion_tokens
    assert row.cost == vertex.price("vtx").cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                                output_tokens=row.output_tokens) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_loop_runs_through_vertex(vertex, stream):
    sdk = vertex.client()
    messages = _ask("What is the weather in Paris?")
    if stream:
        chunks = list(sdk.chat.completions.create(model="vtx", messages=messages, tools=[WEATHER],
                                                  tool_choice="required", stream=True, extra_headers=NO_STORE))
        (call,) = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        assistant = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]}
    else:
        answer = sdk.chat.completions.create(model="vtx", messages=messages, tools=[WEATHER], tool_choice="required",
                                             extra_headers=NO_STORE)
        assert answer.choices[0].finish_reason == "tool_calls"
        (call,) = answer.choices[0].message.tool_calls
        assistant = answer.choices[0].message.model_dump(exclude_none=True)
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    # The simulator refuses a result that does not follow its call, or a call without its signature.
    messages += [assistant, {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'}]
    final = sdk.chat.completions.create(model="vtx", messages=messages, tools=[WEATHER], extra_headers=NO_STORE)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    assert all(r.status_code == 200 and r.cost > 0 for r in request_logs(2, tenant=vertex.world.tenant_a))


def test_it_sends_images_as_inline_data(vertex):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n a tiny image").decode()
    content = [{"type": "text", "text": "What is in this picture?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    answer = vertex.client().chat.completions.create(model="vtx", messages=[{"role": "user", "content": content}],
                                                     extra_headers=NO_STORE)
    assert answer.choices[0].message.content and answer.usage.prompt_tokens > 0
    # Not base64: the simulator refuses the inlineData as Google does, and the refusal is passed on.
    content[1] = {"type": "image_url", "image_url": {"url": "data:image/png;base64,not*base64"}}
    with pytest.raises(openai.BadRequestError) as refused:
        vertex.client().chat.completions.create(model="vtx", messages=[{"role": "user", "content": content}])
    assert refused.value.code == "invalid_argument" and "inlineData" in refused.value.message


def test_errors_map_to_the_gateways_errors(vertex):
    world = vertex.world
    sdk = vertex.client()
    world.simulator.fault(model=UPSTREAM, mode="status", status=400)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="vtx", messages=_ask("A bad request"))
    assert refused.value.code == "invalid_argument" and "injected fault" in refused.value.message
    world.simulator.fault(model=UPSTREAM, mode="context_length")
    with pytest.raises(openai.BadRequestError) as overflow:
        sdk.chat.completions.create(model="vtx", messages=_ask("A prompt too long"))
    assert "exceeds the maximum number of tokens" in overflow.value.message
    world.simulator.fault(model=UPSTREAM, mode="status", status=429, retry_after=3, count=-1)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="vtx", messages=_ask("Too many"))
    assert limited.value.code == "upstream_rate_limited"
    assert limited.value.response.headers["retry-after"] == "3"  # Google's RetryInfo delay
    assert http_json("DELETE", world.simulator.base + "/_sim/faults")[0] == 200
    world.simulator.fault(model=UPSTREAM, mode="content_filter")
    answer = sdk.chat.completions.create(model="vtx", messages=_ask("Something unsafe"), extra_headers=NO_STORE)
    assert answer.choices[0].finish_reason == "content_filter"
    rows = request_logs(4, tenant=world.tenant_a)
    assert [(r.status_code, r.error_code) for r in rows[:3]] == [
        (400, "invalid_argument"), (400, "invalid_argument"), (429, "upstream_rate_limited")]
    assert all(r.cost == 0 for r in rows[:3]) and rows[3].status_code == 200


def test_a_prompt_too_long_for_vertex_moves_on_to_a_larger_window(vertex):
    from apps.routing.models import RoutingFallback, RoutingRule

    larger = vertex.add("vtx-large", service_account(vertex.world.simulator), upstream="gemini-sim-large",
                        window=1_000_000)
    rule = RoutingRule.objects.create(name="growing", match_model="growing", target=vertex.models["vtx"], priority=4)
    RoutingFallback.objects.create(rule=rule, model=larger, position=0)
    vertex.seen("vtx-large")
    vertex.world.simulator.fault(model=UPSTREAM, mode="context_length", count=-1)

    def moved_on() -> bool:
        try:
            raw = vertex.client().chat.completions.with_raw_response.create(
                model="growing", messages=_ask("Hello"), extra_headers=NO_STORE)
        except openai.APIStatusError:
            return False  # the rule is not loaded yet
        return raw.headers["x-switchyard-model"] == "vtx-large"

    assert wait_until(moved_on)


def test_a_key_the_token_endpoint_refuses_is_the_providers_failure_then_the_fallback_answers(vertex):
    from apps.routing.models import RoutingFallback, RoutingRule

    world = vertex.world
    unknown = vertex.add("vtx-unknown-key", service_account(world.simulator, registered=False))
    other_project = vertex.add("vtx-other-project", vertex.key, project="not-my-project")
    vertex.seen("vtx-unknown-key", "vtx-other-project")
    for name, why in (("vtx-unknown-key", "invalid_grant"), ("vtx-other-project", "(403)")):
        with pytest.raises(openai.APIStatusError) as failed:
            vertex.client().chat.completions.create(model=name, messages=_ask("Hello"))
        assert failed.value.status_code == 502 and "refused credentials" in failed.value.message
        assert why in failed.value.message
    rule = RoutingRule.objects.create(name="careful", match_model="careful", target=unknown, priority=4)
    RoutingFallback.objects.create(rule=rule, model=other_project, position=0)
    RoutingFallback.objects.create(rule=rule, model=vertex.models["vtx"], position=1)

    def answered_by_the_fallback() -> bool:
        try:
            raw = vertex.client().chat.completions.with_raw_response.create(model="careful", messages=_ask("Hi"))
        except openai.APIStatusError:
            return False
        return raw.headers["x-switchyard-model"] == "vtx"

    assert wait_until(answered_by_the_fallback)
    rows = request_logs(2, tenant=world.tenant_a, status_code=502)
    assert all(r.cost == 0 for r in rows)


def test_the_token_is_renewed_before_it_expires_and_no_request_fails(vertex):
    world = vertex.world
    key = service_account(world.simulator, expires_in=2)  # renewed after 1.6 s, sent until 1.8 s, dead at 2 s
    vertex.add("vtx-short", key)
    vertex.seen("vtx-short")
    sdk = vertex.client()
    answered = []

    def renewed() -> bool:
        answer = sdk.chat.completions.create(model="vtx-short", messages=_ask(f"Question {len(answered)}"),
                                             extra_headers=NO_STORE)
        answered.append(answer.choices[0].finish_reason)
        return service_account_stats(world.simulator, key)["grants"] >= 2

    assert wait_until(renewed, timeout=30, interval=0.02)
    for _ in range(3):  # sent with the new token
        renewed()
    assert set(answered) == {"stop"}
    # The second grant came while the first token was live, and no request was sent with a dead one.
    stats = service_account_stats(world.simulator, key)
    assert stats == {"grants": 2, "renewed_early": 1, "refused": 0, "tokens_used": 2}


def test_a_revoked_token_is_dropped_and_the_retry_gets_another(vertex):
    world = vertex.world
    sdk = vertex.client()
    assert sdk.chat.completions.create(model="vtx", messages=_ask("Before"), extra_headers=NO_STORE).choices
    status, revoked = http_json("POST", f"{world.simulator.base}/_sim/vertex/accounts/{vertex.key['client_email']}"
                                        "/revoke")
    assert (status, revoked) == (200, {"revoked": 1})
    answer = sdk.chat.completions.create(model="vtx", messages=_ask("After"), extra_headers=NO_STORE)
    assert answer.choices[0].finish_reason == "stop"
    assert service_account_stats(world.simulator, vertex.key) == {"grants": 2, "renewed_early": 1, "refused": 1,
                                                                  "tokens_used": 2}
    (row,) = request_logs(1, tenant=world.tenant_a, status_code=200, upstream_failures__contains="401")
    assert "refused credentials (401)" in row.upstream_failures


def test_concurrent_requests_share_one_token_grant(vertex):
    world = vertex.world
    key = service_account(world.simulator, grant_delay_ms=300)  # every request arrives while it is granted
    vertex.add("vtx-slow-grant", key)
    vertex.seen("vtx-slow-grant")
    sdk = vertex.client()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: sdk.chat.completions.create(
            model="vtx-slow-grant", messages=_ask(f"Concurrent {n}"), extra_headers=NO_STORE), range(8)))
    assert all(a.choices[0].finish_reason == "stop" for a in answers)
    assert service_account_stats(world.simulator, key) == ONE_TOKEN


def test_the_messages_and_responses_doors_reach_vertex(vertex):
    world = vertex.world
    claude = anthropic.Anthropic(base_url=world.gateway.base, api_key=world.key_a, max_retries=0)
    message = claude.messages.create(model="vtx", max_tokens=200, messages=_ask("Hello from Messages"),
                                     extra_headers=NO_STORE)
    assert message.content[0].text and message.stop_reason == "end_turn"
    with claude.messages.stream(model="vtx", max_tokens=200, messages=_ask("Hello from Messages"),
                                extra_headers=NO_STORE) as stream:
        assert "".join(stream.text_stream) == message.content[0].text
    response = vertex.client().responses.create(model="vtx", input="Hello from Responses", extra_headers=NO_STORE)
    assert response.output_text and response.status == "completed"
    events = list(vertex.client().responses.create(model="vtx", input="Hello from Responses", stream=True,
                                                   extra_headers=NO_STORE))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == response.output_text
    assert world.simulator.stats()["by_model"] == {UPSTREAM: 4}
    assert service_account_stats(world.simulator, vertex.key)["grants"] == 1


def test_tenant_b_sees_nothing_of_tenant_as_vertex_requests(vertex):
    world = vertex.world
    body = {"model": "vtx", "messages": _ask("A private Vertex question")}
    a = {"Authorization": f"Bearer {world.key_a}"}
    b = {"Authorization": f"Bearer {world.key_b}"}
    first = httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=a)
    assert first.status_code == 200 and first.headers["x-switchyard-cache"] == "miss"
    from apps.cache.models import CacheEntry
    assert wait_until(lambda: CacheEntry.objects.filter(tenant=world.tenant_a).exists())
    assert wait_until(lambda: httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=a)
                      .headers["x-switchyard-cache"] == "hit-exact")
    theirs = httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=b)
    assert theirs.status_code == 200 and theirs.headers["x-switchyard-cache"] == "miss"
    request_logs(1, tenant=world.tenant_b)
    usage = httpx.get(world.gateway.v1 + "/usage/export", headers=b)
    assert usage.status_code == 200 and first.headers["x-switchyard-request-id"] not in usage.text
