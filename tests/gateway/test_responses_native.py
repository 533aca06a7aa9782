"""``/v1/responses`` to a provider serving the Responses API itself (``Provider.responses_api``):
the client's body passes through (the model id swapped), the answer and its events are relayed,
through the same pipeline (usage row and cost, cache, fallbacks, stored responses). Live
gateway, the simulated upstream's ``/v1/responses``, the official ``openai`` SDK."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.gateway.conftest import request_logs
from tests.live import http_json, wait_until

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
EVENTS = TypeAdapter(ResponseStreamEvent)
UPSTREAM = "sim-native-up"


@pytest.fixture
def native(world):
    """The world plus ``gpt-native`` on a provider serving the Responses API, and ``native-fb``
    routing to it with ``sim-mini`` (a chat model) as its fallback."""
    from apps.catalog.models import Model, Provider
    from apps.routing.models import RoutingFallback, RoutingRule

    provider = Provider.objects.create(name="sim-responses", kind=Provider.Kind.SIMULATED,
                                       base_url=world.simulator.v1, timeout_seconds=5.0, responses_api=True)
    world.native_model = Model.objects.create(
        name="gpt-native", upstream_id=UPSTREAM, provider=provider, tier=Model.Tier.SIMPLE,
        input_price_per_million=Decimal("1.00"), cached_input_price_per_million=Decimal("0.10"),
        output_price_per_million=Decimal("4.00"), max_output_tokens=4096)
    rule = RoutingRule.objects.create(name="native first", match_model="native-fb", target=world.native_model,
                                      priority=5)
    RoutingFallback.objects.create(rule=rule, model=world.models["sim-mini"], position=0)

    def sees_it() -> bool:
        status, body = http_json("GET", world.gateway.v1 + "/models",
                                 headers={"Authorization": f"Bearer {world.key_a}"})
        return status == 200 and "gpt-native" in {m["id"] for m in body["data"]}

    assert wait_until(sees_it), "the gateway never saw the native model"
    return world


def client(world, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gateway.v1, api_key=key or world.key_a, max_retries=0)


def last_sent(world) -> dict:
    return http_json("GET", world.simulator.base + "/_sim/last_responses")[1]


def raw_events(world, body: dict) -> tuple[list[dict], httpx.Headers]:
    events = []
    with httpx.stream("POST", world.gateway.v1 + "/responses", json={**body, "stream": True}, timeout=30,
                      headers={"Authorization": f"Bearer {world.key_a}"}) as answer:
        assert answer.status_code == 200
        name = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                events.append(event)
        headers = answer.headers
    return events, headers


def test_it_passes_the_request_through_and_prices_the_providers_usage(native):
    raw = client(native).responses.with_raw_response.create(
        model="gpt-native", instructions="Be brief.", input="Say hello", max_output_tokens=200,
        reasoning={"effort": "low"}, metadata={"team": "docs"})
    response = raw.parse()
    Response.model_validate(json.loads(raw.text))
    sent = last_sent(native)
    assert sent["model"] == UPSTREAM and sent["store"] is False
    assert (sent["instructions"], sent["input"], sent["reasoning"]) == ("Be brief.", "Say hello", {"effort": "low"})
    assert sent["metadata"] == {"team": "docs"}  # what the chat translation drops reaches a native provider
    assert response.id.startswith("resp_") and "sim" not in response.id  # the gateway's id: it stores the response
    assert response.store is True and response.model == UPSTREAM and response.output_text
    usage = response.usage
    assert usage.output_tokens_details.reasoning_tokens == 8  # the provider's own count, relayed
    (row,) = request_logs(1, tenant=native.tenant_a, endpoint="/v1/responses")
    assert (row.model_used, row.input_tokens, row.output_tokens, row.tokens_estimated) == (
        "gpt-native", usage.input_tokens, usage.output_tokens, False)
    expected = (Decimal(usage.input_tokens) * Decimal("1.00") + Decimal(usage.output_tokens) * Decimal("4.00")) \
        / Decimal(1_000_000)
    assert row.cost == expected == Decimal(raw.headers["x-switchyard-cost"])
    assert raw.headers["x-switchyard-model"] == "gpt-native"


def test_it_prices_cached_input_tokens_the_provider_reports(native):
    sdk = client(native)
    headers = {"Cache-Control": "no-cache"}  # the gateway's own cache out of the way
    sdk.responses.create(model="gpt-native", input="A long shared prefix here", prompt_cache_key="k1",
                         extra_headers=headers)
    second = sdk.responses.create(model="gpt-native", input="A long shared prefix here", prompt_cache_key="k1",
                                  extra_headers=headers)
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached > 0
    rows = request_logs(2, tenant=native.tenant_a, endpoint="/v1/responses")
    assert rows[1].cached_tokens == cached
    full = second.usage.input_tokens - cached
    assert rows[1].cost == (Decimal(full) * Decimal("1.00") + Decimal(cached) * Decimal("0.10")
                            + Decimal(second.usage.output_tokens) * Decimal("4.00")) / Decimal(1_000_000)


def test_it_relays_the_providers_events_the_sdk_parses(native):
    events, headers = raw_events(native, {"model": "gpt-native", "input": "Stream a short answer"})
    for event in events:
        EVENTS.validate_python(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    done = events[-1]["response"]
    assert done["id"] == events[0]["response"]["id"] and "sim" not in done["id"]
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert done["output"][0]["content"][0]["text"] == deltas and len(deltas.split()) == 12
    assert headers["x-switchyard-model"] == "gpt-native"
    (row,) = request_logs(1, tenant=native.tenant_a, endpoint="/v1/responses", is_stream=True)
    assert (row.input_tokens, row.output_tokens) == (done["usage"]["input_tokens"], done["usage"]["output_tokens"])
    assert row.cost > 0 and not row.tokens_estimated

    with client(native).responses.stream(model="gpt-native", input="Stream a short answer") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == deltas  # the second one is the cache's replay
    rows = request_logs(2, tenant=native.tenant_a, endpoint="/v1/responses", is_stream=True)
    assert rows[1].cache_outcome == "exact"
    assert client(native).responses.retrieve(final.id).output_text == deltas


def test_it_stores_and_continues_a_relayed_response_here(native):
    sdk = client(native)
    first = sdk.responses.create(model="gpt-native", input="My name is Ada. Say hello.")
    assert sdk.responses.retrieve(first.id).output_text == first.output_text
    items = sdk.responses.input_items.list(first.id)
    assert [item.type for item in items.data] == ["message"]
    second = sdk.responses.create(model="gpt-native", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text
    sent = last_sent(native)
    assert "previous_response_id" not in sent  # a response only the gateway holds: its items are sent instead
    texts = [json.dumps(item) for item in sent["input"]]
    assert "My name is Ada" in texts[0] and first.output_text.split()[0] in texts[1] and "What is my name" in texts[2]
    assert all("id" not in item for item in sent["input"][:2])
    assert sdk.responses.retrieve(second.id).previous_response_id == first.id


def test_it_runs_a_function_tool_loop_through_the_provider(native):
    sdk = client(native)
    asked = sdk.responses.create(model="gpt-native", input="Weather in Oslo?", tools=[WEATHER],
                                 tool_choice="required")
    (call,) = asked.output
    assert call.type == "function_call" and call.name == "get_weather" and "city" in json.loads(call.arguments)
    answer = sdk.responses.create(model="gpt-native", previous_response_id=asked.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "Snow, -3 C"}])
    assert answer.output_text
    sent = last_sent(native)
    assert [item.get("type", "message") for item in sent["input"]] == ["message", "function_call",
                                                                       "function_call_output"]
    with sdk.responses.stream(model="gpt-native", input="Weather in Bergen?", tools=[WEATHER],
                              tool_choice="required") as stream:
        kinds = [event.type for event in stream]
        (streamed,) = stream.get_final_response().output
    assert "response.function_call_arguments.delta" in kinds and streamed.name == "get_weather"


def test_it_falls_back_from_a_failing_native_model_to_a_chat_model(native):
    native.simulator.fault(model=UPSTREAM, mode="status", status=500, count=-1)
    raw = client(native).responses.with_raw_response.create(model="native-fb", input="Fall back please")
    assert raw.headers["x-switchyard-model"] == "sim-mini"
    assert raw.parse().output_text
    events, headers = raw_events(native, {"model": "native-fb", "input": "Fall back while streaming"})
    for event in events:
        EVENTS.validate_python(event)
    assert headers["x-switchyard-model"] == "sim-mini" and events[-1]["type"] == "response.completed"
    rows = request_logs(2, tenant=native.tenant_a, endpoint="/v1/responses")
    assert {row.model_used for row in rows} == {"sim-mini"}
    assert all("gpt-native" in row.upstream_failures for row in rows)


def test_it_passes_on_the_providers_refusal_in_openais_shape(native):
    native.simulator.fault(model=UPSTREAM, mode="status", status=400, count=1)
    with pytest.raises(openai.BadRequestError) as refused:
        client(native).responses.create(model="gpt-native", input="Refuse this")
    assert refused.value.status_code == 400 and refused.value.body["code"] == "simulated_fault"
    (row,) = request_logs(1, tenant=native.tenant_a, endpoint="/v1/responses")
    assert row.status_code == 400 and row.cost == 0


def test_it_ends_a_cut_relayed_stream_with_a_numbered_error_event(native):
    native.simulator.fault(model=UPSTREAM, mode="cut", count=1)
    events, _headers = raw_events(native, {"model": "gpt-native", "input": "Cut me off"})
    assert events[-1]["type"] == "error"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    (row,) = request_logs(1, tenant=native.tenant_a, endpoint="/v1/responses")
    assert row.status_code == 502


def test_tenant_b_cannot_retrieve_or_continue_a_relayed_response(native):
    first = client(native).responses.create(model="gpt-native", input="A secret for tenant A")
    other = client(native, native.key_b)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(first.id)
    with pytest.raises(openai.BadRequestError) as refused:
        other.responses.create(model="gpt-native", input="Continue it", previous_response_id=first.id)
    assert refused.value.body["code"] == "previous_response_not_found"
    assert last_sent(native)["input"] == "A secret for tenant A"  # nothing of it was sent for tenant B
